// LycheeDecode hybrid-head decode attention (ALGORITHMS §2.4), flash-decoding style: one split
// kernel for both head types and a combine kernel that merges the splits by log-sum-exp.
//
// A (sequence, KV head) is *full* when the sequence does not decode sparsely (budget 0) or the
// head is retrieval in this layer (roles[layer, kv_head] = 1): it walks every block of its
// context, exactly as paged_decode.cu. Otherwise it is *sparse*: it walks the slots of its
// selection row (logical block indices, ascending, -1 padded; -1 and indices past the context
// are skipped) and attends only those blocks, the context's last block only up to its valid rows.
//
// Load balance: every split walks at most `blocks_per_split` blocks (a full head) or selection
// slots (a sparse head), so a full head of n blocks gets ceil(n / B) splits and a sparse head of
// k selected blocks ceil(k / B): splits for a full head ~= splits for a sparse head * n / k, the
// paper's rule. B and the split count are paged_decode's for the same batch
// (plan/sparse_plan.rs), so a full head, or a sparse head whose selection lists every block,
// runs the same blocks in the same splits as paged_decode and merges to the same bits.
// Grid [S, KVH, splits]: a split past its head's work stores an empty partial (m = -inf, l = 0)
// and the CTA leaves at once, so sparse heads' surplus splits cost a launch slot, not a pass.
//
// `sparse_only` (batches mixing prefill chunks in): the launcher has already run paged_prefill
// over the whole batch, which is right for every row but sparse heads of sparse sequences; then
// only those CTAs run here and only those rows are overwritten by the combine.
//
// q [T, H, D]; caches as paged_decode.cu; roles U8 [L, KVH]; budget_blocks U32 [S];
// selection I32 [S, KVH, width]; partials as decode_split.cuh with `splits` = gridDim.z.
#include "decode_split.cuh"

// Whether (seq, kv_head) attends only its selection in `layer`.
__device__ __forceinline__ bool kv_head_is_sparse(const unsigned char* __restrict__ roles,
                                                  const unsigned* __restrict__ budget_blocks,
                                                  int layer, int num_kv_heads, int seq, int kv_head) {
    return budget_blocks[seq] > 0 && roles[(long long)layer * num_kv_heads + kv_head] == 0;
}

template <typename T, typename C, int BS, int D>
__device__ void sparse_decode_split(const T* __restrict__ q,
                                    const typename KvRow<C>::E* __restrict__ k_cache,
                                    const typename KvRow<C>::E* __restrict__ v_cache,
                                    const unsigned* __restrict__ block_tables,
                                    const unsigned* __restrict__ context_lens,
                                    const unsigned* __restrict__ cu_seqlens_q,
                                    const unsigned char* __restrict__ roles,
                                    const unsigned* __restrict__ budget_blocks,
                                    const int* __restrict__ selection, float* part_out,
                                    float* part_m, float* part_l, int num_heads, int num_kv_heads,
                                    int max_blocks_per_seq, int blocks_per_split, int width,
                                    int layer, int sparse_only, float scale) {
    KV_DYNAMIC_SMEM(smem);
    const int seq = blockIdx.x;
    const int kv_head = blockIdx.y;
    const int split = blockIdx.z;
    const bool sparse = kv_head_is_sparse(roles, budget_blocks, layer, num_kv_heads, seq, kv_head);
    if (sparse_only && !sparse) return;  // uniform over the CTA; the combine skips these rows
    const int group = num_heads / num_kv_heads;
    const int context = context_lens[seq];
    const int num_blocks = kv_ceil_div(context, BS);
    const unsigned* table = block_tables + (long long)seq * max_blocks_per_seq;
    const int begin = split * blocks_per_split;

    typename KvRow<C>::E* v_tile;
    KvAttnSmem s = kv_decode_begin<T, C, BS, D>(smem, &v_tile, q, cu_seqlens_q[seq], kv_head, group,
                                                num_heads, context, scale);
    if (!sparse) {
        kv_attend_blocks<C, BS, D>(s, v_tile, group, k_cache, v_cache, table, kv_head, num_kv_heads,
                                   begin, min(begin + blocks_per_split, num_blocks), context);
    } else {
        const int* row = selection + ((long long)seq * num_kv_heads + kv_head) * width;
        const int end = min(begin + blocks_per_split, width);
        for (int i = begin; i < end; ++i) {
            const int b = row[i];  // the same for every thread: the skip is uniform
            if (b < 0 || b >= num_blocks) continue;
            kv_attend_block<C, BS, D>(s, v_tile, group, k_cache, v_cache, table[b], b, kv_head,
                                      num_kv_heads, context);
        }
    }
    kv_decode_store_split<D>(s, group, seq, kv_head, split, gridDim.z, num_heads, part_out, part_m,
                             part_l);
}

