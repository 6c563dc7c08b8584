//! Choosing the token from adjusted logits: greedy argmax, or temperature → min-p → top-k →
//! top-p truncation followed by one draw from the renormalised kept set.
//!
//! Must not know: penalties or logprobs (those see other versions of the logits).
//!
//! Cost on a large vocabulary: min-p and top-k work on logits (a compare, then
//! `select_nth_unstable`, O(V)), so `exp` runs only on the survivors; top-p is a weighted
//! quickselect (O(n) expected), never a full sort. Ties are broken towards the lower token id
//! everywhere, and the draw walks the kept tokens in id order, so results never depend on
//! sort or selection internals.

/// Truncation settings, already validated.
#[derive(Debug, Clone, Copy)]
pub struct Truncation {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
}

/// Index of the largest logit, lowest id on ties; None if the row has no value above -inf.
/// NaN never wins (callers reject NaN rows before).
pub fn argmax(logits: &[f32]) -> Option<u32> {
    // A plain strict `>` scan: the first maximum (lowest id) wins, and the loop stays tight.
    let (mut best_id, mut best) = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best {
            best = l;
            best_id = i;
        }
    }
    (best > f32::NEG_INFINITY).then_some(best_id as u32)
}

/// A token still in the running: `key` orders it, `weight = exp((l - max) / T)` draws it.
#[derive(Debug, Clone, Copy)]
struct Cand {
    key: u64,
    weight: f32,
}

/// Sort key for descending logit, ascending id on ties: a total order, so truncation never
/// depends on how a selection algorithm arranges equal values. Packing it into one integer
/// makes every comparison in select/sort a single branch-free compare (3-5x faster than a
/// float comparator on a 49k vocabulary).
fn desc_key(logit: f32, id: u32) -> u64 {
    // IEEE-754 bits made monotone as unsigned integers, then inverted for descending order.
    let bits = logit.to_bits();
    let ascending = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    (u64::from(!ascending) << 32) | u64::from(id)
}

impl Cand {
    fn id(&self) -> u32 {
        self.key as u32
    }
}

/// Draws one token with `uniform` ∈ [0, 1). `max` is the row's (finite) maximum logit.
pub fn sample_truncated(logits: &[f32], max: f32, t: Truncation, uniform: f64) -> Option<u32> {
    let inv_t = 1.0 / t.temperature;
    // Weights are relative to the max, so they lie in [0, 1]: f32 is ample for a draw, and the
    // sums are taken in f64.
    let weight = |l: f32| ((l - max) * inv_t).exp();
    let top_k_active = t.top_k > 0 && t.top_k < logits.len();
    if !top_k_active && t.top_p >= 1.0 && t.min_p <= 0.0 {
        // Untruncated: one exp pass for the total, then walk the vocabulary in id order,
        // computing weights only up to the drawn token.
        let total: f64 = logits.iter().map(|&l| weight(l) as f64).sum();
        let items = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, weight(l) as f64));
        return walk(items, total, uniform);
    }
    // min-p in logit space (no exp needed): p_i >= min_p * p_max <=> l_i >= max + T ln(min_p).
    let floor = if t.min_p > 0.0 {
        max + t.min_p.ln() * t.temperature
    } else {
        f32::NEG_INFINITY
    };
    let mut cands: Vec<Cand> = Vec::with_capacity(logits.len());
    for (i, &l) in logits.iter().enumerate() {
        if l > f32::NEG_INFINITY && l >= floor {
            cands.push(Cand {
                key: desc_key(l, i as u32),
                weight: l,
            });
        }
    }
    if top_k_active && cands.len() > t.top_k {
        cands.select_nth_unstable_by_key(t.top_k - 1, |c| c.key);
        cands.truncate(t.top_k);
    }
    // `weight` held the logit until here, so exp runs only on the survivors.
    for c in &mut cands {
        c.weight = weight(c.weight);
    }
    if t.top_p < 1.0 {
        let kept = nucleus(&mut cands, t.top_p as f64);
        cands.truncate(kept);
    }
    // Draw in id order, whatever order selection left the candidates in: the same seed then
    // picks the same token on every platform and library version.
    cands.sort_unstable_by_key(|c| c.id());
    let total: f64 = cands.iter().map(|c| c.weight as f64).sum();
    walk(
        cands.iter().map(|c| (c.id(), c.weight as f64)),
        total,
        uniform,
    )
}

