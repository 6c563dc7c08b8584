//! `SamplerState`: what one sequence carries between sampling steps — its own random generator
//! and the token statistics the penalties need.
//!
//! Must not know: batches. A sequence's draws depend only on its seed and its own history, so
//! the same seed gives the same tokens whatever else is in the batch.

use super::params::SamplingParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone)]
pub struct SamplerState {
    rng: StdRng,
    /// Occurrences of each token in the output, kept in sync with the `output_ids` passed in.
    output_counts: HashMap<u32, u32>,
    counted_outputs: usize,
    /// Distinct prompt tokens, built on first use by the repetition penalty.
    prompt_tokens: Option<(usize, HashSet<u32>)>,
    /// Tokens masked while fewer than `min_tokens` are generated: stop tokens, plus EOS unless
    /// `ignore_eos` (an ignored EOS does not end generation, so it needs no mask).
    min_tokens_masked: Vec<u32>,
}

impl SamplerState {
    pub fn new(params: &SamplingParams, eos_token_ids: &[u32]) -> SamplerState {
        SamplerState::for_child(params, eos_token_ids, 0)
    }

    /// State of completion `index` of a request with `n > 1`: a seeded request gives each
    /// completion the seed `seed + index` (as vLLM), so completions differ yet stay reproducible.
    pub fn for_child(params: &SamplingParams, eos_token_ids: &[u32], index: u64) -> SamplerState {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed.wrapping_add(index)),
            None => StdRng::from_os_rng(),
        };
        let mut min_tokens_masked = params.stop_token_ids.clone();
        if !params.ignore_eos {
            min_tokens_masked.extend_from_slice(eos_token_ids);
        }
        SamplerState {
            rng,
            output_counts: HashMap::new(),
            counted_outputs: 0,
            prompt_tokens: None,
            min_tokens_masked,
        }
    }

    /// A uniform draw in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// Brings the output counts up to date with `output_ids`, counting only what is new.
    pub(crate) fn sync_outputs(&mut self, output_ids: &[u32]) {
        if output_ids.len() < self.counted_outputs {
            // A different (shorter) history than last time: recount rather than trust stale data.
            self.output_counts.clear();
            self.counted_outputs = 0;
        }
        for &t in &output_ids[self.counted_outputs..] {
            *self.output_counts.entry(t).or_insert(0) += 1;
        }
        self.counted_outputs = output_ids.len();
    }

    pub(crate) fn output_counts(&self) -> &HashMap<u32, u32> {
        &self.output_counts
    }

    /// Calls `f` once for each distinct token of prompt ∪ output (for the repetition penalty).
    /// Call `sync_outputs` first.
    pub(crate) fn for_each_seen(&mut self, prompt_ids: &[u32], mut f: impl FnMut(u32)) {
        let stale = self
            .prompt_tokens
            .as_ref()
            .is_none_or(|(len, _)| *len != prompt_ids.len());
        if stale {
            self.prompt_tokens = Some((prompt_ids.len(), prompt_ids.iter().copied().collect()));
        }
        let Some((_, prompt)) = &self.prompt_tokens else {
            return;
        };
        prompt.iter().for_each(|&t| f(t));
        self.output_counts
            .keys()
            .filter(|t| !prompt.contains(t))
            .for_each(|&t| f(t));
    }

    pub(crate) fn min_tokens_masked(&self) -> &[u32] {
        &self.min_tokens_masked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_draws_and_children_differ() {
        let p = SamplingParams {
            seed: Some(7),
            ..SamplingParams::default()
        };
        let mut a = SamplerState::new(&p, &[]);
        let mut b = SamplerState::new(&p, &[]);
        let mut c = SamplerState::for_child(&p, &[], 1);
        let (da, db, dc): (Vec<f64>, Vec<f64>, Vec<f64>) = (
            (0..5).map(|_| a.uniform()).collect(),
            (0..5).map(|_| b.uniform()).collect(),
            (0..5).map(|_| c.uniform()).collect(),
        );
        assert_eq!(da, db);
        assert_ne!(da, dc);
    }

    #[test]
    fn output_counts_follow_the_history_incrementally_and_on_rewind() {
        let mut s = SamplerState::new(&SamplingParams::default(), &[]);
        s.sync_outputs(&[3, 3]);
        s.sync_outputs(&[3, 3, 5]);
        assert_eq!(s.output_counts().get(&3), Some(&2));
        assert_eq!(s.output_counts().get(&5), Some(&1));
        s.sync_outputs(&[5]);
        assert_eq!(s.output_counts().get(&3), None);
        assert_eq!(s.output_counts().get(&5), Some(&1));
    }

    #[test]
    fn eos_is_masked_for_min_tokens_unless_ignored() {
        let p = SamplingParams {
            stop_token_ids: vec![9],
            ..SamplingParams::default()
        };
        assert_eq!(SamplerState::new(&p, &[2]).min_tokens_masked(), &[9, 2]);
        let ignore = SamplingParams {
            ignore_eos: true,
            ..p
        };
        assert_eq!(SamplerState::new(&ignore, &[2]).min_tokens_masked(), &[9]);
    }
}
