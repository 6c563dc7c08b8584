// Test-only probes of the emulator's warp primitives (votes, shuffles with offsets and widths,
// atomics), so their semantics are pinned independently of the production kernels.
#include "common.cuh"

// out[i * 8 + k] for thread i: ballot, any, all, shfl_up 1, shfl_down 3, shfl src 5, shfl_xor
// within 8-lane segments, and the block-wide atomic counter value this thread saw.
extern "C" __global__ void probe_warp_primitives(int* out, int* counter) {
    const int lane = threadIdx.x % 32;
    const int v = (int)threadIdx.x * 10;
    int* o = out + threadIdx.x * 8;
    o[0] = (int)__ballot_sync(KV_FULL_MASK, lane % 3 == 0);
    o[1] = __any_sync(KV_FULL_MASK, threadIdx.x == 40);
    o[2] = __all_sync(KV_FULL_MASK, lane < 32);
    o[3] = __shfl_up_sync(KV_FULL_MASK, v, 1);
    o[4] = __shfl_down_sync(KV_FULL_MASK, v, 3);
    o[5] = __shfl_sync(KV_FULL_MASK, v, 5);
    o[6] = __shfl_xor_sync(KV_FULL_MASK, v, 2, 8);
    o[7] = atomicAdd(counter, 1);
}
KV_EXPORT(probe_warp_primitives)
