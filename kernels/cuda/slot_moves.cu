// move_slots and copy_blocks: in-place rewrites of one layer's cache for the KV policies, the CUDA
// twins of kernels/src/paged/slot_moves.rs (same contract; the host validated every index).
//
// A cache tensor is K or V [num_blocks, heads, block_size, row = head_dim] in f32/f16/bf16 (int8
// and fp8 caches: row = head_dim + 4 bytes, codes then scale, moved as bytes: `u8`), or
// slot_pos (i32) / slot_score (f32) [num_blocks, heads, block_size] (row = 1). Slot s of a head
// lives at block s / block_size, offset s % block_size.
//
// move_slots: moves U32 [n, 3] = (head, src_slot, dst_slot). Per head no slot is written twice
// and no destination is also a source, so every (move, element) pair is independent: one thread
// copies one element, then (has_clear) overwrites the source with `clear`, converted as the CPU
// op does (round to nearest even for the half types, truncation toward zero for i32).
// Grid-stride over n * row elements.
//
// copy_blocks: pairs U32 [n, 2] = (src_block, dst_block), destinations distinct and never a
// source. grid.x = pair, grid.y and the threads stride over the block's heads * block_size * row
// elements (every head of the block).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T kv_cleared(float c) {
    return kv_from_float<T>(c);
}
template <>
__device__ __forceinline__ int kv_cleared<int>(float c) {
    return (int)c;
}
template <>
__device__ __forceinline__ unsigned char kv_cleared<unsigned char>(float c) {
    return (unsigned char)c;  // never used: quantized K/V rows are moved without clearing
}

template <typename T>
__device__ void move_slots_all(T* data, const unsigned* __restrict__ moves, int num_moves,
                               int heads, int block_size, int row, int has_clear, float clear) {
    const long long total = (long long)num_moves * row;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const long long m = i / row;
        const int e = (int)(i % row);
        const unsigned head = moves[3 * m];
        const unsigned src = moves[3 * m + 1];
        const unsigned dst = moves[3 * m + 2];
        const long long s =
            (((long long)(src / block_size) * heads + head) * block_size + src % block_size) * row + e;
        const long long d =
            (((long long)(dst / block_size) * heads + head) * block_size + dst % block_size) * row + e;
        data[d] = data[s];
        if (has_clear) data[s] = kv_cleared<T>(clear);
    }
}

#define KV_MOVE_SLOTS(suffix, T)                                                                  \
    extern "C" __global__ void move_slots_##suffix(T* data, const unsigned* moves, int num_moves, \
                                                   int heads, int block_size, int row,           \
                                                   int has_clear, float clear) {                 \
        move_slots_all<T>(data, moves, num_moves, heads, block_size, row, has_clear, clear);      \
    }                                                                                             \
    KV_EXPORT(move_slots_##suffix)

KV_MOVE_SLOTS(f32, float)
KV_MOVE_SLOTS(f16, __half)
KV_MOVE_SLOTS(bf16, __nv_bfloat16)
KV_MOVE_SLOTS(i32, int)
KV_MOVE_SLOTS(u8, unsigned char)

template <typename T>
__device__ void copy_blocks_all(T* data, const unsigned* __restrict__ pairs, long long block_elems) {
    const long long src = pairs[2 * blockIdx.x] * block_elems;
    const long long dst = pairs[2 * blockIdx.x + 1] * block_elems;
    const long long stride = (long long)gridDim.y * blockDim.x;
    for (long long i = (long long)blockIdx.y * blockDim.x + threadIdx.x; i < block_elems; i += stride)
        data[dst + i] = data[src + i];
}

#define KV_COPY_BLOCKS(suffix, T)                                                                 \
    extern "C" __global__ void copy_blocks_##suffix(T* data, const unsigned* pairs,              \
                                                    long long block_elems) {                     \
        copy_blocks_all<T>(data, pairs, block_elems);                                             \
    }                                                                                             \
    KV_EXPORT(copy_blocks_##suffix)

KV_COPY_BLOCKS(f32, float)
KV_COPY_BLOCKS(f16, __half)
KV_COPY_BLOCKS(bf16, __nv_bfloat16)
KV_COPY_BLOCKS(i32, int)
KV_COPY_BLOCKS(u8, unsigned char)
