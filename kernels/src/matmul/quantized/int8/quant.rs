//! Activations quantized to 8 bits, each x row on its own (so a token's numbers never depend on
//! the rest of the batch), in the pair layout the int8 kernels read.
//!
//! Owns: the rounding of x. Per 32-element block b of a row: `t = x · 127 / max|x|`,
//! `q = round(t)` (ties to even), so `x ≈ d·q` with `d = max|x| / 127`. With two levels (the
//! 16-bit precision) the remainder is rounded again on a 256 times finer grid,
//! `q' = round(256·(t − q))` (clamped to ±127), and `x ≈ (d/256)·(256·q + q')`: the kernels
//! take one integer dot product per level and combine them as `256·dot + dot'` in 32 bits.
//! Per pair of blocks the row keeps 64 integers per level and three 16-lane vectors that make
//! the kernels' inner loop pure loads:
//!
//! ```text
//! qs   [q_b (32), q_b+1 (32)] then, with two levels, [q'_b, q'_b+1]
//! d    [d_b ×8, d_b+1 ×8]   (d/256 with two levels)   block scales, one per 32-bit lane of the dot
//! sum  [Σx_b / 8 ×8, Σx_b+1 / 8 ×8]              exact f32 block sums / 8 (Q4_1's m term: 8 lanes add back Σx)
//! init [-offset · Σ of the lane's 4 integers]    starts the integer dot (weights stored as q + offset);
//!                                                 with two levels of 256·q + q'
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
    /// `[row][pair][64 · levels]`.
    pub qs: Vec<i8>,
    /// 1 (8-bit) or 2 (16-bit as two 8-bit levels).
    pub levels: usize,
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
    /// stored weights exceed the true integers by (0, 8 or 128); `sums` whether to keep block sums;
    /// `levels` 1 or 2.
    pub fn new(x: &[f32], m: usize, k: usize, offset: i32, sums: bool, levels: usize) -> Self {
        debug_assert!(k % 32 == 0 && x.len() == m * k);
        let pairs = (k / 32).div_ceil(2);
        let lanes = |on: bool| if on { m * pairs * LANES } else { 0 };
        let mut rows = Rows {
            qs: vec![0; m * pairs * 64 * levels],
            levels,
            d: vec![0.0; m * pairs * LANES],
            sum: vec![0.0; lanes(sums)],
            init: vec![0; lanes(offset != 0)],
            pairs,
        };
        let one = |(r, (qs, d, sum, init)): (usize, RowParts<'_>)| {
            row_dispatch(&x[r * k..(r + 1) * k], offset, levels, qs, d, sum, init)
        };
        let per = pairs * LANES;
        let parts = rows
            .qs
            .chunks_mut(pairs * 64 * levels)
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

/// [`row`] compiled for the widest vector unit this CPU has. The crate's baseline (SSE2)
/// left it mostly scalar: ~10% of a batched int16 step in `perf`. Rust never reassociates or
/// contracts float operations, so every level computes the same bits.
fn row_dispatch(x: &[f32], offset: i32, levels: usize, qs: &mut [i8], d: &mut [f32], sum: &mut [f32], init: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
            // SAFETY: the features were just detected.
            return unsafe { row_avx512(x, offset, levels, qs, d, sum, init) };
        }
        if has!("avx2") {
            // SAFETY: as above.
            return unsafe { row_avx2(x, offset, levels, qs, d, sum, init) };
        }
    }
    row(x, offset, levels, qs, d, sum, init)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn row_avx512(x: &[f32], offset: i32, levels: usize, qs: &mut [i8], d: &mut [f32], sum: &mut [f32], init: &mut [i32]) {
    row(x, offset, levels, qs, d, sum, init)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(x: &[f32], offset: i32, levels: usize, qs: &mut [i8], d: &mut [f32], sum: &mut [f32], init: &mut [i32]) {
    row(x, offset, levels, qs, d, sum, init)
}

#[inline(always)]
fn row(x: &[f32], offset: i32, levels: usize, qs: &mut [i8], d: &mut [f32], sum: &mut [f32], init: &mut [i32]) {
    let stride = 64 * levels;
    for (b, blk) in x.chunks_exact(32).enumerate() {
        let (p, half) = (b / 2, b % 2);
        let amax = abs_max(blk);
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let at = p * stride + half * 32;
        let mut q = [0i8; 32];
        let mut fine = [0i8; 32];
        for i in 0..32 {
            let t = blk[i] * inv;
            let r = round_half_even(t).clamp(-127.0, 127.0);
            // Through i32: the value is already in i8's range, and a float → i32 conversion
            // vectorizes where Rust's saturating float → i8 cast does not.
            q[i] = r as i32 as i8;
            if levels == 2 {
                fine[i] = round_half_even((t - r) * 256.0).clamp(-127.0, 127.0) as i32 as i8;
            }
        }
        qs[at..at + 32].copy_from_slice(&q);
        if levels == 2 {
            qs[at + 64..at + 96].copy_from_slice(&fine);
        }
        let lanes = p * LANES + half * 8..p * LANES + half * 8 + 8;
        let scale = amax / 127.0;
        d[lanes.clone()].fill(if levels == 2 { scale / 256.0 } else { scale });
        if !sum.is_empty() {
            sum[lanes.clone()].fill(block_sum(blk) * 0.125);
        }
        if !init.is_empty() {
            for (l, slot) in init[lanes].iter_mut().enumerate() {
                let total = |v: &[i8]| v[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>();
                let combined = if levels == 2 { 256 * total(&q) + total(&fine) } else { total(&q) };
                *slot = -offset * combined;
            }
        }
    }
}

/// max |v| over one 32-value block, in eight lanes (a single running max is a chain of 32
/// dependent scalar instructions; max is exact, so the order does not change the result).
#[inline(always)]
fn abs_max(blk: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for chunk in blk.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    lanes.iter().fold(0f32, |a, &m| a.max(m))
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
        let all = Rows::new(&x, 3, k, 8, true, 1);
        let last = Rows::new(&x[2 * k..], 1, k, 8, true, 1);
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
        let bare = Rows::new(&x, 3, k, 0, false, 1);
        assert!(bare.init.is_empty() && bare.sum.is_empty());
        assert_eq!(bare.qs, all.qs);
    }

    #[test]
    fn two_levels_hold_each_value_within_one_fine_step() {
        let k = 64;
        let x: Vec<f32> = (0..k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 3.0).collect();
        let rows = Rows::new(&x, 1, k, 128, false, 2);
        assert_eq!(rows.qs.len(), 128);
        for (e, &v) in x.iter().enumerate() {
            let (b, i) = (e / 32, e % 32);
            let fine_d = rows.d[b * 8];
            let value = (256 * rows.qs[b * 32 + i] as i32 + rows.qs[64 + b * 32 + i] as i32) as f32 * fine_d;
            // Half a step, or one where the remainder hit the ±127 clamp (|256·(t − q)| ≤ 128).
            assert!((value - v).abs() <= fine_d * 1.001, "element {e}: {value} vs {v}");
        }
        let lane0: i32 = (0..4).map(|i| 256 * rows.qs[i] as i32 + rows.qs[64 + i] as i32).sum();
        assert_eq!(rows.init[0], -128 * lane0);
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
        let rows = Rows::new(&[0.0; 64], 1, 64, 128, false, 2);
        assert!(rows.qs.iter().all(|&q| q == 0) && rows.d.iter().all(|&d| d == 0.0));
        assert!(rows.init.iter().all(|&v| v == 0));
    }
}
