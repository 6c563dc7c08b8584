// write_kv: scatter this step's new K or V rows into their paged-cache slots, and record each
// slot's token position. Mirrors the CPU op's two halves (kernels/src/paged/write_kv.rs): rows
// (called once for K, once for V) and positions.
//
// Layout: src [T, heads, row], dst [num_blocks, heads, block_size, row] (HND per block),
// slot_mapping I64 [T] with -1 = skip. Slot ranges were validated on the host
// (AttentionMetadata::new + the cache size check), so the kernels trust them.
#include "common.cuh"

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
