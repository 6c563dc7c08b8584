//! The admission-policy interface.
//!
//! Owns: [`Policy`] / [`AdmissionRound`] and the token-level picture of a request they see
//! ([`Occupant`]); which policy runs is chosen in `choice.rs`. Must not know: block tables, budgets or preemption — the shared step logic in
//! `step.rs` handles those for every policy alike. Policies differ only in whether they let the
//! next waiting request in.

use crate::peak::Demand;
use crate::view::FinishKind;

/// A request as an admission test sees it, in tokens, as it will be after this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupant {
    pub id: u64,
    pub prompt_len: usize,
    /// KV tokens it holds once this step's chunk is written (`a` in the paper).
    pub held_tokens: usize,
    /// Output tokens generated so far (`g`): its final length is known to exceed this.
    pub output_tokens: usize,
    /// The most output it may produce: `min(max_tokens, max_model_len − prompt_len)`.
    pub max_output_tokens: usize,
    pub kv_token_cap: Option<usize>,
}

impl Occupant {
    /// The demand if the request ends with `final_output` output tokens. The last sampled token
    /// is never fed back, so the KV it finally holds is `prompt + final_output − 1`.
    pub fn demand(&self, final_output: usize) -> Demand {
        let final_kv = (self.prompt_len + final_output).saturating_sub(1);
        Demand::new(self.held_tokens, final_kv.saturating_sub(self.held_tokens), self.kv_token_cap)
    }
}

/// Pool size as the admission tests need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total_blocks: usize,
    pub block_size: usize,
}

impl Capacity {
    pub fn total_tokens(&self) -> usize {
        self.total_blocks * self.block_size
    }
    /// `(1 − reserve) · capacity`, in tokens.
    pub fn usable_tokens(&self, reserve: f64) -> usize {
        ((1.0 - reserve) * self.total_tokens() as f64).floor() as usize
    }
}

/// An admission policy. One instance lives as long as the engine (it may learn across steps).
pub trait Policy: Send {
    fn name(&self) -> &'static str;

    /// Opens this step's admission round. `running` lists every request that stays running after
    /// this step's running phase (with this step's chunk counted in `held_tokens`).
    fn start_round<'a>(&'a mut self, running: &[Occupant], capacity: Capacity)
        -> Box<dyn AdmissionRound + 'a>;

    /// Feeds a finished request's output length back (past-future learns from it).
    fn on_request_finished(&mut self, output_len: usize, reason: FinishKind);
}

/// One step's admission test. Candidates arrive in FIFO order; an accepted candidate becomes
/// part of the picture the next candidate is tested against.
pub trait AdmissionRound {
    /// `used_blocks_after`: blocks in use in the pool after this step if the candidate is
    /// admitted (the physical fit has already been checked by the step logic).
    fn try_admit(&mut self, candidate: &Occupant, used_blocks_after: usize) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupant_demand_counts_kv_up_to_the_last_fed_token() {
        let o = Occupant {
            id: 1,
            prompt_len: 10,
            held_tokens: 12, // prompt + 2 outputs fed back
            output_tokens: 2,
            max_output_tokens: 8,
            kv_token_cap: None,
        };
        // Ending after 3 outputs: the 3rd is sampled this step and never fed: no more KV.
        assert_eq!(o.demand(3).remaining, 0);
        assert_eq!(o.demand(8).remaining, 5);
    }
}
