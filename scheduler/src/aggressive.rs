//! Aggressive admission (vLLM-like): look at current usage only.
//!
//! Owns: the test "blocks in use after admitting stay under (1 − reserve) of the pool". Future
//! growth is ignored; when it arrives, the step logic preempts the newest request by recompute.
//! Must not know: output lengths or history. `reserve = 0` gives vLLM v1's behaviour (admit
//! while blocks last); the default 5% follows the paper's aggressive baseline.

use crate::policy::{AdmissionRound, Capacity, Occupant, Policy};
use crate::view::FinishKind;

pub struct Aggressive {
    reserve: f64,
}

impl Aggressive {
    pub fn new(reserve: f64) -> Self {
        Self { reserve }
    }
}

struct Round {
    limit_blocks: usize,
}

impl Policy for Aggressive {
    fn name(&self) -> &'static str {
        "aggressive"
    }

    fn start_round<'a>(&'a mut self, _running: &[Occupant], capacity: Capacity)
        -> Box<dyn AdmissionRound + 'a> {
        let limit_blocks = ((1.0 - self.reserve) * capacity.total_blocks as f64).floor() as usize;
        Box::new(Round { limit_blocks })
    }

    fn on_request_finished(&mut self, _output_len: usize, _reason: FinishKind) {}
}

impl AdmissionRound for Round {
    fn try_admit(&mut self, _candidate: &Occupant, used_blocks_after: usize) -> bool {
        used_blocks_after <= self.limit_blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggressive_admits_until_current_usage_reaches_the_reserve() {
        let mut p = Aggressive::new(0.1);
        let cand = Occupant { id: 1, prompt_len: 10, held_tokens: 10, output_tokens: 0, max_output_tokens: 1_000_000, kv_token_cap: None };
        let mut r = p.start_round(&[], Capacity { total_blocks: 100, block_size: 16 });
        assert!(r.try_admit(&cand, 90), "a huge max_tokens must not matter");
        assert!(!r.try_admit(&cand, 91));
    }
}
