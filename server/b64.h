/* b64: base64 (RFC 4648 §4, the standard alphabet) and data: URLs, for audio sent inside JSON.
 *
 * Decoding is strict about the alphabet (a stray character is an error naming its offset) and lenient about
 * what clients commonly add: ASCII whitespace anywhere and missing '=' padding. The URL-safe alphabet
 * ('-', '_') is accepted too, since some clients encode files that way.
 * ref: RFC 4648; RFC 2397 (data: URLs). Thread safety: no state.
 */
#pragma once

#include <stddef.h>

#include "es_error.h"

/* Decodes len characters at in into a malloc'd buffer (*out, *out_len). what names the input in errors.
 * ES_EINVAL on a character outside the alphabet, misplaced padding or a dangling single character. */
int b64_decode(const char *in, size_t len, const char *what, unsigned char **out, size_t *out_len, es_error_t *err);

/* Splits a data: URL "data:[<media type>][;params];base64,<payload>": *payload / *payload_len point into
 * url. Only base64 payloads are accepted (audio is binary). ES_EINVAL names what is wrong. */
int b64_data_url(const char *url, size_t len, const char **payload, size_t *payload_len, es_error_t *err);