/// Drops tokens that cannot be in the nucleus, moves the nucleus to the front of `cands` and
/// returns its size: the smallest r such that the
/// r most likely tokens hold at least `top_p` of the mass (vLLM keeps a token unless the mass of
/// all less likely ones is at most 1 - top_p; the same set). Always at least one token.
///
/// Then a weighted quickselect: halve the range holding the boundary rank until it is small,
/// then sort only that. O(n) expected, with no full sort even for flat distributions.
fn nucleus(cands: &mut Vec<Cand>, top_p: f64) -> usize {
    let total: f64 = cands.iter().map(|c| c.weight as f64).sum();
    let target = top_p * total;
    // Exact pre-filter: a token lighter than (1 - top_p) · total / n is never in the nucleus.
    // (If the last kept token weighed w, everything from it down holds more than
    // (1 - top_p) · total, yet is at most n tokens of weight <= w.) For the peaked
    // distributions language models produce this leaves a handful of tokens; the small margin
    // absorbs rounding.
    let floor = (1.0 - top_p) * total / cands.len() as f64 * (1.0 - 1e-4);
    cands.retain(|c| c.weight as f64 >= floor);
    // Invariant: cands[..lo] are the lo most likely (mass `before` < target), and the boundary
    // rank r satisfies lo < r <= hi.
    let (mut lo, mut hi) = (0, cands.len());
    let mut before = 0.0;
    while hi - lo > 32 {
        let mid = lo + (hi - lo) / 2;
        cands[lo..hi].select_nth_unstable_by_key(mid - lo, |c| c.key);
        let mass: f64 = cands[lo..mid].iter().map(|c| c.weight as f64).sum();
        if before + mass >= target {
            hi = mid;
        } else {
            before += mass;
            lo = mid;
        }
    }
    cands[lo..hi].sort_unstable_by_key(|c| c.key);
    for (i, c) in cands.iter().enumerate().take(hi).skip(lo) {
        if i > 0 && before >= target {
            return i;
        }
        before += c.weight as f64;
    }
    hi
}

