//! The random source of the task generators: SplitMix64, written out here so that a seed names
//! the same prompts on every platform and in every future build (a library RNG may change its
//! stream between versions), and a per-sample seed derived from what identifies the sample.
//!
//! Must not know: tasks, tokens or prompts.

/// SplitMix64 (Steele, Lea and Flood 2014): one 64-bit state, a Weyl increment and a mixer.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 output function: a bijective avalanche of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// Uniform in `0..n` (`n` > 0), without modulo bias (rejection of the short last lap).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no values");
        let limit = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < limit {
                return x % n;
            }
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A seed for one thing identified by `parts` (task, context length, depth, sample index…)
/// under the user's `seed`: each part is folded in through the mixer, so changing any of them
/// gives an unrelated stream, and adding a depth or a context length to a run leaves every
/// other sample's prompt unchanged.
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(seed ^ GOLDEN_GAMMA), |acc, &p| mix(acc.wrapping_add(GOLDEN_GAMMA) ^ mix(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_splitmix64() {
        // Reference values of SplitMix64 seeded with 0 (the C reference by Vigna).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn bounded_draws_stay_in_range_and_cover_it() {
        let mut r = SplitMix64::new(7);
        let mut seen = [false; 6];
        for _ in 0..600 {
            let v = r.between(10, 15);
            assert!((10..=15).contains(&v));
            seen[(v - 10) as usize] = true;
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
        assert_eq!(r.between(3, 3), 3);
    }

    #[test]
    fn derived_seeds_depend_on_every_part_and_its_order() {
        let base = derive_seed(1, &[2, 3]);
        assert_eq!(base, derive_seed(1, &[2, 3]));
        assert_ne!(base, derive_seed(0, &[2, 3]));
        assert_ne!(base, derive_seed(1, &[3, 2]));
        assert_ne!(base, derive_seed(1, &[2, 4]));
        assert_ne!(base, derive_seed(1, &[2, 3, 0]));
    }
}
