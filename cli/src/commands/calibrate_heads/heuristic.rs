//! `--method heuristic`: a training-free ranking. With full attention, for the last queries of
//! several calibration haystacks, each (layer ≥ 1, KV head) is scored by the attention mass its
//! query heads put outside the head's own top-k blocks (the inference rule's selection at the
//! given budget, block 16); the `round(density · heads)` heads that lose the most under their
//! own best selection become retrieval. Layer 0 is retrieval by rule.
//!
//! Must not know: HardKuma, files or the comparison.

use anyhow::Result;
use kvault_models::tokenizer::Tokenizer;
use kvault_models::training::lychee::{BlockBudget, OutsideMassProbe};
use kvault_models::training::TrainingModel;

use super::haystacks::Haystacks;

pub struct Ranked {
    /// `[layers · kv]`: mean outside mass per observed query.
    pub score: Vec<f64>,
    pub retrieval: Vec<bool>,
    pub windows: usize,
    pub queries: usize,
}

/// `count` heads of layers ≥ 1 with the highest `score` (ties to the lower index), plus layer 0.
pub fn top_heads(score: &[f64], kv_heads: usize, count: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (kv_heads..score.len()).collect();
    order.sort_by(|&i, &j| score[j].total_cmp(&score[i]).then(i.cmp(&j)));
    let mut retrieval: Vec<bool> = (0..score.len()).map(|i| i < kv_heads).collect();
    for &i in order.iter().take(count) {
        retrieval[i] = true;
    }
    retrieval
}

pub fn rank(model: &TrainingModel, tokenizer: &Tokenizer, data: &Haystacks, budget: BlockBudget, windows: usize, last_queries: usize, count: usize) -> Result<Ranked> {
    let c = &model.config;
    let mut probe = OutsideMassProbe::new(c.num_layers, c.num_kv_heads, budget);
    for w in 0..windows {
        let ex = data.train(tokenizer, w)?;
        // The prompt (without the answer): its last queries are the ones scored.
        let mut prompt = ex.prefix.clone();
        prompt.push(ex.rows[0]);
        let q = last_queries.min(prompt.len() - 1);
        let (head, tail) = prompt.split_at(prompt.len() - q);
        let prefix = model.prefill(head)?;
        model.decode_rows(&prefix, tail, &mut probe)?;
        eprintln!("calibrate-heads: heuristic window {}/{windows}", w + 1);
    }
    let n = probe.rows_seen.max(1) as f64;
    let score: Vec<f64> = probe.outside.iter().map(|s| s / n).collect();
    let retrieval = top_heads(&score, c.num_kv_heads, count);
    Ok(Ranked { score, retrieval, windows, queries: probe.rows_seen })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_heads_marks_exactly_count_outside_layer_0() {
        let score = [9.0, 9.0, 0.1, 0.5, 0.5, 0.2, 0.9, 0.0];
        let r = top_heads(&score, 2, 3);
        assert_eq!(r, vec![true, true, false, true, true, false, true, false]);
        assert_eq!(top_heads(&score, 2, 0).iter().filter(|&&x| x).count(), 2);
    }
}
