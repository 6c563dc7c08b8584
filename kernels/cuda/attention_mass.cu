// attention_mass: the softmax probability mass each cached slot receives from chosen query rows,
// the CUDA twin of kernels/src/paged/attention/mass.rs (its contract, word for word): voter
// v = (seq, first_query) votes with its chunk's query rows [first_query, q_len) times the G query
// heads of each KV head; row j sees cache positions [0, context_len - q_len + j] (exactly
// paged_attention's masking), scores are (scale * q) . k, and out[v][kv_head][slot] is the sum of
// the rows' probabilities for that logical slot (zero past the voter's context).
//
// One CTA per (voter, kv head). Its rows (query x head, row-major) are taken in tiles of up to
// KV_MASS_ROWS; per tile, two passes over the visible keys: the first finds each row's max and
// softmax denominator (online per thread, then one block reduction), the second recomputes the
// scores and adds the probabilities. Key t belongs to thread t % blockDim.x in every pass and
// tile, so each output element has one writer: no atomics. A thread reads its key's K row with
// 16-byte loads and dots it with every row of the tile (q staged in shared memory, read as a
// broadcast), so the G heads of a GQA group share each K read.
//
// q [T, H, D]; k_cache [num_blocks, KVH, BS, D] (16-byte aligned, checked by the launcher);
// voters U32 [V, 2]; block_tables U32 [S, max_blocks]; context_lens U32 [S]; cu_seqlens_q U32
// [S+1]; out F32 [V, KVH, max_ctx], every element written. Voters were validated on the host.
// Dynamic shared memory: kernels/src/cuda/plan.rs (attention_mass_smem_bytes) mirrors the
// carve-up below.
#include "common.cuh"

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Rows one tile scores together (plan.rs: MASS_ROWS).
#define KV_MASS_ROWS 8

// 16 bytes of a K row, loaded as one vector.
struct __align__(16) KvChunk16 {
    unsigned w[4];
};

// Element i of a 16-byte chunk as f32 (little-endian: element 2k is word k's low half).
template <typename T>
__device__ __forceinline__ float kv_chunk_elem(const KvChunk16& c, int i);
template <>
__device__ __forceinline__ float kv_chunk_elem<float>(const KvChunk16& c, int i) {
    return __int_as_float((int)c.w[i]);
}
template <>
__device__ __forceinline__ float kv_chunk_elem<__half>(const KvChunk16& c, int i) {
    return __half2float(__ushort_as_half((unsigned short)(c.w[i / 2] >> (i % 2 * 16))));
}
template <>
__device__ __forceinline__ float kv_chunk_elem<__nv_bfloat16>(const KvChunk16& c, int i) {
    return __int_as_float((int)(i % 2 ? c.w[i / 2] & 0xffff0000u : c.w[i / 2] << 16));
}

// Converts chunk c (elements [c * N, c * N + N)) of a K row to f32.
template <typename T>
__device__ __forceinline__ void kv_mass_load(const T* __restrict__ row, int c, float* out) {
    constexpr int N = 16 / sizeof(T);
    const KvChunk16 raw = reinterpret_cast<const KvChunk16*>(row)[c];
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = kv_chunk_elem<T>(raw, i);
}

// s[r] = q_s[r] . k_row for the tile's first R rows.
template <typename T, int D, int R>
__device__ __forceinline__ void kv_mass_scores(const T* __restrict__ k_row, const float* q_s,
                                               float (&s)[R]) {
    constexpr int N = 16 / sizeof(T);
    static_assert(D % N == 0, "a K row is a whole number of 16-byte chunks");
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = 0.0f;
#pragma unroll 2
    for (int c = 0; c < D / N; ++c) {
        float k[N];
        kv_mass_load<T>(k_row, c, k);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int i = 0; i < N; ++i) s[r] += q_s[r * D + c * N + i] * k[i];
    }
}

