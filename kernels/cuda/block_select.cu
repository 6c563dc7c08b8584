// LycheeDecode block selection (ALGORITHMS §2.4 step 2, lychee-contract "A retrieval head's
// choice"): for every sparse sequence s (budget > 0) and KV head h that is retrieval in `layer`,
// a new selection row of k = budget[s] logical blocks out of the context's n. The launcher runs
// two kernels:
//
// block_scores (grid [S, KVH, chunks], one warp per block): score of block j = max over its valid
// tokens i of q̄ · k_i, q̄ = (Σ_g q_g) / G over the group's query heads in head order, raw dot in
// f32; a quantized key's dot is taken with its codes, then times its row scale (as the CPU op
// and attention do). Chunks of `blocks_per_cta` blocks spread one long
// context over many CTAs. scores F32 [S, KVH, max_blocks]; only chosen rows' first n are written,
// and only when n > k (otherwise no score is needed).
//
// block_topk (grid [S, KVH]): n <= k → blocks 0..n; else sink blocks [0, a), recent blocks
// [n - r, n) and the m = k - a - r best of the others, ties to the lower block index; ascending,
// -1 padded to `width`. Rows not chosen are copied from the old selection. The m-th best score is
// found by a 32-step bitwise search over order-preserving integer keys (32 counting passes, no
// sort, no atomics, so the result does not depend on thread timing), then one ordered pass emits
// the list with two block scans (rank among the threshold ties, output position).
//
// attention.cuh: the (query dtype, cache format) pairs and shapes the attention kernels are
// instantiated at, reused here so selection serves every cache attention does.
#include "attention.cuh"

// Whether (seq, kv_head) picks a new selection in `layer`.
__device__ __forceinline__ bool kv_head_selects(const unsigned char* __restrict__ roles,
                                                const unsigned* __restrict__ budget_blocks, int layer,
                                                int num_kv_heads, int seq, int kv_head) {
    return budget_blocks[seq] > 0 && roles[(long long)layer * num_kv_heads + kv_head] != 0;
}

template <typename T, typename C, int BS, int D>
__device__ void block_scores_chunk(float* scores, const T* __restrict__ q,
                                   const typename KvRow<C>::E* __restrict__ k_cache,
                                   const unsigned* __restrict__ block_tables,
                                   const unsigned* __restrict__ context_lens,
                                   const unsigned* __restrict__ cu_seqlens_q,
                                   const unsigned char* __restrict__ roles,
                                   const unsigned* __restrict__ budget_blocks, int num_heads,
                                   int num_kv_heads, int max_blocks_per_seq, int blocks_per_cta,
                                   int layer) {
    static_assert(D % KV_WARP_SIZE == 0, "head_dim must be a multiple of 32");
    using Row = KvRow<C>;
    constexpr int PER_LANE = D / KV_WARP_SIZE;
    constexpr int ROW = D + Row::PAD;
    KV_DYNAMIC_SMEM(smem);
    float* q_mean = reinterpret_cast<float*>(smem);  // [D]
    const int seq = blockIdx.x;
    const int kv_head = blockIdx.y;
    if (!kv_head_selects(roles, budget_blocks, layer, num_kv_heads, seq, kv_head)) return;
    const int context = context_lens[seq];
    const int num_blocks = kv_ceil_div(context, BS);
    if (num_blocks <= (int)budget_blocks[seq]) return;  // every block is kept, unscored
    const int begin = blockIdx.z * blocks_per_cta;
    const int end = min(begin + blocks_per_cta, num_blocks);
    if (begin >= end) return;  // all uniform over the CTA: no thread is left at the barrier

    const int group = num_heads / num_kv_heads;
    const long long token = cu_seqlens_q[seq];
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float sum = 0.0f;
        for (int g = 0; g < group; ++g)
            sum += kv_to_float(q[(token * num_heads + kv_head * group + g) * D + d]);
        q_mean[d] = sum / group;
    }
    __syncthreads();

    const int lane = threadIdx.x % KV_WARP_SIZE;
    const int warp = threadIdx.x / KV_WARP_SIZE;
    const int num_warps = blockDim.x / KV_WARP_SIZE;
    const unsigned* table = block_tables + (long long)seq * max_blocks_per_seq;
    float* out = scores + ((long long)seq * num_kv_heads + kv_head) * max_blocks_per_seq;
    for (int b = begin + warp; b < end; b += num_warps) {
        const long long base = ((long long)table[b] * num_kv_heads + kv_head) * BS * ROW;
        const int valid = min(BS, context - b * BS);
        float best = -INFINITY;
        for (int t = 0; t < valid; ++t) {
            const typename Row::E* key = k_cache + base + t * ROW;
            float k_scale = 1.0f;
            if constexpr (Row::QUANT) k_scale = kv_row_scale<D>(key);
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < PER_LANE; ++i) dot += q_mean[lane + i * KV_WARP_SIZE] * Row::get(key[lane + i * KV_WARP_SIZE]);
            // A quantized key's dot is scaled afterwards: the dequantized dot, as attention has it.
            best = fmaxf(best, kv_warp_sum(dot) * k_scale);
        }
        if (lane == 0) out[b] = best;
    }
}

