// attn_mma: the PTX the fast attention kernels use, each wrapped once — bf16 tensor-core MMA (mma.sync
// m16n8k16, fp32 accumulate), ldmatrix (plain and transposed) and cp.async with zero fill. sm_80 and newer
// (sm_90 runs the same instructions; wgmma is not used). Include only from .cu files.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"; the same as
// llama.cpp's ggml-cuda/mma.cuh tiles). Lane = 4·g + t (g = lane / 4 in 0..7, t = lane % 4 in 0..3):
//   A (16×16, row-major), 4 × b32, each two bf16 of one row, the lower column in the low half:
//       a0 = A[g][2t, 2t+1]   a1 = A[g+8][2t, 2t+1]   a2 = A[g][2t+8, 2t+9]   a3 = A[g+8][2t+8, 2t+9]
//   B (16×8, k × n, "col"), 2 × b32:   b0 = B[2t, 2t+1][g]   b1 = B[2t+8, 2t+9][g]
//   C/D (16×8, fp32), 4 floats:        c0, c1 = C[g][2t, 2t+1]   c2, c3 = C[g+8][2t, 2t+1]
// ldmatrix.m8n8.x4: lanes 8i .. 8i+7 give the row addresses (16 bytes each) of 8×8 matrix i; lane l receives,
// in register i, M_i[l / 4][2(l % 4), 2(l % 4) + 1]; with .trans it receives M_i[2(l % 4), 2(l % 4) + 1][l / 4].
// So for a row-major K tile (key × d) the plain form gives B fragments of Kᵀ, and for a row-major V tile
// (key × d) the .trans form gives B fragments of V. The kernels take these (row, col) formulas from
// attn_mma_math.h (host + device), which tests/kernels/test_attn_mma_emu.c checks against an emulated warp.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

// d += a · b for one m16n8k16 tile: a 4 regs, b 2 regs, d 4 floats.
__device__ __forceinline__ void mma_bf16_16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

// Four 8×8 b16 matrices; p: this lane's row address (16-byte aligned, shared memory).
__device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t *r, const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// 16 bytes global -> shared, asynchronously; when !full nothing is read and the 16 bytes are zeroed
// (src-size 0). Both addresses 16-byte aligned; src must still be a valid address.
__device__ __forceinline__ void cp_async_16(void *smem, const void *gmem, bool full) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem), "r"(full ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Two floats -> one b32 of two bf16 (round to nearest even), lo in the low half (the lower column / key).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}
