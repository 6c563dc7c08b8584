// Host stand-in for CUDA's <cuda_bf16.h>, used only by the emulator: bfloat16 storage with
// round-to-nearest-even conversion (bit-exact with the `half` crate the CPU ops use).
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    uint16_t __x;
};

inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t bits = (uint32_t)h.__x << 16;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)((x >> 16) | 0x40u)};  // quiet NaN
    x += 0x7fffu + ((x >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(x >> 16)};
}

inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
