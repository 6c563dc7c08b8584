//! Activations quantized to 8 bits, each x row on its own (so a token's numbers never depend on
//! the rest of the batch), in the pair layout the int8 kernels read.
//!
//! Owns: the rounding of x. Per 32-element block b of a row: `d = max|x| / 127`,
//! `q = round(x · 127 / max|x|)` (ties to even), clamped to ±127. Per pair of blocks the row keeps
//! 64 integers and three 16-lane vectors that make the kernels' inner loop pure loads:
//!
//! ```text
//! d    [d_b ×8, d_b+1 ×8]                        block scales, one per 32-bit lane of the dot
//! sum  [Σx_b / 8 ×8, Σx_b+1 / 8 ×8]              exact f32 block sums / 8 (Q4_1's m term: 8 lanes add back Σx)
//! init [-offset · (q0+q1+q2+q3) per 4-byte lane]   starts the integer dot (weights stored as q + offset)
//! ```
//!
//! The Q4_1 offset `m` multiplies the f32 block sum of x, not the sum of its rounded values: the
//! rounding then only touches the `d·q` part of each weight.
//!
//! Must not know: weights, registers or threads.

use rayon::prelude::*;

/// Lanes of 32-bit sums in one pair of blocks.
pub const LANES: usize = 16;

/// `m` rows of x, `pairs` pairs of blocks each (a trailing odd block is padded with zeros).
#[derive(Debug, Default)]
pub struct Rows {
    /// `[row][pair][64]`.
    pub qs: Vec<i8>,
    /// `[row][pair][LANES]`.
    pub d: Vec<f32>,
    /// `[row][pair][LANES]`; empty unless asked for.
    pub sum: Vec<f32>,
    /// `[row][pair][LANES]`; empty when the offset is 0.
    pub init: Vec<i32>,
    pub pairs: usize,
}

