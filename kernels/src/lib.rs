//! Attention and KV-cache operations for kvault.
//!
//! Owns: the paged KV cache tensors and their layout
//! (`[num_blocks, num_kv_heads, block_size, head_dim]` per layer, keys after RoPE), the attention
//! metadata that describes a flattened varlen batch, and every op the model's hot path calls
//! (`write_kv`, `paged_attention` and its hybrid-head sparse twin with `select_blocks`, `rope`,
//! `rms_norm`, `silu_mul`) as candle CustomOps with a CPU implementation (and, behind the `cuda`
//! feature, a CUDA one). The CPU implementation of each op is also the test oracle for its CUDA
//! twin.
//!
//! Must not know: models, requests, scheduling or block allocation. Callers hand it tensors and
//! block tables; where the blocks came from is none of its business.

#[cfg(feature = "cuda")]
pub mod cuda;
mod elem;
pub mod matmul;
pub mod paged;
mod prefetch;
pub mod rms_norm;
pub mod rope;
pub mod silu_mul;

pub use paged::{
    attention_mass, cpu_attention_level, copy_blocks, move_slots, paged_attention, write_kv, AttentionMetadata, BlockCopies, HostMetadata,
    KvCacheShape, KvDtype, LayerKvCache, MassVoter, PagedKvCache, SlotMoves,
};
pub use paged::{paged_attention_sparse, select_blocks, HeadRoles, SparseDecodePlan, SparsePlanHost};
pub use matmul::{matmul_bt, MatmulPrecision, QuantizedMatrix};
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use silu_mul::silu_mul;
