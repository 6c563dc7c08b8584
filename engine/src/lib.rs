//! The kvault runtime.
//!
//! Owns: requests and their state machine, the block pool and prefix cache, the KV cache
//! tensors, the model runner (turning a scheduling decision into one batched forward), the
//! sampler, stop handling and the engine loop that streams outputs to callers.
//!
//! Must not know: HTTP, terminals or command-line flags (the cli crate translates those), nor
//! model internals beyond the `kvault_models` interface.

pub mod block_pool;
pub mod engine;
pub mod events;
pub mod handle;
pub mod info;
pub mod kv_policy;
pub mod kv_state;
pub mod model_runner;
pub mod offload;
pub mod request;
pub mod sampler;
pub mod sizing;
pub mod stats;
pub mod stop;

mod sequence;
mod sink;
