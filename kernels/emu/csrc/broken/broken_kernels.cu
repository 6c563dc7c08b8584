// Deliberately broken kernels: the harness must report each of these bugs. Test-only; they are
// never compiled for a GPU.
#include "common.cuh"

// rms_norm_f32 (kernels/cuda/rms_norm.cu) with the block reduction's first barrier removed:
// thread 0 may read a warp's partial sum before that warp has written it.
extern "C" __global__ void broken_rms_norm_missing_barrier_f32(float* out, const float* x,
                                                               const float* weight, int cols,
                                                               float eps) {
    KV_DYNAMIC_SMEM(smem);
    float* scratch = reinterpret_cast<float*>(smem);
    const long long row = blockIdx.x;
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sum_sq += x[row * cols + c] * x[row * cols + c];
    const int lane = threadIdx.x % KV_WARP_SIZE;
    const int warp = threadIdx.x / KV_WARP_SIZE;
    sum_sq = kv_warp_sum(sum_sq);
    if (lane == 0) scratch[warp] = sum_sq;
    // (missing __syncthreads() here)
    if (warp == 0) {
        float w = lane < (int)(blockDim.x / KV_WARP_SIZE) ? scratch[lane] : 0.0f;
        w = kv_warp_sum(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    const float inv_rms = rsqrtf(scratch[0] / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[row * cols + c] = x[row * cols + c] * inv_rms * weight[c];
}
KV_EXPORT(broken_rms_norm_missing_barrier_f32)

// Threads past the first warp return early, then the rest wait at a barrier forever on a GPU
// that counts them (and get undefined behaviour on one that does not).
extern "C" __global__ void broken_partial_barrier(float* out) {
    if (threadIdx.x >= 32) return;
    out[threadIdx.x] = 1.0f;
    __syncthreads();
}
KV_EXPORT(broken_partial_barrier)

// Even and odd warps wait at two different barriers.
extern "C" __global__ void broken_divergent_barrier(float* out) {
    if ((threadIdx.x / 32) % 2 == 0) {
        out[threadIdx.x] = 1.0f;
        __syncthreads();
    } else {
        out[threadIdx.x] = 2.0f;
        __syncthreads();
    }
}
KV_EXPORT(broken_divergent_barrier)

// Lane 31 leaves before a full-mask shuffle the other lanes wait in.
extern "C" __global__ void broken_shuffle_after_exit(float* out) {
    if (threadIdx.x % 32 == 31) return;
    out[threadIdx.x] = kv_warp_sum(1.0f);
}
KV_EXPORT(broken_shuffle_after_exit)
