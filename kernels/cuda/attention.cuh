// The attention core shared by paged decode and paged prefill: one CTA serves R query rows that
// all read the same KV head (a decode token's G = num_heads / num_kv_heads query heads, or a
// prefill tile's tokens x G heads), walking a range of that sequence's cache blocks with an
// online softmax. Each K row is loaded once (by one warp, into registers) and dotted with every
// row's query; each V block is staged once in shared memory and read by every row: that is the
// GQA sharing the issue asks for.
//
// Owns: the per-block score / softmax / accumulate loop and the shared-memory layout it needs.
// Must not know: how rows map to tokens and heads, splits, or where results go (the kernels'
// prologue and epilogue decide; kernels/src/cuda/plan.rs sizes the shared memory with the same
// formula as kv_attn_smem_bytes below).
//
// Cache element types: C is the cache's element (float, __half, __nv_bfloat16) or a quantized
// format tag (KvInt8, KvFp8; kv_quant.cuh) whose rows are D codes plus the f32 scale. For those
// the key scale multiplies the q.codes dot and the value scale is folded into the probability,
// as the CPU kernel does.
#pragma once

#include "common.cuh"
#include "kv_quant.cuh"

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Shared-memory carve-up for `rows` query rows. The V tile comes first so its element type
// keeps 16-byte alignment; everything after it is 4-byte floats/ints.
struct KvAttnSmem {
    float* q;       // [rows][D] query, pre-multiplied by softmax_scale
    float* acc;     // [rows][D] unnormalised output
    float* p;       // [rows][BS] scores, then probabilities, of the current cache block
    float* m;       // [rows] running max
    float* l;       // [rows] running sum of exp(score - m)
    float* alpha;   // [rows] rescale factor for acc when m grows
    int* limit;     // [rows] row attends cache positions < limit
};

// `row_bytes`: one cache row, D elements (and a quantized row's 4-byte scale).
__host__ __device__ __forceinline__ unsigned kv_attn_vtile_bytes(unsigned row_bytes, unsigned bs) {
    return (bs * row_bytes + 15u) / 16u * 16u;
}

__host__ __device__ __forceinline__ unsigned kv_attn_smem_bytes(unsigned row_bytes, unsigned bs,
                                                                 unsigned d, unsigned rows) {
    return kv_attn_vtile_bytes(row_bytes, bs) + 4u * (2u * rows * d + rows * bs + 4u * rows);
}

template <typename C, int BS, int D>
__device__ __forceinline__ KvAttnSmem kv_attn_carve(unsigned char* smem, int rows,
                                                    typename KvRow<C>::E** v_tile) {
    using E = typename KvRow<C>::E;
    constexpr int ROW = D + KvRow<C>::PAD;
    *v_tile = reinterpret_cast<E*>(smem);
    float* f = reinterpret_cast<float*>(smem + kv_attn_vtile_bytes(ROW * sizeof(E), BS));
    KvAttnSmem s;
    s.q = f;
    s.acc = s.q + rows * D;
    s.p = s.acc + rows * D;
    s.m = s.p + rows * BS;
    s.l = s.m + rows;
    s.alpha = s.l + rows;
    s.limit = reinterpret_cast<int*>(s.alpha + rows);
    return s;
}

// Resets the running state; the caller has filled s.q and s.limit. Ends with a barrier.
template <int D>
__device__ __forceinline__ void kv_attn_reset(KvAttnSmem s, int rows) {
    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) s.acc[i] = 0.0f;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        s.m[r] = -INFINITY;
        s.l[r] = 0.0f;
    }
    __syncthreads();
}