/// Inverse-CDF draw over `(id, weight)` in the given order.
fn walk(items: impl Iterator<Item = (u32, f64)>, total: f64, uniform: f64) -> Option<u32> {
    let target = uniform * total;
    let mut acc = 0.0;
    let mut last = None;
    for (id, w) in items {
        if w <= 0.0 {
            continue;
        }
        acc += w;
        last = Some(id);
        if acc > target {
            return Some(id);
        }
    }
    // Rounding can leave `target` a hair above the sum: the last positive item owns that edge.
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunc(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> Truncation {
        Truncation {
            temperature,
            top_k,
            top_p,
            min_p,
        }
    }

    fn max(l: &[f32]) -> f32 {
        l.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    /// The token chosen by each of `n` evenly spaced draws, as counts per token.
    fn histogram(l: &[f32], t: Truncation, n: usize) -> Vec<usize> {
        let mut h = vec![0; l.len()];
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64;
            h[sample_truncated(l, max(l), t, u).expect("a token") as usize] += 1;
        }
        h
    }

    #[test]
    fn argmax_breaks_ties_towards_lowest_id_and_skips_neg_inf() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), None);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0]), Some(1));
    }

    #[test]
    fn untruncated_draw_follows_softmax_probabilities() {
        // ln(1), ln(2), ln(3), ln(4): probabilities 0.1, 0.2, 0.3, 0.4 at temperature 1.
        let l: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        assert_eq!(
            histogram(&l, trunc(1.0, 0, 1.0, 0.0), 1000),
            vec![100, 200, 300, 400]
        );
    }

    #[test]
    fn temperature_divides_logits() {
        // Logits ln(1), ln(4) at T = 2 become ln(1), ln(2): probabilities 1/3, 2/3.
        let l = [0.0f32, 4.0f32.ln()];
        assert_eq!(histogram(&l, trunc(2.0, 0, 1.0, 0.0), 300), vec![100, 200]);
    }

    #[test]
    fn top_k_keeps_only_the_k_most_likely_and_renormalises() {
        // Probabilities 0.1..0.4; top_k = 2 keeps 0.3 and 0.4 -> 3/7 and 4/7.
        let l: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        assert_eq!(
            histogram(&l, trunc(1.0, 2, 1.0, 0.0), 700),
            vec![0, 0, 300, 400]
        );
    }

    #[test]
    fn top_p_keeps_the_smallest_head_reaching_the_mass() {
        // Probabilities 0.1..0.4 sorted: 0.4, 0.3 (sum 0.7), 0.2 (0.9). top_p 0.65 keeps two;
        // top_p 0.75 keeps three (0.7 < 0.75): 2/9, 3/9, 4/9.
        let l: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        assert_eq!(
            histogram(&l, trunc(1.0, 0, 0.65, 0.0), 700),
            vec![0, 0, 300, 400]
        );
        assert_eq!(
            histogram(&l, trunc(1.0, 0, 0.75, 0.0), 900),
            vec![0, 200, 300, 400]
        );
    }

    #[test]
    fn top_p_always_keeps_the_most_likely_token() {
        let l = [0.0f32, 10.0, 0.0];
        assert_eq!(histogram(&l, trunc(1.0, 0, 0.01, 0.0), 50), vec![0, 50, 0]);
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_top_probability() {
        // Probabilities 0.1..0.4; min_p 0.6 keeps p >= 0.24: 0.3 and 0.4.
        let l: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        assert_eq!(
            histogram(&l, trunc(1.0, 0, 1.0, 0.6), 700),
            vec![0, 0, 300, 400]
        );
    }

    #[test]
    fn top_p_is_applied_after_top_k_on_the_renormalised_set() {
        // top_k 3 keeps 0.2, 0.3, 0.4 -> 2/9, 3/9, 4/9; top_p 0.5 then keeps 4/9 + 3/9.
        let l: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        assert_eq!(
            histogram(&l, trunc(1.0, 3, 0.5, 0.0), 700),
            vec![0, 0, 300, 400]
        );
    }

    #[test]
    fn top_p_on_a_flat_large_vocabulary_widens_its_head() {
        // 2000 equal logits: top_p 0.5 must keep the 1000 lowest ids (ties -> lower id first).
        let l = vec![0.0f32; 2000];
        let h = histogram(&l, trunc(1.0, 0, 0.5, 0.0), 4000);
        assert!(
            h[..1000].iter().all(|&c| c == 4),
            "kept head sampled evenly"
        );
        assert!(h[1000..].iter().all(|&c| c == 0), "tail never sampled");
    }

    #[test]
    fn desc_key_orders_by_logit_descending_then_id_ascending() {
        let vals = [
            3.5f32,
            -0.0,
            0.0,
            -2.0,
            f32::NEG_INFINITY,
            1e-30,
            -1e-30,
            100.0,
        ];
        let mut by_key: Vec<(f32, u32)> = vals
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, i as u32))
            .collect();
        by_key.sort_by_key(|&(l, i)| desc_key(l, i));
        let mut by_float = by_key.clone();
        by_float.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(by_key, by_float);
        assert!(
            desc_key(1.0, 5) < desc_key(1.0, 6),
            "ties go to the lower id"
        );
    }

    #[test]
    fn nucleus_matches_a_full_sort_reference() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for case in 0..300 {
            let n = rng.random_range(1..3000);
            // Flat, spread and sharply peaked rows, with many exact ties.
            let spread = [0.0f32, 1.0, 5.0, 30.0][case % 4];
            let logits: Vec<f32> = (0..n)
                .map(|_| (rng.random_range(-1.0f32..1.0) * spread * 4.0).round() / 4.0)
                .collect();
            let top_p = rng.random_range(0.01f32..1.0) as f64;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut cands: Vec<Cand> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| Cand {
                    key: desc_key(l, i as u32),
                    weight: (l - max).exp(),
                })
                .collect();
            let mut reference = cands.clone();
            reference.sort_by_key(|c| c.key);
            let total: f64 = reference.iter().map(|c| c.weight as f64).sum();
            let mut before = 0.0;
            let mut want: Vec<u32> = Vec::new();
            for c in &reference {
                if !want.is_empty() && before >= top_p * total {
                    break;
                }
                before += c.weight as f64;
                want.push(c.id());
            }
            let kept = nucleus(&mut cands, top_p);
            let mut got: Vec<u32> = cands[..kept].iter().map(Cand::id).collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(
                got, want,
                "case {case}: n {n}, spread {spread}, top_p {top_p}"
            );
        }
    }

    #[test]
    fn neg_inf_tokens_are_never_drawn() {
        let l = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        assert_eq!(histogram(&l, trunc(1.0, 0, 1.0, 0.0), 10), vec![0, 10, 0]);
        assert_eq!(histogram(&l, trunc(1.0, 2, 0.9, 0.1), 10), vec![0, 10, 0]);
    }
}
