//! The building blocks every supported architecture shares: linear layers that may be
//! quantized, embeddings, rotary embeddings, paged attention, the gated MLP, and the decoder
//! that stacks them. Architecture files only decide which optional pieces are present.
//!
//! Must not know: file formats (weights arrive through `WeightSource`) or requests (a forward
//! pass sees a flattened batch and attention metadata, never a sequence object).

mod attention;
mod decoder;
mod embedding;
mod linear;
mod linear_group;
mod mlp;
mod rotary;

pub use attention::Attention;
pub use decoder::{DecoderLayer, Transformer};
pub use embedding::Embedding;
pub use linear::Linear;
pub use linear_group::LinearGroup;
pub use mlp::Mlp;
pub use rotary::RotaryEmbedding;