// Attends rows [0, rows) to one cache block of one sequence: logical block `logical` (its keys
// are positions [logical * BS, logical * BS + BS)), stored in physical block `physical`, for one
// KV head. Positions >= a row's limit are masked. Must be called by the whole CTA with the same
// arguments (it contains barriers). blockDim.x must be a multiple of 32. Sparse decode calls it
// directly for a head's selected blocks; everything else goes through kv_attend_blocks.
template <typename C, int BS, int D>
__device__ __forceinline__ void kv_attend_block(KvAttnSmem s, typename KvRow<C>::E* v_tile, int rows,
                                                const typename KvRow<C>::E* __restrict__ k_cache,
                                                const typename KvRow<C>::E* __restrict__ v_cache,
                                                unsigned physical, int logical, int kv_head,
                                                int num_kv_heads, int max_limit) {
    static_assert(BS <= KV_WARP_SIZE, "one lane per token of a cache block in the softmax step");
    static_assert(D % KV_WARP_SIZE == 0, "head_dim must be a multiple of 32");
    using Row = KvRow<C>;
    constexpr int PER_LANE = D / KV_WARP_SIZE;
    constexpr int ROW = D + Row::PAD;  // elements per cache row
    const int lane = threadIdx.x % KV_WARP_SIZE;
    const int warp = threadIdx.x / KV_WARP_SIZE;
    const int num_warps = blockDim.x / KV_WARP_SIZE;
    const int b = logical;

    const long long base = ((long long)physical * num_kv_heads + kv_head) * BS * ROW;
    // Tokens of this block that any row may see; the rest are never read (they may hold
    // another sequence's leftovers).
    const int valid = min(BS, max_limit - b * BS);

    // Scores: warp w owns tokens w, w + num_warps, ...; lanes split the head dim.
    for (int t = warp; t < valid; t += num_warps) {
        float k[PER_LANE];
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i)
            k[i] = Row::get(k_cache[base + t * ROW + lane + i * KV_WARP_SIZE]);
        float k_scale = 1.0f;
        if constexpr (Row::QUANT) k_scale = kv_row_scale<D>(k_cache + base + t * ROW);
        for (int r = 0; r < rows; ++r) {
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < PER_LANE; ++i) dot += k[i] * s.q[r * D + lane + i * KV_WARP_SIZE];
            dot = kv_warp_sum(dot);
            if constexpr (Row::QUANT) dot *= k_scale;
            if (lane == 0) s.p[r * BS + t] = b * BS + t < s.limit[r] ? dot : -INFINITY;
        }
    }
    for (int i = threadIdx.x; i < valid * ROW; i += blockDim.x) v_tile[i] = v_cache[base + i];
    __syncthreads();

    // Online softmax: warp w owns rows w, w + num_warps, ...; lane t holds token t.
    for (int r = warp; r < rows; r += num_warps) {
        const float score = lane < valid ? s.p[r * BS + lane] : -INFINITY;
        const float m_old = s.m[r];
        const float m_new = fmaxf(m_old, kv_warp_max(score));
        // A row that has seen only masked positions so far keeps m = -inf; exp(-inf - -inf)
        // would be NaN, so it contributes nothing and rescales by 1.
        const bool empty = m_new == -INFINITY;
        const float prob = empty ? 0.0f : expf(score - m_new);
        const float alpha = empty ? 1.0f : expf(m_old - m_new);
        const float sum = kv_warp_sum(prob);
        if (lane < valid) s.p[r * BS + lane] = prob;
        if (lane == 0) {
            s.m[r] = m_new;
            s.l[r] = s.l[r] * alpha + sum;
            s.alpha[r] = alpha;
        }
    }
    __syncthreads();

    // acc = acc * alpha + P V: each thread owns fixed (row, dim) pairs.
    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
        const int r = i / D;
        const int d = i % D;
        float a = s.acc[i] * s.alpha[r];
        for (int t = 0; t < valid; ++t) {
            float p = s.p[r * BS + t];
            if constexpr (Row::QUANT) p *= kv_row_scale<D>(v_tile + t * ROW);
            a += p * Row::get(v_tile[t * ROW + d]);
        }
        s.acc[i] = a;
    }
    // The next block overwrites p and the V tile.
    __syncthreads();
}

// Attends rows [0, rows) to cache blocks [blk_begin, blk_end) of one sequence's table, for one
// KV head (kv_attend_block on each, in order). Same calling rules as kv_attend_block.
template <typename C, int BS, int D>
__device__ void kv_attend_blocks(KvAttnSmem s, typename KvRow<C>::E* v_tile, int rows,
                                 const typename KvRow<C>::E* __restrict__ k_cache,
                                 const typename KvRow<C>::E* __restrict__ v_cache,
                                 const unsigned* __restrict__ table, int kv_head, int num_kv_heads,
                                 int blk_begin, int blk_end, int max_limit) {
    for (int b = blk_begin; b < blk_end; ++b)
        kv_attend_block<C, BS, D>(s, v_tile, rows, k_cache, v_cache, table[b], b, kv_head,
                                  num_kv_heads, max_limit);
}

// One attention kernel instantiated at every compiled (block size, head dim); kernels/src/cuda/
// plan.rs lists the same shapes (SUPPORTED_BLOCK_SIZES, SUPPORTED_HEAD_DIMS).
#define KV_ATTENTION_SHAPES(KERNEL, suffix, T, C) \
    KERNEL(suffix, T, C, 16, 64)                  \
    KERNEL(suffix, T, C, 16, 128)                 \
    KERNEL(suffix, T, C, 32, 64)                  \
    KERNEL(suffix, T, C, 32, 128)

// Every (query dtype, cache element) pair the attention kernels are instantiated for: the query's
// own float dtype, then int8 and fp8 caches read by each query dtype. `SHAPES(suffix, T, C)`
// instantiates one pair at every compiled (block size, head dim); the suffix names the kernel.
#define KV_ATTENTION_DTYPES(SHAPES)                 \
    SHAPES(f32, float, float)                       \
    SHAPES(f16, __half, __half)                     \
    SHAPES(bf16, __nv_bfloat16, __nv_bfloat16)      \
    SHAPES(f32_int8, float, KvInt8)                 \
    SHAPES(f16_int8, __half, KvInt8)                \
    SHAPES(bf16_int8, __nv_bfloat16, KvInt8)        \
    SHAPES(f32_fp8, float, KvFp8)                   \
    SHAPES(f16_fp8, __half, KvFp8)                  \
    SHAPES(bf16_fp8, __nv_bfloat16, KvFp8)
