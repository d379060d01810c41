# earshot_find_library(VAR HEADER LIBNAME [REQUIRED] [PATH_SUFFIXES ...])
# Finds HEADER and library LIBNAME and defines the imported target earshot::VAR.
# Plain find_path/find_library so that Debian packages unpacked into a private prefix
# (CMAKE_PREFIX_PATH=<prefix>/usr) are found on a machine without them installed.
function(earshot_find_library var header libname)
  cmake_parse_arguments(ARG "REQUIRED" "" "PATH_SUFFIXES" ${ARGN})
  find_path(EARSHOT_${var}_INCLUDE_DIR ${header} PATH_SUFFIXES ${ARG_PATH_SUFFIXES})
  find_library(EARSHOT_${var}_LIBRARY ${libname} PATH_SUFFIXES ${ARG_PATH_SUFFIXES})
  if(EARSHOT_${var}_INCLUDE_DIR AND EARSHOT_${var}_LIBRARY)
    add_library(earshot::${var} UNKNOWN IMPORTED GLOBAL)
    set_target_properties(earshot::${var} PROPERTIES
      IMPORTED_LOCATION "${EARSHOT_${var}_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${EARSHOT_${var}_INCLUDE_DIR}")
    message(STATUS "earshot: ${var} ${EARSHOT_${var}_LIBRARY}")
  elseif(ARG_REQUIRED)
    message(FATAL_ERROR "earshot: ${var} not found (header ${header}, library ${libname}); "
                        "run scripts/install-deps.sh")
  endif()
endfunction()
