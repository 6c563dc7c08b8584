// Fused SwiGLU gate: out = silu(gate) * up = gate / (1 + e^-gate) * up, elementwise, in f32.
// Grid-stride loop, so any grid covers any length.
#include "common.cuh"

template <typename T>
__device__ void silu_mul_all(T* out, const T* __restrict__ gate, const T* __restrict__ up,
                             long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = kv_to_float(gate[i]);
        out[i] = kv_from_float<T>(g / (1.0f + expf(-g)) * kv_to_float(up[i]));
    }
}

#define KV_SILU_MUL(suffix, T)                                                                 \
    extern "C" __global__ void silu_mul_##suffix(T* out, const T* gate, const T* up,          \
                                                 long long n) {                                \
        silu_mul_all<T>(out, gate, up, n);                                                     \
    }                                                                                          \
    KV_EXPORT(silu_mul_##suffix)

KV_SILU_MUL(f32, float)
KV_SILU_MUL(f16, __half)
KV_SILU_MUL(bf16, __nv_bfloat16)
