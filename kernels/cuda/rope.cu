// Rotary embedding, HF "rotate_half" (NeoX) convention: for i < D/2 with c = cos[pos][i],
// s = sin[pos][i]: out[i] = x[i] c - x[i + D/2] s and out[i + D/2] = x[i + D/2] c + x[i] s.
// x, out [T, H, D]; cos, sin F32 [rows, D/2]. With positions U32 [T] (checked < rows on the host)
// token t uses row positions[t]; with positions == nullptr the tables were already gathered per
// token (the CPU op's layout: index_select, then rotate) and token t uses row t.
// One CTA per token; threads over (head, pair).
#include "common.cuh"

template <typename T>
__device__ void rope_token(T* out, const T* __restrict__ x, const float* __restrict__ cos_table,
                           const float* __restrict__ sin_table,
                           const unsigned* __restrict__ positions, int heads, int head_dim) {
    const long long t = blockIdx.x;
    const int half = head_dim / 2;
    const long long pos = positions ? positions[t] : t;
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
        const int h = i / half;
        const int j = i % half;
        const long long base = (t * heads + h) * head_dim;
        const float c = cos_table[pos * half + j];
        const float s = sin_table[pos * half + j];
        const float a = kv_to_float(x[base + j]);
        const float b = kv_to_float(x[base + j + half]);
        out[base + j] = kv_from_float<T>(a * c - b * s);
        out[base + j + half] = kv_from_float<T>(b * c + a * s);
    }
}

#define KV_ROPE(suffix, T)                                                                     \
    extern "C" __global__ void rope_##suffix(T* out, const T* x, const float* cos_table,      \
                                             const float* sin_table, const unsigned* positions, \
                                             int heads, int head_dim) {                        \
        rope_token<T>(out, x, cos_table, sin_table, positions, heads, head_dim);               \
    }                                                                                          \
    KV_EXPORT(rope_##suffix)

KV_ROPE(f32, float)
KV_ROPE(f16, __half)
KV_ROPE(bf16, __nv_bfloat16)
