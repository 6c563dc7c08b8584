//! "Future": the peak KV footprint of a set of requests whose remaining lengths are known.
//!
//! Owns: the peak formula and the token→block padding the admission tests use. Must not know
//! where the remaining lengths come from (sampled, maximal or exact).
//!
//! Every live request writes one KV token per step; request i holds `a_i` tokens now, writes
//! `b_i` more, and never holds more than `cap_i` (an eviction budget). At time t the footprint is
//! `Σ_{i: b_i ≥ t} min(a_i + t, cap_i)`. Between two completions that sum is concave and
//! non-decreasing in t (a sum of such terms), so the maximum is reached just before some request
//! finishes: with the b's sorted descending,
//!
//! ```text
//! Peak = max_j Σ_{i ≤ j} min(a_i + b_j, cap_i)      (= max_j cumsum(a)_j + j·b_j without caps)
//! ```
//!
//! Cap-hit times need no separate evaluation: a cap only flattens a term, it never makes the sum
//! decrease inside an interval.

use std::collections::BinaryHeap;

/// One request's KV demand in tokens: held now, still to write, and an optional ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub held: usize,
    pub remaining: usize,
    pub cap: Option<usize>,
}

impl Demand {
    pub fn new(held: usize, remaining: usize, cap: Option<usize>) -> Self {
        Self { held, remaining, cap }
    }

    /// The same demand padded so that a token peak bounds the block peak: a request holding t
    /// tokens uses `ceil(t/bs) ≤ (t + bs − 1)/bs` blocks, so adding `bs − 1` to `held` (and to
    /// the cap) for every request makes `Peak_tokens / bs` an upper bound on the blocks in use
    /// at any future step. Costs at most one block per request, which is the price of counting
    /// in tokens (as the paper does) while allocating blocks.
    pub fn padded_to_blocks(self, block_size: usize) -> Self {
        let pad = block_size.saturating_sub(1);
        Self { held: self.held + pad, remaining: self.remaining, cap: self.cap.map(|c| c + pad) }
    }

    /// Tokens held when the request has written everything (its own peak).
    pub fn final_tokens(&self) -> usize {
        let t = self.held + self.remaining;
        self.cap.map_or(t, |c| t.min(c))
    }
}

/// Peak future footprint in tokens. Sorts `items` in place (by remaining, descending); O(n log n).
pub fn peak_tokens(items: &mut [Demand]) -> usize {
    items.sort_unstable_by(|x, y| y.remaining.cmp(&x.remaining));
    // Request i is "flat" (at its cap) at time t iff its headroom cap_i − a_i ≤ t. As j grows,
    // t = b_j shrinks, so requests only ever move from flat to growing: a max-heap on headroom
    // lets each move happen once.
    let mut flat: BinaryHeap<(usize, usize)> = BinaryHeap::new(); // (headroom, index)
    let (mut sum_flat, mut sum_growing, mut n_growing) = (0usize, 0usize, 0usize);
    let mut peak = 0usize;
    for j in 0..items.len() {
        let t = items[j].remaining;
        while let Some(&(headroom, i)) = flat.peek() {
            if headroom <= t {
                break;
            }
            flat.pop();
            let cap = items[i].cap.unwrap_or(usize::MAX);
            sum_flat -= cap;
            sum_growing += items[i].held;
            n_growing += 1;
        }
        let d = items[j];
        match d.cap {
            Some(cap) if cap.saturating_sub(d.held) <= t => {
                sum_flat += cap;
                flat.push((cap.saturating_sub(d.held), j));
            }
            _ => {
                sum_growing += d.held;
                n_growing += 1;
            }
        }
        peak = peak.max(sum_flat + sum_growing + n_growing * t);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// The definition, one step at a time.
    fn brute_force_peak(items: &[Demand]) -> usize {
        let horizon = items.iter().map(|d| d.remaining).max().unwrap_or(0);
        (0..=horizon)
            .map(|t| {
                items
                    .iter()
                    .filter(|d| d.remaining >= t)
                    .map(|d| d.cap.map_or(d.held + t, |c| (d.held + t).min(c)))
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0)
    }

    fn random_set(rng: &mut StdRng, with_caps: bool) -> Vec<Demand> {
        let n = rng.random_range(0..12);
        (0..n)
            .map(|_| {
                let held = rng.random_range(0..60);
                let remaining = rng.random_range(0..60);
                let cap = (with_caps && rng.random_bool(0.5)).then(|| rng.random_range(1..100));
                Demand::new(held, remaining, cap)
            })
            .collect()
    }

    #[test]
    fn peak_formula_equals_step_by_step_simulation_without_caps() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..5000 {
            let mut set = random_set(&mut rng, false);
            let expect = brute_force_peak(&set);
            assert_eq!(peak_tokens(&mut set), expect, "{set:?}");
        }
    }

    #[test]
    fn peak_formula_equals_step_by_step_simulation_with_caps() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..5000 {
            let mut set = random_set(&mut rng, true);
            let expect = brute_force_peak(&set);
            assert_eq!(peak_tokens(&mut set), expect, "{set:?}");
        }
    }

    #[test]
    fn paper_example_peak_is_reached_before_a_completion() {
        // Two requests: (10 held, 5 to go) and (2 held, 20 to go). At t=5: 15 + 7 = 22;
        // at t=20 only the second lives: 22. Both are the max; the first alone never exceeds.
        let mut set = vec![Demand::new(10, 5, None), Demand::new(2, 20, None)];
        assert_eq!(peak_tokens(&mut set), 22);
        let mut set = vec![Demand::new(10, 5, None), Demand::new(2, 30, None)];
        assert_eq!(peak_tokens(&mut set), 32);
    }

    #[test]
    fn padded_token_peak_bounds_the_block_peak() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..2000 {
            let bs = rng.random_range(1..20);
            let set = random_set(&mut rng, true);
            let horizon = set.iter().map(|d| d.remaining).max().unwrap_or(0);
            let block_peak = (0..=horizon)
                .map(|t| {
                    set.iter()
                        .filter(|d| d.remaining >= t)
                        .map(|d| d.cap.map_or(d.held + t, |c| (d.held + t).min(c)).div_ceil(bs))
                        .sum::<usize>()
                })
                .max()
                .unwrap_or(0);
            let mut padded: Vec<Demand> = set.iter().map(|d| d.padded_to_blocks(bs)).collect();
            assert!(block_peak * bs <= peak_tokens(&mut padded), "bs={bs} {set:?}");
        }
    }
}
