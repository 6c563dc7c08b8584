// Paged decode attention, flash-decoding style: each sequence contributes one query token; its
// context is split into `num_splits` ranges of whole cache blocks, one CTA per
// (sequence, kv head, split) computes a partial softmax for the KV head's G query heads, and a
// merge kernel combines the partials by log-sum-exp.
//
// q [T = S, H, D]; caches [num_blocks, KVH, BS, D] (int8/fp8: [.., D + 4] bytes, codes + scale); block_tables U32 [S, max_blocks];
// context_lens U32 [S]; cu_seqlens_q U32 [S+1] (q_len must be 1 for every sequence: the launcher
// uses paged_prefill otherwise). Partials: part_out F32 [S, H, splits, D], part_m / part_l F32
// [S, H, splits]. Split z covers blocks [z * blocks_per_split, (z+1) * blocks_per_split) clipped
// to the sequence's blocks; a short sequence's trailing splits are empty (l = 0, m = -inf) and
// weigh nothing in the merge.
#include "decode_split.cuh"

template <typename T, typename C, int BS, int D>
__device__ void paged_decode_split(const T* __restrict__ q,
                                   const typename KvRow<C>::E* __restrict__ k_cache,
                                   const typename KvRow<C>::E* __restrict__ v_cache,
                                   const unsigned* __restrict__ block_tables,
                                   const unsigned* __restrict__ context_lens,
                                   const unsigned* __restrict__ cu_seqlens_q, float* part_out,
                                   float* part_m, float* part_l, int num_heads, int num_kv_heads,
                                   int max_blocks_per_seq, int blocks_per_split, float scale) {
    KV_DYNAMIC_SMEM(smem);
    const int seq = blockIdx.x;
    const int kv_head = blockIdx.y;
    const int split = blockIdx.z;
    const int group = num_heads / num_kv_heads;
    const int context = context_lens[seq];
    const int blk_begin = split * blocks_per_split;
    const int blk_end = min(blk_begin + blocks_per_split, (int)kv_ceil_div(context, BS));

    typename KvRow<C>::E* v_tile;
    KvAttnSmem s = kv_decode_begin<T, C, BS, D>(smem, &v_tile, q, cu_seqlens_q[seq], kv_head, group,
                                                num_heads, context, scale);
    kv_attend_blocks<C, BS, D>(s, v_tile, group, k_cache, v_cache,
                               block_tables + (long long)seq * max_blocks_per_seq, kv_head,
                               num_kv_heads, blk_begin, blk_end, context);
    kv_decode_store_split<D>(s, group, seq, kv_head, split, gridDim.z, num_heads, part_out, part_m,
                             part_l);
}

// `suffix` names q's dtype, then the cache format when it differs (f16_int8: f16 q, int8 cache).
#define KV_PAGED_DECODE(suffix, T, C, BS, D)                                                     \
    extern "C" __global__ void __launch_bounds__(128)                                           \
        paged_decode_##suffix##_bs##BS##_d##D(                                                   \
            const T* q, const typename KvRow<C>::E* k_cache, const typename KvRow<C>::E* v_cache, \
            const unsigned* block_tables,                                                        \
            const unsigned* context_lens, const unsigned* cu_seqlens_q, float* part_out,         \
            float* part_m, float* part_l, int num_heads, int num_kv_heads,                       \
            int max_blocks_per_seq, int blocks_per_split, float scale) {                         \
        paged_decode_split<T, C, BS, D>(q, k_cache, v_cache, block_tables, context_lens,         \
                                     cu_seqlens_q, part_out, part_m, part_l, num_heads,          \
                                     num_kv_heads, max_blocks_per_seq, blocks_per_split, scale); \
    }                                                                                            \
    KV_EXPORT(paged_decode_##suffix##_bs##BS##_d##D)

#define KV_PAGED_DECODE_SHAPES(suffix, T, C) KV_ATTENTION_SHAPES(KV_PAGED_DECODE, suffix, T, C)

KV_ATTENTION_DTYPES(KV_PAGED_DECODE_SHAPES)

// One CTA per (sequence, head); threads over the head dim. out [S, H, D] in the query dtype.
template <typename T>
__device__ void paged_decode_merge(T* out, const float* part_out, const float* part_m,
                                   const float* part_l, const unsigned* cu_seqlens_q,
                                   int num_heads, int head_dim, int num_splits) {
    kv_decode_merge_row<T>(out, part_out, part_m, part_l, cu_seqlens_q[blockIdx.x], blockIdx.x,
                           blockIdx.y, num_heads, head_dim, num_splits);
}

#define KV_PAGED_DECODE_MERGE(suffix, T)                                                        \
    extern "C" __global__ void paged_decode_merge_##suffix(                                     \
        T* out, const float* part_out, const float* part_m, const float* part_l,                \
        const unsigned* cu_seqlens_q, int num_heads, int head_dim, int num_splits) {            \
        paged_decode_merge<T>(out, part_out, part_m, part_l, cu_seqlens_q, num_heads, head_dim, \
                              num_splits);                                                      \
    }                                                                                           \
    KV_EXPORT(paged_decode_merge_##suffix)

KV_PAGED_DECODE_MERGE(f32, float)
KV_PAGED_DECODE_MERGE(f16, __half)
KV_PAGED_DECODE_MERGE(bf16, __nv_bfloat16)
