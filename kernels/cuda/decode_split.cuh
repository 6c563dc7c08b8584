// The flash-decoding frame shared by paged decode (paged_decode.cu) and sparse decode
// (sparse_decode.cu): a split CTA loads its sequence's decode token for one KV head's G query
// heads, attends some cache blocks (the caller decides which), and stores a normalised partial
// plus (m, l); the merge weighs a (sequence, head)'s partials by l * e^(m - M).
//
// Owns: the partial layout and the merge arithmetic, so that both decode kernels produce the
// same bits for the same blocks in the same splits. Must not know: which blocks a split walks.
//
// Partials: part_out F32 [S, H, splits, D], part_m / part_l F32 [S, H, splits]. An empty split
// stores m = -inf, l = 0 and weighs nothing.
#pragma once

#include "attention.cuh"

// Loads the decode token's G query rows of `kv_head` (pre-multiplied by scale), sets every row's
// limit to `context` and resets the running state. Ends with a barrier.
template <typename T, typename C, int BS, int D>
__device__ __forceinline__ KvAttnSmem kv_decode_begin(unsigned char* smem, typename KvRow<C>::E** v_tile,
                                                      const T* __restrict__ q, int token, int kv_head,
                                                      int group, int num_heads, int context, float scale) {
    KvAttnSmem s = kv_attn_carve<C, BS, D>(smem, group, v_tile);
    for (int i = threadIdx.x; i < group * D; i += blockDim.x)
        s.q[i] = kv_to_float(q[((long long)token * num_heads + kv_head * group) * D + i]) * scale;
    for (int r = threadIdx.x; r < group; r += blockDim.x) s.limit[r] = context;
    kv_attn_reset<D>(s, group);
    return s;
}

// Stores the split's partials. Normalised (acc / l) so the merge only needs the weights.
template <int D>
__device__ __forceinline__ void kv_decode_store_split(KvAttnSmem s, int group, int seq, int kv_head,
                                                      int split, int num_splits, int num_heads,
                                                      float* part_out, float* part_m, float* part_l) {
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

// Merges (seq, head)'s splits into out[token, head, :] (query dtype). Threads over the head dim.
template <typename T>
__device__ __forceinline__ void kv_decode_merge_row(T* out, const float* part_out, const float* part_m,
                                                    const float* part_l, long long token, int seq,
                                                    int head, int num_heads, int head_dim, int num_splits) {
    const long long row0 = ((long long)seq * num_heads + head) * num_splits;
    float m_max = -INFINITY;
    for (int z = 0; z < num_splits; ++z) m_max = fmaxf(m_max, part_m[row0 + z]);
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
