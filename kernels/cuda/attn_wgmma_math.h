/* attn_wgmma_math: the shared-memory layout and matrix descriptors of the Hopper flash-attention kernel
 * (attn_wgmma.cu) — where a key's 16-byte chunk of head dims goes in a 128-byte-swizzled K or V tile, and the
 * 64-bit wgmma descriptors that hand those tiles to the tensor cores, written once for the host and the device
 * so that CI checks the two sides against each other on the CPU (tests/kernels/test_attn_wgmma_math.c).
 *
 * Compiled by nvcc every function is __host__ __device__; compiled as C11 it is plain static inline. Pure
 * functions of their arguments: no state, thread-safe.
 *
 * A tile holds `rows` keys (a multiple of 8) × D bf16 head dims, as D / 64 panels of 64 columns: in panel p, key r
 * is 128 bytes at p·rows·128 + r·128, and within every 1024-byte atom (8 keys) the 16-byte chunk c of key r sits
 * at chunk c ^ (r % 8) — the 128-byte swizzle (CUTLASS Swizzle<3,4,3>: address bits [4,6] ^= bits [7,9]), which
 * the hardware undoes on the absolute shared-memory address, so every tile starts 1024-byte aligned. The same
 * layout serves both GEMMs:
 *   S = Q·Kᵀ: B = Kᵀ (k = head dim, n = key) is "K-major" — each key's head dims contiguous: canonical layout
 *     ((8, m), (8, 2)) : ((128 B, SBO), (2 B, 16 B)): 8 keys 128 bytes apart, groups of 8 keys SBO = 1024 bytes
 *     apart; the 16 head dims of k-step kk are 32 bytes at (kk % 4)·32 inside panel kk / 4 (the descriptor's
 *     start moves; the swizzle is applied after, on the address).
 *   O = P·V: B = V (k = key, n = head dim) is "MN-major" (transposed, imm-trans-b = 1): canonical layout
 *     ((64, m), (8, k)) : ((2 B, LBO), (128 B, SBO)): 64 head dims contiguous, panels LBO = rows·128 bytes
 *     apart, keys 128 bytes apart, groups of 8 keys SBO = 1024 bytes apart; k-step kc (16 keys) starts at
 *     kc·2048 bytes.
 * ref: PTX ISA, "Matrix Descriptor Format" (start address, leading and stride byte offsets >> 4 in 14-bit
 * fields at bits 0, 16, 32; base offset bits 49–51; swizzle mode bits 62–63: 1 = 128-byte) and "Shared Memory
 * Matrix Layout" / "Strides"; CUTLASS cute/arch/mma_sm90_desc.hpp (GmmaDescriptor, LayoutType::B128 = 1) and
 * cute/atom/mma_traits_sm90_gmma.hpp (make_gmma_desc: the canonical K-major and MN-major layouts above).
 */
#pragma once

#include <stdint.h>

#include "attn_math.h" /* ATTN_HD */

#define ATTN_WG_ATOM 1024 /* bytes of one swizzle atom: 8 rows of 128 bytes */
#define ATTN_WG_ROW 128   /* bytes of one row of one 64-column panel */

/* The 128-byte swizzle of a byte offset from a 1024-byte-aligned base. */
ATTN_HD uint32_t attn_wg_swizzle(uint32_t off) {
  return off ^ (((off >> 7) & 7u) << 4);
}

/* Byte offset in a tile of `rows` keys of the bf16 at key r, head dim col (any column, not only a chunk start). */
ATTN_HD uint32_t attn_wg_tile_off(int r, int col, int rows) {
  const uint32_t lin =
      (uint32_t)(col / 64) * (uint32_t)rows * ATTN_WG_ROW + (uint32_t)r * ATTN_WG_ROW + (uint32_t)(col % 64) * 2u;
  return attn_wg_swizzle(lin);
}

/* The wgmma shared-memory matrix descriptor: start address (shared window, bytes), leading and stride byte
 * offsets (bytes, multiples of 16), 128-byte swizzle, base offset 0 (atoms 1024-byte aligned). */
ATTN_HD uint64_t attn_wg_desc(uint32_t start, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((start & 0x3FFFFu) >> 4) | (uint64_t)((lbo >> 4) & 0x3FFFu) << 16 |
         (uint64_t)((sbo >> 4) & 0x3FFFu) << 32 | (uint64_t)1 << 62;
}

/* Start (byte offset from the tile) of k-step kk (head dims 16·kk ..) of the K tile as the B operand of S = Q·Kᵀ. */
ATTN_HD uint32_t attn_wg_k_start(int kk, int rows) {
  return (uint32_t)(kk / 4) * (uint32_t)rows * ATTN_WG_ROW + (uint32_t)(kk % 4) * 32u;
}
#define ATTN_WG_K_LBO 16u /* unused by a swizzled K-major operand whose k-step lies inside one 128-byte row */
#define ATTN_WG_K_SBO ATTN_WG_ATOM

/* Start of k-step kc (keys 16·kc ..) of the V tile as the B operand of O = P·V; LBO: the next 64 head dims. */
ATTN_HD uint32_t attn_wg_v_start(int kc) {
  return (uint32_t)kc * 2u * ATTN_WG_ATOM;
}
ATTN_HD uint32_t attn_wg_v_lbo(int rows) {
  return (uint32_t)rows * ATTN_WG_ROW;
}
#define ATTN_WG_V_SBO ATTN_WG_ATOM
