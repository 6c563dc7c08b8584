// Helpers shared by kvault's CUDA kernels: dtype conversions, warp and block reductions, the
// dynamic shared-memory declaration and the kernel export hook.
//
// Owns: only device-side building blocks. Must not know: tensor shapes, launch geometry (that is
// kernels/src/cuda/plan.rs) or whether it runs on a GPU or in the host emulator. Everything here
// uses plain CUDA that the emulator (kernels/emu/csrc) maps to the host; the two macros below are
// the only seams, and they default to the real CUDA spelling.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

// Dynamic shared memory. `extern __shared__` has no per-block meaning on the host, so the
// emulator predefines this macro to hand out its per-block arena instead.
#ifndef KV_DYNAMIC_SMEM
#define KV_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// Placed after every extern "C" kernel. No-op for nvcc/NVRTC; the emulator registers the kernel
// under its name so tests can launch it the way cudarc does (by name, with an argument list).
#ifndef KV_EXPORT
#define KV_EXPORT(name)
#endif

#define KV_WARP_SIZE 32
#define KV_FULL_MASK 0xffffffffu

__device__ __forceinline__ float kv_to_float(float x) { return x; }
__device__ __forceinline__ float kv_to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float kv_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T kv_from_float(float x);
template <> __device__ __forceinline__ float kv_from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half kv_from_float<__half>(float x) {
    return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 kv_from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float kv_warp_sum(float v) {
    for (int offset = KV_WARP_SIZE / 2; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(KV_FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float kv_warp_max(float v) {
    for (int offset = KV_WARP_SIZE / 2; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(KV_FULL_MASK, v, offset));
    return v;
}

// Sum of `v` over the whole block; every thread gets the result. blockDim.x must be a multiple
// of 32 (at most 1024). `scratch` is >= 32 floats of shared memory, free again on return: the
// trailing barrier keeps a fast thread's next call from overwriting scratch[0] before slow
// threads have read it.
__device__ __forceinline__ float kv_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % KV_WARP_SIZE;
    const int warp = threadIdx.x / KV_WARP_SIZE;
    const int num_warps = blockDim.x / KV_WARP_SIZE;
    v = kv_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < num_warps ? scratch[lane] : 0.0f;
        w = kv_warp_sum(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    const float total = scratch[0];
    __syncthreads();
    return total;
}

__device__ __forceinline__ unsigned kv_ceil_div(unsigned a, unsigned b) { return (a + b - 1) / b; }

// Exclusive prefix sum of `v` over the block in thread order; `*total` gets the block's sum.
// Same rules as kv_block_sum (blockDim.x a multiple of 32, `scratch` >= 33 ints of shared
// memory, free again on return).
__device__ __forceinline__ int kv_block_exclusive_scan(int v, int* scratch, int* total) {
    const int lane = threadIdx.x % KV_WARP_SIZE;
    const int warp = threadIdx.x / KV_WARP_SIZE;
    const int num_warps = blockDim.x / KV_WARP_SIZE;
    int inclusive = v;
    for (int offset = 1; offset < KV_WARP_SIZE; offset <<= 1) {
        const int up = __shfl_up_sync(KV_FULL_MASK, inclusive, offset);
        if (lane >= offset) inclusive += up;
    }
    if (lane == KV_WARP_SIZE - 1) scratch[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
        const int w = lane < num_warps ? scratch[lane] : 0;
        int w_inclusive = w;
        for (int offset = 1; offset < KV_WARP_SIZE; offset <<= 1) {
            const int up = __shfl_up_sync(KV_FULL_MASK, w_inclusive, offset);
            if (lane >= offset) w_inclusive += up;
        }
        if (lane < num_warps) scratch[lane] = w_inclusive - w;  // warps before this one
        if (lane == KV_WARP_SIZE - 1) scratch[KV_WARP_SIZE] = w_inclusive;
    }
    __syncthreads();
    const int result = scratch[warp] + inclusive - v;
    *total = scratch[KV_WARP_SIZE];
    __syncthreads();
    return result;
}
