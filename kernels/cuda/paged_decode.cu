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
#include "attention.cuh"

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
    const int num_splits = gridDim.z;
    const int group = num_heads / num_kv_heads;
    const int token = cu_seqlens_q[seq];
    const int context = context_lens[seq];
    const int blk_begin = split * blocks_per_split;
    const int blk_end = min(blk_begin + blocks_per_split, (int)kv_ceil_div(context, BS));

    typename KvRow<C>::E* v_tile;
    KvAttnSmem s = kv_attn_carve<C, BS, D>(smem, group, &v_tile);
    for (int i = threadIdx.x; i < group * D; i += blockDim.x)
        s.q[i] = kv_to_float(q[((long long)token * num_heads + kv_head * group) * D + i]) * scale;
    for (int r = threadIdx.x; r < group; r += blockDim.x) s.limit[r] = context;
    kv_attn_reset<D>(s, group);

    kv_attend_blocks<C, BS, D>(s, v_tile, group, k_cache, v_cache,
                               block_tables + (long long)seq * max_blocks_per_seq, kv_head,
                               num_kv_heads, blk_begin, blk_end, context);

    // Partials are stored normalised (acc / l) so the merge only needs the weights l * e^(m - M).
    for (int i = threadIdx.x; i < group * D; i += blockDim.x) {
        const int r = i / D;
        const int head = kv_head * group + r;
        const long long row = ((long long)seq * num_heads + head) * num_splits + split;
        part_out[row * D + i % D] = s.l[r] > 0.0f ? s.acc[i] / s.l[r] : 0.0f;
        if (i % D == 0) {
            part_m[row] = s.m[r];
            part_l[row] = s.l[r];
        }
    }
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
    const int seq = blockIdx.x;
    const int head = blockIdx.y;
    const long long row0 = ((long long)seq * num_heads + head) * num_splits;
    float m_max = -INFINITY;
    for (int z = 0; z < num_splits; ++z) m_max = fmaxf(m_max, part_m[row0 + z]);
    const long long token = cu_seqlens_q[seq];
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float num = 0.0f;
        float den = 0.0f;
        for (int z = 0; z < num_splits; ++z) {
            const float l = part_l[row0 + z];
            if (l == 0.0f) continue;  // empty split: m = -inf, nothing to add
            const float w = l * expf(part_m[row0 + z] - m_max);
            num += w * part_out[(row0 + z) * head_dim + d];
            den += w;
        }
        out[(token * num_heads + head) * head_dim + d] = kv_from_float<T>(den > 0.0f ? num / den : 0.0f);
    }
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
