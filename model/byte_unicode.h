/* byte_unicode: GPT-2's byte <-> unicode map, which byte-level BPE vocabularies are written in.
 *
 * Every byte gets a printable code point: the bytes 0x21-0x7E, 0xA1-0xAC and 0xAE-0xFF stand for
 * themselves; the other 68 bytes (0x00-0x20, 0x7F-0xA0, 0xAD), in increasing order, become U+0100..U+0143
 * (so ' ' is U+0120 'Ġ' and '\n' is U+010A 'Ċ').
 * ref: openai/gpt-2 encoder.py bytes_to_unicode; HF tokenizers pre_tokenizers/byte_level.rs.
 * Thread safety: pure functions, no state.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* The code point standing for byte b. */
uint32_t bu_byte_to_cp(uint8_t b);
/* The byte a code point stands for, or -1 when cp is not in the map. */
int bu_cp_to_byte(uint32_t cp);

/* Decodes a byte-level token (UTF-8 text of mapped code points) into the raw bytes it stands for.
 * out needs len bytes (each mapped code point is 1 or 2 UTF-8 bytes and stands for one byte).
 * Returns the byte count, or -1 when s is not valid UTF-8 or holds a code point outside the map. */
long bu_decode_token(const char *s, size_t len, uint8_t *out);

/* Writes the byte-level form of raw bytes (UTF-8, at most 2 * len bytes) into out; returns its length. */
size_t bu_encode_bytes(const uint8_t *bytes, size_t len, char *out);