// One tile of R rows (the first `rows` of them real; the rest are masked everywhere). Row r sees
// logical keys < first_limit + (row0 + r) / group. Adds the tile's probabilities into out_row.
// Called by the whole CTA (it has barriers); ends with one, so q_s and red may be rewritten.
template <typename T, int BS, int D, int R>
__device__ void kv_mass_tile(float* out_row, const T* __restrict__ k_cache,
                             const unsigned* __restrict__ table, int kv_head, int num_kv_heads,
                             const float* q_s, float* red, int rows, int row0, int group,
                             int first_limit) {
    const int lane = threadIdx.x % KV_WARP_SIZE;
    const int warp = threadIdx.x / KV_WARP_SIZE;
    const int num_warps = blockDim.x / KV_WARP_SIZE;
    int limit[R];
#pragma unroll
    for (int r = 0; r < R; ++r) limit[r] = r < rows ? first_limit + (row0 + r) / group : 0;
    const int max_limit = first_limit + (row0 + rows - 1) / group;
    const long long head_offset = (long long)kv_head * BS * D;
    const long long block_stride = (long long)num_kv_heads * BS * D;

    // Pass 1: per-thread running max and sum of exp(score - max) over its keys, per row.
    float m[R], l[R], s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    for (int t = threadIdx.x; t < max_limit; t += blockDim.x) {
        kv_mass_scores<T, D, R>(k_cache + table[t / BS] * block_stride + head_offset + (t % BS) * D,
                                q_s, s);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (t >= limit[r]) continue;
            if (s[r] > m[r]) {
                l[r] = l[r] * expf(m[r] - s[r]) + 1.0f;  // m = -inf: 0 * 0 + 1
                m[r] = s[r];
            } else {
                l[r] += expf(s[r] - m[r]);
            }
        }
    }
    // Block reduction per row: warp max and rescaled warp sum, then across warps via `red`
    // ([2][num_warps][R]). A lane or warp that saw no key of a row has m = -inf and weighs 0.
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float wm = kv_warp_max(m[r]);
        const float wl = kv_warp_sum(m[r] == -INFINITY ? 0.0f : l[r] * expf(m[r] - wm));
        if (lane == 0) {
            red[warp * R + r] = wm;
            red[(num_warps + warp) * R + r] = wl;
        }
    }
    __syncthreads();
    float row_max[R], inv_sum[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float mx = -INFINITY;
        for (int w = 0; w < num_warps; ++w) mx = fmaxf(mx, red[w * R + r]);
        float sum = 0.0f;
        for (int w = 0; w < num_warps; ++w) {
            const float wm = red[w * R + r];
            if (wm != -INFINITY) sum += red[(num_warps + w) * R + r] * expf(wm - mx);
        }
        row_max[r] = mx;
        inv_sum[r] = sum > 0.0f ? 1.0f / sum : 0.0f;
    }

    // Pass 2: the same keys, the same owners; each adds its keys' probability sums.
    for (int t = threadIdx.x; t < max_limit; t += blockDim.x) {
        kv_mass_scores<T, D, R>(k_cache + table[t / BS] * block_stride + head_offset + (t % BS) * D,
                                q_s, s);
        float mass = 0.0f;
#pragma unroll
        for (int r = 0; r < R; ++r)
            if (t < limit[r]) mass += expf(s[r] - row_max[r]) * inv_sum[r];
        out_row[t] += mass;
    }
    __syncthreads();
}

