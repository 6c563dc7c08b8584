//! What `kvault calibrate-heads` differentiates for LycheeDecode (ALGORITHMS.md §2.3): the frozen
//! model run as the engine would serve a lychee request — the prompt prefilled with full
//! attention, then the answer rows decoded (teacher-forced) with a per-(layer, KV head) choice
//! between full and sparse attention — and the HardKuma gate that makes that choice
//! differentiable.
//!
//! - [`kuma`]: HardKuma sampling, `P(z = 0)`, the inference decision `E[Kuma(a, b)] > 0.5`;
//! - [`rows`]: the prefill (no gradient) and the decode rows' forward, layer by layer, with a
//!   [`HeadMixer`] deciding each layer's mix of full and sparse attention;
//! - [`mixers`]: the mixers — the training form (HardKuma z, token masks from the layer below),
//!   hard roles under the inference rule (block masks carried up from the nearest lower
//!   retrieval layer), full attention, and the heuristic's probe;
//! - [`masks`]: the two mask rules (token-level ratio masks, block selection);
//! - [`objective`]: distillation on the final normed hidden state and the Lagrangian density term.
//!
//! Why only the answer rows are mixed: at serving time the prompt is prefilled with full
//! attention and only decode steps are sparse, so the prompt's KV is the teacher's exactly; the
//! paper's loss likewise compares teacher and student "on the same prefilled cache". The rows
//! are the prompt's last token plus the answer tokens but the last (the positions that predict
//! the answer), so the first predicted answer token is already a sparse decode.
//!
//! Must not know: optimizers, data, files or progress bars (the CLI command owns those), the
//! paged cache or the sparse-decode kernels (this is the same math in plain tensors).

pub mod kuma;
pub mod masks;
pub mod mixers;
pub mod objective;
pub mod rows;

pub use masks::{BlockBudget, RatioMask};
pub use mixers::{FullMixer, HardRolesMixer, HeadMixer, LayerPlan, LayerScores, OutsideMassProbe, TrainingMixer};
pub use objective::{distillation, DensityTerm, Lagrange};
pub use rows::Prefix;
