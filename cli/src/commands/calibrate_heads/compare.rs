//! The comparison of role sets on held-out haystacks, with the differentiable forward in eval
//! mode (no gradient): each set as hard roles under the inference rule (retrieval heads attend
//! fully and choose top-k blocks; sparse heads read the choice of the nearest lower retrieval
//! layer of their head index), against full attention — the final-hidden MSE on the answer rows
//! (the distillation loss) and the greedy answer-token agreement with full attention.
//!
//! Must not know: how the sets were found.

use anyhow::Result;
use candle_core::DType;
use kvault_models::tokenizer::Tokenizer;
use kvault_models::training::lychee::{distillation, BlockBudget, FullMixer, HardRolesMixer};
use kvault_models::training::TrainingModel;
use serde_json::{json, Value};

use super::haystacks::Haystacks;

pub struct RoleSet {
    pub name: String,
    pub retrieval: Vec<bool>,
}

pub struct Outcome {
    pub name: String,
    pub retrieval_heads: usize,
    pub density: f64,
    pub distill: f64,
    /// Greedy token equal to full attention's, over all answer rows.
    pub agreement: f64,
    /// Greedy token equal to the answer.
    pub answer_accuracy: f64,
}

pub struct Comparison {
    pub samples: usize,
    pub rows: usize,
    pub full_answer_accuracy: f64,
    pub outcomes: Vec<Outcome>,
}

impl Comparison {
    pub fn json(&self, budget: BlockBudget) -> Value {
        json!({
            "heldout_samples": self.samples,
            "answer_rows": self.rows,
            "budget_blocks": budget.budget, "sink_blocks": budget.sink, "recent_blocks": budget.recent, "block_size": budget.block_size,
            "full_attention_answer_accuracy": self.full_answer_accuracy,
            "role_sets": self.outcomes.iter().map(|o| json!({
                "name": o.name, "retrieval_heads_outside_layer0": o.retrieval_heads, "density": o.density,
                "distill_mse": o.distill, "greedy_agreement_with_full": o.agreement, "answer_accuracy": o.answer_accuracy,
            })).collect::<Vec<_>>(),
        })
    }

    /// One line per set, for stderr and the report.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("held-out: {} haystacks, {} answer rows; full attention answers {:.1}% right", self.samples, self.rows, 100.0 * self.full_answer_accuracy)];
        for o in &self.outcomes {
            out.push(format!(
                "  {:<22} {:>3} retrieval heads (density {:.3}): distill MSE {:.6}, greedy agreement {:.1}%, answer {:.1}%",
                o.name,
                o.retrieval_heads,
                o.density,
                o.distill,
                100.0 * o.agreement,
                100.0 * o.answer_accuracy
            ));
        }
        out
    }
}

pub fn compare(model: &TrainingModel, tokenizer: &Tokenizer, data: &Haystacks, sets: &[RoleSet], samples: usize, budget: BlockBudget) -> Result<Comparison> {
    let kv = model.config.num_kv_heads;
    let mut sums = vec![[0f64; 3]; sets.len()];
    let (mut rows, mut full_right) = (0usize, 0usize);
    for i in 0..samples {
        let ex = data.heldout(tokenizer, i)?;
        let prefix = model.prefill(&ex.prefix)?;
        let teacher = model.decode_rows(&prefix, &ex.rows, &mut FullMixer)?;
        let full_greedy = model.greedy(&teacher)?;
        rows += ex.rows.len();
        full_right += full_greedy.iter().zip(&ex.answer).filter(|(g, a)| g == a).count();
        for (set, sum) in sets.iter().zip(sums.iter_mut()) {
            let mut mixer = HardRolesMixer::new(set.retrieval.clone(), kv, budget, model.dtype());
            let h = model.decode_rows(&prefix, &ex.rows, &mut mixer)?;
            sum[0] += distillation(&teacher, &h)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let g = model.greedy(&h)?;
            sum[1] += g.iter().zip(&full_greedy).filter(|(x, y)| x == y).count() as f64;
            sum[2] += g.iter().zip(&ex.answer).filter(|(x, y)| x == y).count() as f64;
        }
        eprintln!("calibrate-heads: compared held-out haystack {}/{samples}", i + 1);
    }
    let outcomes = sets
        .iter()
        .zip(&sums)
        .map(|(set, s)| {
            let chosen = set.retrieval[kv..].iter().filter(|&&r| r).count();
            Outcome {
                name: set.name.clone(),
                retrieval_heads: chosen,
                density: chosen as f64 / (set.retrieval.len() - kv).max(1) as f64,
                distill: s[0] / samples as f64,
                agreement: s[1] / rows as f64,
                answer_accuracy: s[2] / rows as f64,
            }
        })
        .collect();
    Ok(Comparison { samples, rows, full_answer_accuracy: full_right as f64 / rows as f64, outcomes })
}
