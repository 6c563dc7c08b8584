//! Logprobs of the raw model distribution (log-softmax of the unprocessed logits, vLLM's default
//! `raw_logprobs`): the chosen token's and the top-n alternatives, most likely first.
//!
//! Must not know: penalties or truncation. A user asking "how sure was the model" wants the
//! model's answer, not the answer after our sampling knobs.

/// `ln Σ exp(l)` computed stably; -inf for an all -inf row.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    // f32 exp (each term is in [0, 1]) summed in f64.
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    max + sum.ln() as f32
}

/// The `n` largest entries as `(id, logprob)`, descending, lower id first on ties.
///
/// One pass with a sorted buffer of n ≤ 20: almost every entry is rejected by a single compare
/// with the buffer's smallest, so this costs about one read of the row.
pub fn top_logprobs(logits: &[f32], lse: f32, n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &l) in logits.iter().enumerate() {
        if top.len() == n && top.last().is_some_and(|&(_, worst)| l <= worst) {
            continue;
        }
        // First position holding a smaller value; equal values keep the earlier (lower) id first.
        let pos = top.partition_point(|&(_, v)| v >= l);
        top.insert(pos, (i as u32, l));
        top.truncate(n);
    }
    top.into_iter().map(|(i, l)| (i, l - lse)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_matches_hand_computation() {
        // ln(e^0 + e^ln3) = ln 4.
        let lse = log_sum_exp(&[0.0, 3.0f32.ln()]);
        assert!((lse - 4.0f32.ln()).abs() < 1e-6);
        // Stable for huge logits: ln(2 e^1000) = 1000 + ln 2.
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2.0f32.ln())).abs() < 1e-3);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY]), f32::NEG_INFINITY);
    }

    #[test]
    fn top_logprobs_are_sorted_descending_with_ties_by_lower_id() {
        let l: Vec<f32> = [1.0f32, 4.0, 2.0, 4.0, 3.0]
            .iter()
            .map(|x| x.ln())
            .collect();
        let lse = log_sum_exp(&l); // ln 14
        let top = top_logprobs(&l, lse, 3);
        let ids: Vec<u32> = top.iter().map(|&(i, _)| i).collect();
        assert_eq!(ids, vec![1, 3, 4]);
        assert!((top[0].1 - (4.0f32 / 14.0).ln()).abs() < 1e-6);
        assert!((top[2].1 - (3.0f32 / 14.0).ln()).abs() < 1e-6);
        assert!(top_logprobs(&l, lse, 0).is_empty());
        assert_eq!(top_logprobs(&l, lse, 10).len(), 5);
    }
}
