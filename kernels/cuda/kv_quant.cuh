// Quantized KV cache rows on the device: the CUDA twin of kernels/src/paged/quant.rs, step for
// step, so the emulation tests can require the same bytes. A row is D one-byte codes followed by
// the row's f32 scale; `KvRow<C>` tells the attention kernels how to read any cache element type
// (float rows have no scale).
//
// Owns: code formats and row reading. Must not know: blocks, tables or attention.
#pragma once

#include "common.cuh"

// Tag types naming the quantized formats (the storage is unsigned char either way).
struct KvInt8 {};
struct KvFp8 {};

__device__ __forceinline__ float kv_pow2(int e) { return __int_as_float((127 + e) << 23); }

// e4m3 code -> f32 (1 sign, 4 exponent bits biased by 7, 3 mantissa bits; 0x7f/0xff are NaN).
__device__ __forceinline__ float kv_fp8_to_float(unsigned char b) {
    const int exp = (b >> 3) & 0xF;
    const float mant = (float)(b & 7);
    float mag = exp == 0 ? mant * kv_pow2(-9) : (8.0f + mant) * kv_pow2(exp - 10);
    if ((b & 0x7F) == 0x7F) mag = __int_as_float(0x7fc00000);
    return (b & 0x80) ? -mag : mag;
}

// f32 -> e4m3, nearest-even, saturating at +-448 (quant.rs: fp8_encode).
__device__ __forceinline__ unsigned char kv_fp8_from_float(float v) {
    const unsigned sign = ((unsigned)__float_as_int(v) >> 31) << 7;
    const float a = fabsf(v);
    if (a != a) return 0x7F;
    if (a >= 448.0f) return (unsigned char)(sign | 0x7E);
    if (a < kv_pow2(-6)) return (unsigned char)(sign | (unsigned)rintf(a * kv_pow2(9)));
    const int e = (int)(((unsigned)__float_as_int(a) >> 23) & 0xFF) - 127;
    const int m = (int)rintf(a * kv_pow2(3 - e));
    return (unsigned char)(sign | (unsigned)(((e + 7) << 3) + (m - 8)));
}

// How attention reads one row of a cache of element type C: `E` is the stored element, `PAD`
// the elements after the D values (the scale), `get` one value as f32 (unscaled for codes).
template <typename C> struct KvRow {
    using E = C;
    static constexpr bool QUANT = false;
    static constexpr int PAD = 0;
    static __device__ __forceinline__ float get(E x) { return kv_to_float(x); }
};
// Quantized rows also know their largest code (`s = max|x| / QMAX`) and how to encode x / s.
template <> struct KvRow<KvInt8> {
    using E = unsigned char;
    static constexpr bool QUANT = true;
    static constexpr int PAD = 4;
    static __device__ __forceinline__ float qmax() { return 127.0f; }
    static __device__ __forceinline__ float get(E x) { return (float)(signed char)x; }
    static __device__ __forceinline__ E encode(float y) {
        return (E)(signed char)fminf(fmaxf(rintf(y), -127.0f), 127.0f);
    }
};
template <> struct KvRow<KvFp8> {
    using E = unsigned char;
    static constexpr bool QUANT = true;
    static constexpr int PAD = 4;
    static __device__ __forceinline__ float qmax() { return 448.0f; }
    static __device__ __forceinline__ float get(E x) { return kv_fp8_to_float(x); }
    static __device__ __forceinline__ E encode(float y) { return kv_fp8_from_float(y); }
};

// The f32 scale stored after a quantized row's D codes (4-byte aligned: rows are D + 4 bytes
// with D a multiple of 4, and cache tensors start aligned).
template <int D>
__device__ __forceinline__ float kv_row_scale(const unsigned char* row) {
    return *reinterpret_cast<const float*>(row + D);
}

// Quantizes one row x[0, d) into row (d codes + scale) with one warp: lanes stride the row, the
// max is a warp reduction (exact, so every lane derives the same scale), each lane writes its
// codes, lane 0 the scale. Called by all 32 lanes of a warp.
template <typename C>
__device__ __forceinline__ void kv_quantize_row_warp(unsigned char* row, const float* x, int d) {
    const int lane = threadIdx.x % KV_WARP_SIZE;
    float amax = 0.0f;
    for (int i = lane; i < d; i += KV_WARP_SIZE) amax = fmaxf(amax, fabsf(x[i]));
    amax = kv_warp_max(amax);
    const float scale = amax / KvRow<C>::qmax();
    for (int i = lane; i < d; i += KV_WARP_SIZE) row[i] = scale != 0.0f ? KvRow<C>::encode(x[i] / scale) : 0;
    if (lane == 0) *reinterpret_cast<float*>(row + d) = scale;
}
