//! Conservative admission (TGI-like): reserve every request's maximum footprint.
//!
//! Owns: the test "Σ over running and admitted requests of their final footprint if each runs to
//! `max_output_tokens` stays under (1 − reserve) of the pool". Footprints are counted in tokens,
//! padded by `block_size − 1` per request so the sum bounds blocks (see `peak.rs`). Must not
//! know: history or sampling. Such a batch can never run out of blocks, so it never preempts
//! (unless the engine shares the pool with something the view does not show).

use crate::peak::Demand;
use crate::policy::{AdmissionRound, Capacity, Occupant, Policy};
use crate::view::FinishKind;

pub struct Conservative {
    reserve: f64,
}

impl Conservative {
    pub fn new(reserve: f64) -> Self {
        Self { reserve }
    }
}

/// The padded worst-case footprint of one request.
pub fn reserved_tokens(o: &Occupant, block_size: usize) -> usize {
    let worst: Demand = o.demand(o.max_output_tokens.max(o.output_tokens));
    worst.padded_to_blocks(block_size).final_tokens()
}

struct Round {
    reserved: usize,
    limit: usize,
    block_size: usize,
}

impl Policy for Conservative {
    fn name(&self) -> &'static str {
        "conservative"
    }

    fn start_round<'a>(&'a mut self, running: &[Occupant], capacity: Capacity)
        -> Box<dyn AdmissionRound + 'a> {
        let bs = capacity.block_size;
        Box::new(Round {
            reserved: running.iter().map(|o| reserved_tokens(o, bs)).sum(),
            limit: capacity.usable_tokens(self.reserve),
            block_size: bs,
        })
    }

    fn on_request_finished(&mut self, _output_len: usize, _reason: FinishKind) {}
}

impl AdmissionRound for Round {
    fn try_admit(&mut self, candidate: &Occupant, _used_blocks_after: usize) -> bool {
        let total = self.reserved + reserved_tokens(candidate, self.block_size);
        if total <= self.limit {
            self.reserved = total;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(prompt: usize, max_out: usize) -> Occupant {
        Occupant { id: 0, prompt_len: prompt, held_tokens: prompt, output_tokens: 0, max_output_tokens: max_out, kv_token_cap: None }
    }

    #[test]
    fn conservative_reserves_prompt_plus_max_tokens_padded_to_blocks() {
        // prompt 10 + 20 outputs − 1 = 29 KV tokens, + 15 padding = 44 (≥ 2 blocks·16 = 32).
        assert_eq!(reserved_tokens(&occ(10, 20), 16), 44);
        let capped = Occupant { kv_token_cap: Some(16), ..occ(10, 20) };
        assert_eq!(reserved_tokens(&capped, 16), 31);
    }

    #[test]
    fn conservative_stops_once_reservations_fill_the_usable_capacity() {
        let mut p = Conservative::new(0.0);
        let cap = Capacity { total_blocks: 10, block_size: 16 }; // 160 tokens
        let mut r = p.start_round(&[occ(10, 20)], cap); // 44 reserved
        assert!(r.try_admit(&occ(10, 20), 0)); // 88
        assert!(r.try_admit(&occ(10, 20), 0)); // 132
        assert!(!r.try_admit(&occ(10, 20), 0)); // 176 > 160
        assert!(r.try_admit(&occ(1, 2), 0), "a smaller one still fits: 132 + 17 ≤ 160");
    }
}
