// Maps the CUDA C++ the kernels use onto the host, so kernels/cuda/*.cu compile unchanged as C++:
// qualifiers vanish, thread/block indices read the current fiber, __syncthreads and warp
// shuffles/votes are scheduling points, atomics are plain read-modify-writes (one block runs at a
// time and its fibers never preempt each other between two scheduling points).
//
// Included before each .cu (see build.rs); <cuda_fp16.h>/<cuda_bf16.h> resolve to the host
// versions next to this file. Must not know any particular kernel.
#pragma once
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "emu_runtime.h"

using dim3 = emu::dim3;
using uint3 = emu::dim3;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Blocks run one at a time per OS thread and all of a block's fibers share that OS thread, so a
// thread-local static is exactly one copy per running block. Not poisoned between blocks (only
// the dynamic arena is); kernels here use the dynamic arena.
#define __shared__ static thread_local

#define threadIdx (::emu::t_thread->thread_idx)
#define blockIdx (::emu::t_block->block_idx)
#define blockDim (::emu::t_block->block_dim)
#define gridDim (::emu::t_block->grid_dim)
#define warpSize 32

#define KV_DYNAMIC_SMEM(name) unsigned char* name = ::emu::t_block->smem
#define KV_EXPORT(name) static ::emu::Registrar emu_registrar_##name(#name, &name);

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __trap() ::emu::trap("__trap()", __FILE__, __LINE__)
#define assert(cond) ((cond) ? (void)0 : ::emu::trap("assert(" #cond ")", __FILE__, __LINE__))

// ---- integer/float helpers the device library provides --------------------------------------
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }

// ---- warp shuffles and votes -------------------------------------------------------------
namespace emu {
template <typename T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle payload is at most 64 bits");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <typename T> inline T from_bits(uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}
// Source lane for a shuffle within `width`-lane segments; out-of-segment reads keep the own value.
template <typename T>
inline T shuffle(unsigned mask, T v, int src_in_segment, bool in_range, int width, const char* what) {
    const unsigned lane = t_thread->lane;
    const uint64_t* all = warp_exchange(mask, to_bits(v), what);
    const int segment = (int)lane / width * width;
    const int src = in_range ? segment + src_in_segment : (int)lane;
    if (!(mask >> src & 1u)) trap("shuffle reads a lane outside the mask", __FILE__, __LINE__);
    return from_bits<T>(all[src]);
}
}  // namespace emu

template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return emu::shuffle(mask, v, ((src % width) + width) % width, true, width, "__shfl_sync");
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = (int)(emu::t_thread->lane % width);
    const int src = lane ^ lane_mask;
    return emu::shuffle(mask, v, src, src < width, width, "__shfl_xor_sync");
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = (int)(emu::t_thread->lane % width);
    const int src = lane + (int)delta;
    return emu::shuffle(mask, v, src, src < width, width, "__shfl_down_sync");
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = (int)(emu::t_thread->lane % width);
    const int src = lane - (int)delta;
    return emu::shuffle(mask, v, src, src >= 0, width, "__shfl_up_sync");
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
    const uint64_t* all = emu::warp_exchange(mask, pred != 0, "__ballot_sync");
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && all[l]) ballot |= 1u << l;
    return ballot;
}
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_exchange(mask, 0, "__syncwarp"); }

// ---- atomics (see the header comment for why plain RMW is exact here) ----------------------
template <typename T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> inline T atomicSub(T* p, T v) { T old = *p; *p = old - v; return old; }
template <typename T> inline T atomicMax(T* p, T v) { T old = *p; *p = old > v ? old : v; return old; }
template <typename T> inline T atomicMin(T* p, T v) { T old = *p; *p = old < v ? old : v; return old; }
template <typename T> inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <typename T> inline T atomicCAS(T* p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}
