// Paged prefill attention over a varlen batch: sequence s brings a chunk of q_len_s new tokens
// (already written to the cache) whose j-th token attends cache positions
// [0, context_len_s - q_len_s + j]: full over the cached context, causal within the chunk.
// Decode rows (q_len = 1) are just chunks of one, so a mixed batch runs here in one launch.
//
// One CTA per (sequence, kv head, query tile): a tile is `tile_tokens` consecutive tokens of the
// chunk times the KV head's G query heads (rows = tile_tokens * G <= row_capacity, which sized the
// dynamic shared memory). Tiles past a short sequence's chunk exit at once.
// q, out [T, H, D]; caches [num_blocks, KVH, BS, D]; block_tables U32 [S, max_blocks];
// cu_seqlens_q U32 [S+1]; context_lens U32 [S]. int8/fp8 caches: rows of D codes + f32 scale.
#include "attention.cuh"

template <typename T, typename C, int BS, int D>
__device__ void paged_prefill_tile(T* out, const T* __restrict__ q,
                                   const typename KvRow<C>::E* __restrict__ k_cache,
                                   const typename KvRow<C>::E* __restrict__ v_cache,
                                   const unsigned* __restrict__ block_tables,
                                   const unsigned* __restrict__ context_lens,
                                   const unsigned* __restrict__ cu_seqlens_q, int num_heads,
                                   int num_kv_heads, int max_blocks_per_seq, int tile_tokens,
                                   float scale) {
    KV_DYNAMIC_SMEM(smem);
    const int seq = blockIdx.x;
    const int kv_head = blockIdx.y;
    const int q_begin = cu_seqlens_q[seq];
    const int q_len = cu_seqlens_q[seq + 1] - q_begin;
    const int tile_start = blockIdx.z * tile_tokens;
    if (tile_start >= q_len) return;  // uniform over the CTA: no thread is left at a barrier
    const int tokens = min(tile_tokens, q_len - tile_start);
    const int group = num_heads / num_kv_heads;
    const int rows = tokens * group;
    const int context = context_lens[seq];
    // Token j of the chunk sees positions < first_limit + j.
    const int first_limit = context - q_len + tile_start + 1;
    const int max_limit = first_limit + tokens - 1;

    typename KvRow<C>::E* v_tile;
    KvAttnSmem s = kv_attn_carve<C, BS, D>(smem, rows, &v_tile);
    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
        const int r = i / D;
        const long long token = q_begin + tile_start + r / group;
        const int head = kv_head * group + r % group;
        s.q[i] = kv_to_float(q[(token * num_heads + head) * D + i % D]) * scale;
    }
    for (int r = threadIdx.x; r < rows; r += blockDim.x) s.limit[r] = first_limit + r / group;
    kv_attn_reset<D>(s, rows);

    kv_attend_blocks<C, BS, D>(s, v_tile, rows, k_cache, v_cache,
                               block_tables + (long long)seq * max_blocks_per_seq, kv_head,
                               num_kv_heads, 0, (int)kv_ceil_div(max_limit, BS), max_limit);

    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
        const int r = i / D;
        const long long token = q_begin + tile_start + r / group;
        const int head = kv_head * group + r % group;
        out[(token * num_heads + head) * D + i % D] = kv_from_float<T>(s.acc[i] / s.l[r]);
    }
}

// `suffix` names q's dtype, then the cache format when it differs (f16_int8: f16 q, int8 cache).
#define KV_PAGED_PREFILL(suffix, T, C, BS, D)                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        paged_prefill_##suffix##_bs##BS##_d##D(                                                 \
            T* out, const T* q, const typename KvRow<C>::E* k_cache,                            \
            const typename KvRow<C>::E* v_cache,                                                \
            const unsigned* block_tables, const unsigned* context_lens,                         \
            const unsigned* cu_seqlens_q, int num_heads, int num_kv_heads,                      \
            int max_blocks_per_seq, int tile_tokens, float scale) {                             \
        paged_prefill_tile<T, C, BS, D>(out, q, k_cache, v_cache, block_tables, context_lens,      \
                                     cu_seqlens_q, num_heads, num_kv_heads, max_blocks_per_seq, \
                                     tile_tokens, scale);                                       \
    }                                                                                           \
    KV_EXPORT(paged_prefill_##suffix##_bs##BS##_d##D)

#define KV_PAGED_PREFILL_SHAPES(suffix, T, C) KV_ATTENTION_SHAPES(KV_PAGED_PREFILL, suffix, T, C)

KV_ATTENTION_DTYPES(KV_PAGED_PREFILL_SHAPES)