#define KV_BLOCK_SCORES(suffix, T, C, BS, D)                                                      \
    extern "C" __global__ void __launch_bounds__(128) block_scores_##suffix##_bs##BS##_d##D(      \
        float* scores, const T* q, const typename KvRow<C>::E* k_cache,                           \
        const unsigned* block_tables, const unsigned* context_lens, const unsigned* cu_seqlens_q, \
        const unsigned char* roles, const unsigned* budget_blocks, int num_heads,                 \
        int num_kv_heads, int max_blocks_per_seq, int blocks_per_cta, int layer) {                \
        block_scores_chunk<T, C, BS, D>(scores, q, k_cache, block_tables, context_lens,           \
                                        cu_seqlens_q, roles, budget_blocks, num_heads,            \
                                        num_kv_heads, max_blocks_per_seq, blocks_per_cta, layer); \
    }                                                                                             \
    KV_EXPORT(block_scores_##suffix##_bs##BS##_d##D)

#define KV_BLOCK_SCORES_SHAPES(suffix, T, C) KV_ATTENTION_SHAPES(KV_BLOCK_SCORES, suffix, T, C)

KV_ATTENTION_DTYPES(KV_BLOCK_SCORES_SHAPES)

// Unsigned key with the float order (-0 and +0 equal, as the comparison of the floats has them).
__device__ __forceinline__ unsigned kv_order_key(float x) {
    const unsigned bits = (unsigned)__float_as_int(x == 0.0f ? 0.0f : x);
    return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

// Number of candidate blocks [lo, hi) whose key is >= `at_least`, over the whole CTA.
__device__ __forceinline__ int kv_count_at_least(const float* row_scores, int lo, int hi,
                                                 unsigned at_least, float* scratch) {
    int count = 0;
    for (int j = lo + threadIdx.x; j < hi; j += blockDim.x)
        count += kv_order_key(row_scores[j]) >= at_least;
    // Counts stay far below 2^24, so the float sum is exact.
    return (int)kv_block_sum((float)count, scratch);
}

// Dynamic shared memory: 33 ints of scan scratch, then 32 floats of sum scratch.
__device__ void block_topk_row(int* selection_out, const int* __restrict__ selection_in,
                               const float* __restrict__ scores,
                               const unsigned* __restrict__ context_lens,
                               const unsigned char* __restrict__ roles,
                               const unsigned* __restrict__ budget_blocks,
                               const unsigned* __restrict__ sink_blocks,
                               const unsigned* __restrict__ recent_blocks, int num_kv_heads,
                               int max_blocks_per_seq, int width, int block_size, int layer) {
    KV_DYNAMIC_SMEM(smem);
    int* scan_scratch = reinterpret_cast<int*>(smem);
    float* sum_scratch = reinterpret_cast<float*>(smem + 4 * (KV_WARP_SIZE + 1));
    const int seq = blockIdx.x;
    const int kv_head = blockIdx.y;
    const long long row = (long long)seq * num_kv_heads + kv_head;
    int* out = selection_out + row * width;
    if (!kv_head_selects(roles, budget_blocks, layer, num_kv_heads, seq, kv_head)) {
        for (int i = threadIdx.x; i < width; i += blockDim.x) out[i] = selection_in[row * width + i];
        return;
    }
    const int n = kv_ceil_div(context_lens[seq], block_size);
    const int k = budget_blocks[seq];
    if (n <= k) {
        for (int i = threadIdx.x; i < width; i += blockDim.x) out[i] = i < n ? i : -1;
        return;
    }
    const int sink = sink_blocks[seq];
    const int recent_start = n - (int)recent_blocks[seq];
    const int picks = k - sink - (int)recent_blocks[seq];
    const float* row_scores = scores + row * max_blocks_per_seq;

    // threshold = the picks-th largest key among the candidates [sink, recent_start): the largest
    // value with at least `picks` keys >= it, built bit by bit from the top.
    unsigned threshold = 0;
    int ties_taken = 0;
    if (picks > 0) {
        for (int bit = 31; bit >= 0; --bit) {
            const unsigned probe = threshold | (1u << bit);
            if (kv_count_at_least(row_scores, sink, recent_start, probe, sum_scratch) >= picks)
                threshold = probe;
        }
        // Keys above the threshold are all taken; the rest of the picks are threshold ties.
        const int above = threshold == 0xffffffffu
                              ? 0
                              : kv_count_at_least(row_scores, sink, recent_start, threshold + 1, sum_scratch);
        ties_taken = picks - above;
    }

    // One pass in block order: emit kept blocks ascending.
    int ties_before = 0;
    int emitted = 0;
    for (int base = 0; base < n; base += blockDim.x) {
        const int j = base + threadIdx.x;
        const bool candidate = j < n && j >= sink && j < recent_start;
        const unsigned key = candidate && picks > 0 ? kv_order_key(row_scores[j]) : 0;
        const bool tie = candidate && picks > 0 && key == threshold;
        int ties_in_chunk;
        const int tie_rank = ties_before + kv_block_exclusive_scan(tie, scan_scratch, &ties_in_chunk);
        ties_before += ties_in_chunk;
        const bool keep = j < n && (!candidate || (picks > 0 && (key > threshold || (tie && tie_rank < ties_taken))));
        int kept_in_chunk;
        const int pos = emitted + kv_block_exclusive_scan(keep, scan_scratch, &kept_in_chunk);
        if (keep) out[pos] = j;
        emitted += kept_in_chunk;
    }
    for (int i = emitted + threadIdx.x; i < width; i += blockDim.x) out[i] = -1;
}

extern "C" __global__ void __launch_bounds__(128)
    block_topk(int* selection_out, const int* selection_in, const float* scores,
               const unsigned* context_lens, const unsigned char* roles,
               const unsigned* budget_blocks, const unsigned* sink_blocks,
               const unsigned* recent_blocks, int num_kv_heads, int max_blocks_per_seq, int width,
               int block_size, int layer) {
    block_topk_row(selection_out, selection_in, scores, context_lens, roles, budget_blocks,
                   sink_blocks, recent_blocks, num_kv_heads, max_blocks_per_seq, width, block_size,
                   layer);
}
KV_EXPORT(block_topk)
