//! What `eval kv` measures at each scored position, from two next-token distributions (the full
//! cache's and a policy's): the policy's negative log-likelihood of the true next token,
//! KL(full ‖ policy), and whether both put the same token first — and their running means.
//!
//! Must not know: engines, windows or files; rows in, numbers out.

/// `log softmax(logits)`, in f64 (KL sums tens of thousands of small terms).
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// KL(p ‖ q) = Σ p·(log p − log q) for log-distributions over the same vocabulary.
pub fn kl(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p.iter().zip(log_q).map(|(&lp, &lq)| if lp == f64::NEG_INFINITY { 0.0 } else { lp.exp() * (lp - lq) }).sum::<f64>().max(0.0)
}

/// Index of the largest entry, lowest index on ties.
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Running sums over scored positions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    pub positions: usize,
    pub nll: f64,
    /// The full cache's NLL at the same positions (so each row compares like with like).
    pub nll_full: f64,
    pub kl: f64,
    pub top1_agree: usize,
}

impl Tally {
    /// Adds one position: `full` and `policy` are log-distributions, `next` the true next token.
    pub fn add(&mut self, full: &[f64], policy: &[f64], next: u32) {
        self.add_observed(-policy[next as usize], -full[next as usize], argmax(full) == argmax(policy));
        self.kl += kl(full, policy);
    }

    /// Adds one position known only by its NLLs and whether the top tokens agree (a server's
    /// logprobs: no whole distribution, so no KL).
    pub fn add_observed(&mut self, nll: f64, nll_full: f64, top1_agrees: bool) {
        self.positions += 1;
        self.nll += nll;
        self.nll_full += nll_full;
        self.top1_agree += usize::from(top1_agrees);
    }

    pub fn mean_kl(&self) -> f64 {
        self.kl / self.positions.max(1) as f64
    }

    pub fn ppl(&self) -> f64 {
        (self.nll / self.positions.max(1) as f64).exp()
    }

    pub fn ppl_full(&self) -> f64 {
        (self.nll_full / self.positions.max(1) as f64).exp()
    }

    pub fn top1_agreement(&self) -> f64 {
        self.top1_agree as f64 / self.positions.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_and_nll_match_hand_computation() {
        // p = (1/2, 1/4, 1/4), q = (1/4, 1/4, 1/2): KL = 1/2 ln 2 + 0 + 1/4 ln(1/2) = ln2 / 4.
        let p = log_softmax(&[2f32.ln(), 0.0, 0.0]);
        let q = log_softmax(&[0.0, 0.0, 2f32.ln()]);
        assert!((kl(&p, &q) - 2f64.ln() / 4.0).abs() < 1e-7);
        assert_eq!(kl(&p, &p), 0.0);
        let mut t = Tally::default();
        t.add(&p, &q, 2);
        t.add(&p, &p, 0);
        assert_eq!(t.positions, 2);
        // NLL: −ln(1/2) twice under q at token 2 and p at token 0.
        assert!((t.nll - 2.0 * 2f64.ln()).abs() < 1e-7);
        assert!((t.nll_full - (4f64.ln() + 2f64.ln())).abs() < 1e-7);
        assert!((t.ppl() - 2.0).abs() < 1e-7);
        assert_eq!(t.top1_agree, 1, "argmax 0 vs 2 disagree, then agree");
        assert!((t.mean_kl() - 2f64.ln() / 8.0).abs() < 1e-7);
    }

    #[test]
    fn log_softmax_is_stable_and_normalised() {
        let l = log_softmax(&[1000.0, 1000.0, f32::NEG_INFINITY]);
        assert!((l[0] - 0.5f64.ln()).abs() < 1e-9);
        assert_eq!(l[2], f64::NEG_INFINITY);
        assert_eq!(argmax(&[0.1, 0.3, 0.3]), 1);
    }
}
