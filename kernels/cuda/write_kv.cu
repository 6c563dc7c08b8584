// write_kv: scatter this step's new K or V rows into their paged-cache slots, and record each
// slot's token position. Mirrors the CPU op's two halves (kernels/src/paged/write_kv.rs): rows
// (called once for K, once for V) and positions.
//
// Layout: src [T, heads, row], dst [num_blocks, heads, block_size, row] (HND per block),
// slot_mapping I64 [T] with -1 = skip. Slot ranges were validated on the host
// (AttentionMetadata::new + the cache size check), so the kernels trust them.
#include "kv_quant.cuh"

// One CTA per token: the whole token is skipped or written together, and consecutive threads
// copy consecutive elements of a head's row, so both the read and the write are coalesced.
template <typename T>
__device__ void write_kv_rows(T* __restrict__ dst, const T* __restrict__ src,
                              const long long* __restrict__ slot_mapping, int heads,
                              int block_size, int row) {
    const int t = blockIdx.x;
    const long long slot = slot_mapping[t];
    if (slot < 0) return;
    const long long block = slot / block_size;
    const long long offset = slot % block_size;
    const int per_token = heads * row;
    for (int i = threadIdx.x; i < per_token; i += blockDim.x) {
        const int h = i / row;
        const int e = i % row;
        dst[((block * heads + h) * block_size + offset) * row + e] = src[(long long)t * per_token + i];
    }
}

#define KV_WRITE_KV_ROWS(suffix, T)                                                              \
    extern "C" __global__ void write_kv_rows_##suffix(T* dst, const T* src,                     \
                                                      const long long* slot_mapping, int heads,  \
                                                      int block_size, int row) {                 \
        write_kv_rows<T>(dst, src, slot_mapping, heads, block_size, row);                        \
    }                                                                                            \
    KV_EXPORT(write_kv_rows_##suffix)

KV_WRITE_KV_ROWS(f32, float)
KV_WRITE_KV_ROWS(f16, __half)
KV_WRITE_KV_ROWS(bf16, __nv_bfloat16)

// Quantizing scatter for int8/fp8 caches: src F32 [T, heads, d], dst bytes [num_blocks, heads,
// block_size, d + 4]. One CTA per token, one warp per head (heads strided over the CTA's warps):
// each (token, head) row gets its own scale (kv_quant.cuh), computed exactly as the CPU op does.
template <typename C>
__device__ void write_kv_quant_rows(unsigned char* __restrict__ dst, const float* __restrict__ src,
                                    const long long* __restrict__ slot_mapping, int heads,
                                    int block_size, int d) {
    const int t = blockIdx.x;
    const long long slot = slot_mapping[t];
    if (slot < 0) return;
    const long long block = slot / block_size;
    const long long offset = slot % block_size;
    const int warp = threadIdx.x / KV_WARP_SIZE;
    const int num_warps = blockDim.x / KV_WARP_SIZE;
    for (int h = warp; h < heads; h += num_warps) {
        unsigned char* row = dst + ((block * heads + h) * block_size + offset) * (d + 4);
        kv_quantize_row_warp<C>(row, src + ((long long)t * heads + h) * d, d);
    }
}

#define KV_WRITE_KV_QUANT(suffix, C)                                                               \
    extern "C" __global__ void write_kv_quant_##suffix(unsigned char* dst, const float* src,      \
                                                       const long long* slot_mapping, int heads,  \
                                                       int block_size, int d) {                   \
        write_kv_quant_rows<C>(dst, src, slot_mapping, heads, block_size, d);                      \
    }                                                                                              \
    KV_EXPORT(write_kv_quant_##suffix)

KV_WRITE_KV_QUANT(int8, KvInt8)
KV_WRITE_KV_QUANT(fp8, KvFp8)

// slot_pos I32 [num_blocks, heads, block_size] <- positions U32 [T]: every head of a token gets
// its position (per-head slot choice is the eviction policies' business, not this op's).
extern "C" __global__ void write_kv_positions(int* slot_pos, const unsigned* positions,
                                              const long long* slot_mapping, int num_tokens,
                                              int heads, int block_size) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= num_tokens * heads) return;
    const int t = i / heads;
    const int h = i % heads;
    const long long slot = slot_mapping[t];
    if (slot < 0) return;
    const long long block = slot / block_size;
    slot_pos[(block * heads + h) * block_size + slot % block_size] = (int)positions[t];
}
KV_EXPORT(write_kv_positions)
