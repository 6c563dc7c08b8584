// Host stand-in for CUDA's <cuda_fp16.h>, used only by the emulator: IEEE binary16 storage with
// round-to-nearest-even conversions (bit-exact with the `half` crate the CPU ops use).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
    uint16_t __x;
};

inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.__x & 0x8000u) << 16;
    const uint32_t exp = (h.__x >> 10) & 0x1fu;
    const uint32_t mant = h.__x & 0x3ffu;
    float out;
    if (exp == 0) {
        out = std::ldexp((float)mant, -24);  // zero or subnormal, exact
        return sign ? -out : out;
    }
    const uint32_t bits = exp == 31 ? sign | 0x7f800000u | (mant << 13)
                                    : sign | ((exp + 112u) << 23) | (mant << 13);
    std::memcpy(&out, &bits, 4);
    return out;
}

inline __half __float2half_rn(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return __half{(uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u))};
    if (ax >= 0x47800000u) return __half{(uint16_t)(sign | 0x7c00u)};  // >= 65536: inf
    if (ax < 0x38800000u) {  // below the smallest normal half: subnormal, scaled exactly by 2^24
        float af;
        std::memcpy(&af, &ax, 4);
        return __half{(uint16_t)(sign | (uint32_t)std::nearbyint(af * 16777216.0f))};
    }
    uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13));
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carries into the exponent correctly
    return __half{(uint16_t)(sign | h)};
}

inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
