//! The paged KV cache and the ops that read and write it: cache tensors ([`cache`]) in one of
//! the KV dtypes ([`kv_dtype`]; the int8/fp8 row codecs are [`quant`]), the
//! per-step batch description ([`metadata`]), `write_kv` ([`write_kv`]), `paged_attention`
//! ([`attention`]) and its hybrid-head sparse twin `paged_attention_sparse` with the retrieval
//! heads' `select_blocks` ([`sparse`], LycheeDecode).
//!
//! The KV policies' helpers live here too: `attention_mass` (per-slot attention sums) and
//! `slot_moves` (in-place entry moves and block copies).
//!
//! Must not know: block allocation, prefix hashing or eviction decisions; those live in the
//! engine and hand this module block tables and slot mappings.

pub mod attention;
pub mod block_bytes;
pub mod cache;
pub mod kv_dtype;
pub mod metadata;
pub mod quant;
pub mod slot_moves;
pub mod sparse;
pub mod write_kv;

pub use attention::mass::{attention_mass, MassVoter};
pub use attention::{cpu_attention_level, paged_attention};
pub use block_bytes::{block_nbytes, read_blocks, write_block};
pub use cache::{KvCacheShape, LayerKvCache, PagedKvCache};
pub use kv_dtype::KvDtype;
pub use metadata::{AttentionMetadata, HostMetadata};
pub use slot_moves::{copy_blocks, move_slots, BlockCopies, SlotMoves};
pub use sparse::{paged_attention_sparse, select_blocks, HeadRoles, SparseDecodePlan, SparsePlanHost};
pub use write_kv::write_kv;