impl Rows {
    /// Quantizes `m` rows of `k` values (k a multiple of 32). `offset` is what the kernel's
    /// stored weights exceed the true integers by (0, 8 or 128); `sums` whether to keep block sums.
    pub fn new(x: &[f32], m: usize, k: usize, offset: i32, sums: bool) -> Self {
        debug_assert!(k % 32 == 0 && x.len() == m * k);
        let pairs = (k / 32).div_ceil(2);
        let lanes = |on: bool| if on { m * pairs * LANES } else { 0 };
        let mut rows = Rows {
            qs: vec![0; m * pairs * 64],
            d: vec![0.0; m * pairs * LANES],
            sum: vec![0.0; lanes(sums)],
            init: vec![0; lanes(offset != 0)],
            pairs,
        };
        let one = |(r, (qs, d, sum, init)): (usize, RowParts<'_>)| row(&x[r * k..(r + 1) * k], offset, qs, d, sum, init);
        let per = pairs * LANES;
        let parts = rows
            .qs
            .chunks_mut(pairs * 64)
            .zip(rows.d.chunks_mut(per))
            .zip(chunks_or_empty(&mut rows.sum, per, m))
            .zip(chunks_or_empty(&mut rows.init, per, m))
            .map(|(((q, d), s), i)| (q, d, s, i))
            .enumerate();
        // Rows are independent; only a prefill has enough of them to be worth the threads.
        if m >= 16 {
            parts.collect::<Vec<_>>().into_par_iter().for_each(one);
        } else {
            parts.for_each(one);
        }
        rows
    }
}

type RowParts<'a> = (&'a mut [i8], &'a mut [f32], &'a mut [f32], &'a mut [i32]);

/// `m` chunks of `v`, or `m` empty slices when `v` is empty.
fn chunks_or_empty<T>(v: &mut [T], per: usize, m: usize) -> Box<dyn Iterator<Item = &mut [T]> + Send + '_>
where
    T: Send,
{
    if v.is_empty() {
        Box::new((0..m).map(|_| &mut [][..]))
    } else {
        Box::new(v.chunks_mut(per))
    }
}

fn row(x: &[f32], offset: i32, qs: &mut [i8], d: &mut [f32], sum: &mut [f32], init: &mut [i32]) {
    for (b, blk) in x.chunks_exact(32).enumerate() {
        let (p, half) = (b / 2, b % 2);
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let q = &mut qs[p * 64 + half * 32..p * 64 + half * 32 + 32];
        for (qi, &v) in q.iter_mut().zip(blk) {
            *qi = round_half_even(v * inv).clamp(-127.0, 127.0) as i8;
        }
        let lanes = p * LANES + half * 8..p * LANES + half * 8 + 8;
        d[lanes.clone()].fill(scale);
        if !sum.is_empty() {
            sum[lanes.clone()].fill(block_sum(blk) * 0.125);
        }
        if !init.is_empty() {
            for (l, slot) in init[lanes].iter_mut().enumerate() {
                *slot = -offset * q[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>();
            }
        }
    }
}

/// Round to nearest, ties to even, for |v| < 2^22: adding 1.5 · 2^23 leaves no fraction bits,
/// so the FPU's own rounding does the work. (`f32::round` is a libm call per value on a
/// baseline x86-64 build; this is two vector adds.)
#[inline]
fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Σ of one 32-value block in a fixed order: eight lanes over the four 8-wide chunks, then the
/// canonical reduction tree.
fn block_sum(blk: &[f32]) -> f32 {
    let mut v = [0f32; 8];
    for (l, s) in v.iter_mut().enumerate() {
        *s = ((blk[l] + blk[8 + l]) + blk[16 + l]) + blk[24 + l];
    }
    crate::matmul::reduce8(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_is_quantized_on_its_own_within_half_a_step() {
        let k = 96; // three blocks: a pair and a padded pair
        let x: Vec<f32> = (0..3 * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i / k) as f32).collect();
        let all = Rows::new(&x, 3, k, 8, true);
        let last = Rows::new(&x[2 * k..], 1, k, 8, true);
        assert_eq!(all.pairs, 2);
        assert_eq!(&all.qs[2 * 128..], &last.qs[..], "row 2 alone quantizes as in the batch");
        assert_eq!(&all.init[2 * 32..], &last.init[..]);
        for r in 0..3 {
            for e in 0..k {
                let (b, i) = (e / 32, e % 32);
                let lane = (r * 2 + b / 2) * LANES + (b % 2) * 8;
                let q = all.qs[(r * 2 + b / 2) * 64 + (b % 2) * 32 + i] as f32;
                let d = all.d[lane];
                assert!((q * d - x[r * k + e]).abs() <= d * 0.5 + 1e-6, "row {r} element {e}");
                assert!(q.abs() <= 127.0);
            }
            // The padding block: nothing quantized, no scale, no sum.
            let pad = (r * 2 + 1) * LANES + 8;
            assert_eq!((all.d[pad], all.sum[pad], all.init[pad]), (0.0, 0.0, 0));
            // Lane sums times -offset, and block sums / 8.
            let p0 = r * 2 * 64;
            let want: i32 = all.qs[p0..p0 + 4].iter().map(|&v| v as i32).sum();
            assert_eq!(all.init[r * 2 * LANES], -8 * want);
            let s: f32 = x[r * k..r * k + 32].iter().sum();
            assert!((all.sum[r * 2 * LANES] * 8.0 - s).abs() <= 1e-4 * (1.0 + s.abs()));
        }
        let bare = Rows::new(&x, 3, k, 0, false);
        assert!(bare.init.is_empty() && bare.sum.is_empty());
        assert_eq!(bare.qs, all.qs);
    }

    #[test]
    fn rounding_is_to_nearest_with_ties_to_even() {
        let cases = [(2.5, 2.0), (3.5, 4.0), (-2.5, -2.0), (-0.4, 0.0), (126.6, 127.0), (-127.0, -127.0), (0.5, 0.0)];
        for (v, want) in cases {
            assert_eq!(round_half_even(v), want, "{v}");
        }
    }

    #[test]
    fn a_zero_block_has_zero_scale_and_integers() {
        let rows = Rows::new(&[0.0; 64], 1, 64, 128, false);
        assert!(rows.qs.iter().all(|&q| q == 0) && rows.d.iter().all(|&d| d == 0.0));
        assert!(rows.init.iter().all(|&v| v == 0));
    }
}