// `suffix` names q's dtype, then the cache format when it differs (f16_int8: f16 q, int8 cache).
#define KV_SPARSE_DECODE(suffix, T, C, BS, D)                                                     \
    extern "C" __global__ void __launch_bounds__(128) sparse_decode_##suffix##_bs##BS##_d##D(     \
        const T* q, const typename KvRow<C>::E* k_cache, const typename KvRow<C>::E* v_cache,     \
        const unsigned* block_tables, const unsigned* context_lens, const unsigned* cu_seqlens_q, \
        const unsigned char* roles, const unsigned* budget_blocks, const int* selection,          \
        float* part_out, float* part_m, float* part_l, int num_heads, int num_kv_heads,           \
        int max_blocks_per_seq, int blocks_per_split, int width, int layer, int sparse_only,      \
        float scale) {                                                                            \
        sparse_decode_split<T, C, BS, D>(q, k_cache, v_cache, block_tables, context_lens,         \
                                         cu_seqlens_q, roles, budget_blocks, selection, part_out, \
                                         part_m, part_l, num_heads, num_kv_heads,                 \
                                         max_blocks_per_seq, blocks_per_split, width, layer,      \
                                         sparse_only, scale);                                     \
    }                                                                                             \
    KV_EXPORT(sparse_decode_##suffix##_bs##BS##_d##D)

#define KV_SPARSE_DECODE_SHAPES(suffix, T, C) KV_ATTENTION_SHAPES(KV_SPARSE_DECODE, suffix, T, C)

KV_ATTENTION_DTYPES(KV_SPARSE_DECODE_SHAPES)

// One CTA per (sequence, head); threads over the head dim. Writes out[token, head] for every
// row, or with `sparse_only` just the rows of sparse heads (the rest keep paged_prefill's).
#define KV_SPARSE_DECODE_COMBINE(suffix, T)                                                        \
    extern "C" __global__ void sparse_decode_combine_##suffix(                                     \
        T* out, const float* part_out, const float* part_m, const float* part_l,                   \
        const unsigned* cu_seqlens_q, const unsigned char* roles, const unsigned* budget_blocks,   \
        int num_heads, int num_kv_heads, int head_dim, int num_splits, int layer,                  \
        int sparse_only) {                                                                         \
        const int seq = blockIdx.x;                                                                \
        const int head = blockIdx.y;                                                               \
        const int kv_head = head / (num_heads / num_kv_heads);                                     \
        if (sparse_only && !kv_head_is_sparse(roles, budget_blocks, layer, num_kv_heads, seq, kv_head)) \
            return;                                                                                \
        kv_decode_merge_row<T>(out, part_out, part_m, part_l, cu_seqlens_q[seq], seq, head,        \
                               num_heads, head_dim, num_splits);                                   \
    }                                                                                              \
    KV_EXPORT(sparse_decode_combine_##suffix)

KV_SPARSE_DECODE_COMBINE(f32, float)
KV_SPARSE_DECODE_COMBINE(f16, __half)
KV_SPARSE_DECODE_COMBINE(bf16, __nv_bfloat16)