template <typename T, int BS, int D>
__device__ void attention_mass_head(float* out, const T* __restrict__ q,
                                    const T* __restrict__ k_cache,
                                    const unsigned* __restrict__ voters,
                                    const unsigned* __restrict__ block_tables,
                                    const unsigned* __restrict__ context_lens,
                                    const unsigned* __restrict__ cu_seqlens_q, int num_heads,
                                    int num_kv_heads, int max_blocks_per_seq, int max_ctx,
                                    float scale) {
    static_assert(D % KV_WARP_SIZE == 0, "head_dim must be a multiple of 32");
    KV_DYNAMIC_SMEM(smem);
    float* q_s = reinterpret_cast<float*>(smem);  // [KV_MASS_ROWS][D], pre-multiplied by scale
    float* red = q_s + KV_MASS_ROWS * D;          // [2][num_warps][KV_MASS_ROWS]
    const int voter = blockIdx.x;
    const int kv_head = blockIdx.y;
    const int seq = voters[2 * voter];
    const int first = voters[2 * voter + 1];
    const int q_begin = cu_seqlens_q[seq];
    const int q_len = cu_seqlens_q[seq + 1] - q_begin;
    const int context = context_lens[seq];
    const int group = num_heads / num_kv_heads;
    const int rows = (q_len - first) * group;
    // Query `first + j` of the chunk sees positions < first_limit + j.
    const int first_limit = context - q_len + first + 1;
    const unsigned* table = block_tables + (long long)seq * max_blocks_per_seq;
    float* out_row = out + ((long long)voter * num_kv_heads + kv_head) * max_ctx;

    // Same owner as every later write of element t: no barrier needed before accumulating.
    for (int t = threadIdx.x; t < max_ctx; t += blockDim.x) out_row[t] = 0.0f;

    for (int row0 = 0; row0 < rows; row0 += KV_MASS_ROWS) {
        const int n = min(KV_MASS_ROWS, rows - row0);
        for (int i = threadIdx.x; i < KV_MASS_ROWS * D; i += blockDim.x) {
            const int r = i / D;
            float v = 0.0f;
            if (r < n) {
                const long long token = q_begin + first + (row0 + r) / group;
                const int head = kv_head * group + (row0 + r) % group;
                v = kv_to_float(q[(token * num_heads + head) * D + i % D]) * scale;
            }
            q_s[i] = v;
        }
        __syncthreads();
        // Uniform over the CTA: every thread takes the same instantiation (and its barriers).
        // Short tiles (a decode row of a small group) use fewer row registers and FMAs.
        if (n > 4)
            kv_mass_tile<T, BS, D, 8>(out_row, k_cache, table, kv_head, num_kv_heads, q_s, red, n,
                                      row0, group, first_limit);
        else if (n > 2)
            kv_mass_tile<T, BS, D, 4>(out_row, k_cache, table, kv_head, num_kv_heads, q_s, red, n,
                                      row0, group, first_limit);
        else if (n == 2)
            kv_mass_tile<T, BS, D, 2>(out_row, k_cache, table, kv_head, num_kv_heads, q_s, red, n,
                                      row0, group, first_limit);
        else
            kv_mass_tile<T, BS, D, 1>(out_row, k_cache, table, kv_head, num_kv_heads, q_s, red, n,
                                      row0, group, first_limit);
    }
}

#define KV_ATTENTION_MASS(suffix, T, BS, D)                                                     \
    extern "C" __global__ void __launch_bounds__(128) attention_mass_##suffix##_bs##BS##_d##D( \
        float* out, const T* q, const T* k_cache, const unsigned* voters,                      \
        const unsigned* block_tables, const unsigned* context_lens,                            \
        const unsigned* cu_seqlens_q, int num_heads, int num_kv_heads, int max_blocks_per_seq, \
        int max_ctx, float scale) {                                                            \
        attention_mass_head<T, BS, D>(out, q, k_cache, voters, block_tables, context_lens,     \
                                      cu_seqlens_q, num_heads, num_kv_heads,                   \
                                      max_blocks_per_seq, max_ctx, scale);                     \
    }                                                                                          \
    KV_EXPORT(attention_mass_##suffix##_bs##BS##_d##D)

#define KV_ATTENTION_MASS_SHAPES(suffix, T) \
    KV_ATTENTION_MASS(suffix, T, 16, 64)    \
    KV_ATTENTION_MASS(suffix, T, 16, 128)   \
    KV_ATTENTION_MASS(suffix, T, 32, 64)    \
    KV_ATTENTION_MASS(suffix, T, 32, 128)

KV_ATTENTION_MASS_SHAPES(f32, float)
KV_ATTENTION_MASS_SHAPES(f16, __half)
KV_ATTENTION_MASS_SHAPES(bf16, __nv_bfloat16)
