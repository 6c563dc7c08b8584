// RMSNorm over the last dim: out = x * rsqrt(mean(x^2) + eps) * weight, f32 accumulation.
// x, out [rows, cols] (any leading dims flattened: [T, hidden] or per-head [T, heads, head_dim]);
// weight F32 [cols] (the CPU op accepts any float weight and upcasts it; the launcher does too).
// One CTA per row; blockDim.x a multiple of 32; 32 floats of dynamic shared memory for the block
// reduction.
#include "common.cuh"

template <typename T>
__device__ void rms_norm_row(T* out, const T* __restrict__ x, const float* __restrict__ weight,
                             int cols, float eps) {
    KV_DYNAMIC_SMEM(smem);
    float* scratch = reinterpret_cast<float*>(smem);
    const long long row = blockIdx.x;
    const T* xr = x + row * cols;
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = kv_to_float(xr[c]);
        sum_sq += v * v;
    }
    const float inv_rms = rsqrtf(kv_block_sum(sum_sq, scratch) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[row * cols + c] = kv_from_float<T>(kv_to_float(xr[c]) * inv_rms * weight[c]);
}

#define KV_RMS_NORM(suffix, T)                                                                   \
    extern "C" __global__ void rms_norm_##suffix(T* out, const T* x, const float* weight, int cols, \
                                                 float eps) {                                    \
        rms_norm_row<T>(out, x, weight, cols, eps);                                              \
    }                                                                                            \
    KV_EXPORT(rms_norm_##suffix)

KV_RMS_NORM(f32, float)
KV_RMS_NORM(f16, __half)
KV_RMS_NORM(bf16, __nv_bfloat16)
