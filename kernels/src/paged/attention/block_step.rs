//! The attention kernel's vector block step ([`super::cpu`]): one online-softmax step of a
//! query's rows over one cache block — eight keys' dots reduced together by one horizontal-add
//! tree, a vector exponential, and the weighted sum of value rows with the outputs held in
//! registers. The portable step reduces every key's dot on its own and calls libm's scalar `expf`
//! per key; this keeps the work in full 8-lane registers.
//!
//! Stamped twice by [`block_step!`]: [`avx2`] (16 vector registers: one row at a time) and
//! [`avx512`] (AVX-512VL gives the same 8-lane instructions ymm16–31, enough to run up to three
//! rows together so each key and value load serves all of them). Every function carries its
//! module's target features: helpers compiled for plain AVX2 would not inline into the wide
//! version and would run with half the registers.
//!
//! Bits: every key's score, probability and the block sum are computed in a fixed order that
//! depends only on the row and the block's keys, never on which other rows or blocks run beside
//! it, how many rows run together, or the module: batch invariance holds, and an AVX2 and an
//! AVX-512 machine give the same bits. f16/bf16 rows are widened as they are loaded, which is
//! exact: the same bits as converting the block first.
//!
//! Must not know: the cache layout, block tables or work items: rows and keys arrive as slices.

/// Element kinds of K/V rows the step loads (`load8`'s `KIND`).
const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

/// The keys and values of one block as the step reads them.
struct Block<'a> {
    k: *const u8,
    v: *const u8,
    n: usize,
    hd: usize,
    key_scales: Option<&'a [f32]>,
    value_scales: Option<&'a [f32]>,
    zero_row: &'a [f32],
}

macro_rules! block_step {
    ($features:literal, $max_rows:literal) => {
        use std::arch::x86_64::*;

        use super::{Block, BF16, F16, F32};
        use crate::elem::StoredFloats;

        /// One online-softmax step of `max.len()` consecutive rows over the block's first `n`
        /// keys: row `r` is `q[r·hd..(r+1)·hd]` with running `max[r]`, `sum[r]` and unnormalised
        /// `acc[r·hd..]` (`hd` a multiple of 8), rescaled once per block. `k`, `v` hold at least
        /// `n × hd` elements (f32, or f16/bf16 as stored). Quantized caches pass per-key scales:
        /// the key scale multiplies the q·codes dot, the value scale is folded into each
        /// probability (the softmax sum uses the plain probability), as in the portable
        /// `cpu::attend_block`. `zero_row` (≥ hd zeros) stands in for the missing keys of a
        /// partial group of eight; `probs` is scratch of at least `rows × n` rounded up to 8
        /// per row.
        ///
        /// # Safety
        /// The CPU must support this module's target features.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn attend_rows(
            q: &[f32],
            k: StoredFloats,
            v: StoredFloats,
            n: usize,
            key_scales: Option<&[f32]>,
            value_scales: Option<&[f32]>,
            zero_row: &[f32],
            probs: &mut [f32],
            max: &mut [f32],
            sum: &mut [f32],
            acc: &mut [f32],
        ) {
            let rows = max.len();
            let hd = q.len() / rows.max(1);
            let stride = n.div_ceil(8) * 8;
            assert!(
                hd % 8 == 0
                    && q.len() == rows * hd
                    && sum.len() == rows
                    && acc.len() == rows * hd
                    && zero_row.len() >= hd
                    && probs.len() >= rows * stride
                    && k.len() >= n * hd
                    && v.len() >= n * hd,
                "attend_rows: slices do not fit {rows} rows of width {hd} over {n} keys"
            );
            let block = Block { k: k.bytes(), v: v.bytes(), n, hd, key_scales, value_scales, zero_row };
            let rows_of_kind = match (k, v) {
                (StoredFloats::F32(_), StoredFloats::F32(_)) => steps::<F32>,
                (StoredFloats::F16(_), StoredFloats::F16(_)) => steps::<F16>,
                (StoredFloats::Bf16(_), StoredFloats::Bf16(_)) => steps::<BF16>,
                _ => panic!("attend_rows: key and value rows of different types"),
            };
            rows_of_kind(&block, q, probs, max, sum, acc);
        }

        /// [`attend_rows`] over every row, up to `$max_rows` rows per [`step`], rows of kind `KIND`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn steps<const KIND: u8>(
            b: &Block,
            q: &[f32],
            probs: &mut [f32],
            max: &mut [f32],
            sum: &mut [f32],
            acc: &mut [f32],
        ) {
            let (rows, hd, stride) = (max.len(), b.hd, b.n.div_ceil(8) * 8);
            let mut r = 0;
            while r < rows {
                let take = (rows - r).min($max_rows);
                let (qs, ps) = (&q[r * hd..(r + take) * hd], &mut probs[r * stride..(r + take) * stride]);
                let (m, s, a) = (&mut max[r..r + take], &mut sum[r..r + take], &mut acc[r * hd..(r + take) * hd]);
                match take {
                    3 => step::<KIND, 3>(b, qs, ps, m, s, a),
                    2 => step::<KIND, 2>(b, qs, ps, m, s, a),
                    _ => step::<KIND, 1>(b, qs, ps, m, s, a),
                }
                r += take;
            }
        }

        /// [`attend_rows`] for `R` rows at once, K and V rows of kind `KIND`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn step<const KIND: u8, const R: usize>(
            b: &Block,
            q: &[f32],
            probs: &mut [f32],
            max: &mut [f32],
            sum: &mut [f32],
            acc: &mut [f32],
        ) {
            let (n, hd) = (b.n, b.hd);
            let stride = n.div_ceil(8) * 8;
            let block_max = block_scores::<KIND, R>(b, q.as_ptr(), probs.as_mut_ptr(), stride);
            for r in 0..R {
                let new_max = max[r].max(block_max[r]);
                let shift = _mm256_set1_ps(new_max);
                let pp = probs.as_mut_ptr().add(r * stride);
                let mut vsum = _mm256_setzero_ps();
                for g in 0..n.div_ceil(8) {
                    let valid = (n - g * 8).min(8);
                    let p = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(pp.add(g * 8)), shift)), live(valid));
                    vsum = _mm256_add_ps(vsum, p);
                    let w = match b.value_scales {
                        Some(scales) => _mm256_mul_ps(p, load_partial(&scales[g * 8..g * 8 + valid])),
                        None => p,
                    };
                    _mm256_storeu_ps(pp.add(g * 8), w);
                }
                let correction = (max[r] - new_max).exp(); // 0 on the first block (max = -inf)
                if correction != 1.0 {
                    for a in &mut acc[r * hd..(r + 1) * hd] {
                        *a *= correction;
                    }
                }
                sum[r] = sum[r] * correction + hsum(vsum);
                max[r] = new_max;
            }
            weighted_sum::<KIND, R>(acc, probs, stride, n, b.v);
        }

        /// The scaled scores of `R` rows at `q` against the block's `n` keys into `scores` (row r
        /// at `r × stride`; `-inf` after the n-th key up to a multiple of 8); returns each row's
        /// max.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn block_scores<const KIND: u8, const R: usize>(
            b: &Block,
            q: *const f32,
            scores: *mut f32,
            stride: usize,
        ) -> [f32; R] {
            let (n, hd) = (b.n, b.hd);
            let row_bytes = hd * if KIND == F32 { 4 } else { 2 };
            let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut vmax = [neg_inf; R];
            for g in 0..n.div_ceil(8) {
                let valid = (n - g * 8).min(8);
                // Zero bytes are 0.0 in every kind, so the f32 zero row serves them all.
                let mut rows = [b.zero_row.as_ptr().cast::<u8>(); 8];
                for (j, row) in rows.iter_mut().enumerate().take(valid) {
                    *row = b.k.add((g * 8 + j) * row_bytes);
                }
                let mut dots = dot8::<KIND, R>(q, &rows, hd);
                if let Some(scales) = b.key_scales {
                    let c = load_partial(&scales[g * 8..g * 8 + valid]);
                    for d in dots.iter_mut() {
                        *d = _mm256_mul_ps(*d, c);
                    }
                }
                let mask = live(valid);
                for r in 0..R {
                    let s = _mm256_blendv_ps(neg_inf, dots[r], mask);
                    _mm256_storeu_ps(scores.add(r * stride + g * 8), s);
                    vmax[r] = _mm256_max_ps(vmax[r], s);
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hmax(vmax[r]);
            }
            out
        }

        /// The dots of `R` rows (`q`, `hd` floats each) with eight key rows (`hd` elements
        /// each): one 8-lane FMA chain per (row, key), each key load serving every row, then one
        /// horizontal-add tree per row that reduces its eight keys at once (lane j is key j's
        /// dot; each key's sum only ever involves its own lanes, in the same order, whatever R).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn dot8<const KIND: u8, const R: usize>(q: *const f32, rows: &[*const u8; 8], hd: usize) -> [__m256; R] {
            let mut a = [[_mm256_setzero_ps(); 8]; R];
            let mut c = 0;
            while c < hd {
                let mut qc = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    qc[r] = _mm256_loadu_ps(q.add(r * hd + c));
                }
                for j in 0..8 {
                    let kc = load8::<KIND>(rows[j], c);
                    for r in 0..R {
                        a[r][j] = _mm256_fmadd_ps(qc[r], kc, a[r][j]);
                    }
                }
                c += 8;
            }
            let mut out = [_mm256_setzero_ps(); R];
            for r in 0..R {
                let a = &a[r];
                let h0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                let h4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
                // Low halves hold lanes 0-3 of every key's sum, high halves lanes 4-7.
                out[r] = _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(h0123, h4567),
                    _mm256_permute2f128_ps::<0x31>(h0123, h4567),
                );
            }
            out
        }

        /// `acc_r += Σ_i probs[r·stride + i] · v_i` for `R` rows over `n` value rows of `KIND`
        /// elements at `v` (`acc.len() / R` per row, a multiple of 8): up to 64 output columns of
        /// every row in registers across the block, each value load serving every row.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn weighted_sum<const KIND: u8, const R: usize>(
            acc: &mut [f32],
            probs: &[f32],
            stride: usize,
            n: usize,
            v: *const u8,
        ) {
            let hd = acc.len() / R;
            let mut col = 0;
            while col + 64 <= hd {
                columns::<KIND, R, 8>(acc, probs, stride, n, v, col);
                col += 64;
            }
            while col < hd {
                // Narrow heads and the rest of wide ones: one 8-column strip at a time, the
                // same per-element arithmetic.
                columns::<KIND, R, 1>(acc, probs, stride, n, v, col);
                col += 8;
            }
        }

        /// [`weighted_sum`] over the `8·C` columns from `col`, with a fixed register count (a
        /// run-time count compiles into a branch per key and chunk).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn columns<const KIND: u8, const R: usize, const C: usize>(
            acc: &mut [f32],
            probs: &[f32],
            stride: usize,
            n: usize,
            v: *const u8,
            col: usize,
        ) {
            let hd = acc.len() / R;
            let pa = acc.as_mut_ptr();
            let mut regs = [[_mm256_setzero_ps(); C]; R];
            for r in 0..R {
                for c in 0..C {
                    regs[r][c] = _mm256_loadu_ps(pa.add(r * hd + col + 8 * c));
                }
            }
            for i in 0..n {
                let mut p = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    p[r] = _mm256_set1_ps(probs[r * stride + i]);
                }
                for c in 0..C {
                    let vc = load8::<KIND>(v, i * hd + col + 8 * c);
                    for r in 0..R {
                        regs[r][c] = _mm256_fmadd_ps(p[r], vc, regs[r][c]);
                    }
                }
            }
            for r in 0..R {
                for c in 0..C {
                    _mm256_storeu_ps(pa.add(r * hd + col + 8 * c), regs[r][c]);
                }
            }
        }

        /// Eight elements of kind `KIND` from `base` (bytes) at element `index`, as f32.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn load8<const KIND: u8>(base: *const u8, index: usize) -> __m256 {
            match KIND {
                F32 => _mm256_loadu_ps(base.cast::<f32>().add(index)),
                F16 => _mm256_cvtph_ps(_mm_loadu_si128(base.cast::<u16>().add(index).cast())),
                _ => {
                    let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(base.cast::<u16>().add(index).cast()));
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
                }
            }
        }

        /// `e^x` on 8 lanes: Cephes' `expf` (x = n·ln2 + r with ln2 split in two, a degree-6
        /// polynomial in r, 2^n through the exponent bits); within 2 ulp of libm for x in
        /// [-87.3, 88]. Inputs are clamped to that range, so x → -inf gives 2^-126·e^(…) rather
        /// than 0: callers mask lanes that must be zero.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
            let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.336_54)), _mm256_set1_ps(88.0));
            let t = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
            let mut p = _mm256_set1_ps(1.987_569_1e-4);
            for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
            let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
            _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
        }

        /// Lanes `[0, valid)` set, the rest clear.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn live(valid: usize) -> __m256 {
            let lane = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
            _mm256_cmp_ps::<_CMP_LT_OQ>(lane, _mm256_set1_ps(valid as f32))
        }

        /// Up to eight floats into a vector, zeros after them.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn load_partial(values: &[f32]) -> __m256 {
            if values.len() >= 8 {
                return _mm256_loadu_ps(values.as_ptr());
            }
            let mut padded = [0f32; 8];
            padded[..values.len()].copy_from_slice(values);
            _mm256_loadu_ps(padded.as_ptr())
        }

        /// Largest lane (order-free: max is exact).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn hmax(v: __m256) -> f32 {
            let quad = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pair = _mm_max_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_max_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
        }

        /// Sum of the lanes in a fixed tree: ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn hsum(v: __m256) -> f32 {
            let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
        }
    };
}

/// One row at a time: AVX2 has 16 vector registers, which one row's 8 key accumulators (or 8
/// output strips) and its loads fill.
pub(super) mod avx2 {
    block_step!("avx2,fma,f16c", 1);
}

/// Up to three rows together (a GQA group of three is one pass): 24 accumulators plus loads fit
/// AVX-512VL's 32 registers.
pub(super) mod avx512 {
    block_step!("avx512f,avx512vl,avx2,fma,f16c", 3);
}

#[cfg(test)]
mod tests {
    use crate::elem::StoredFloats;

    #[test]
    fn rows_run_together_give_the_bits_of_rows_run_alone() {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") && has!("f16c")) {
            return; // the wide module cannot run here
        }
        let (hd, rows) = (72, 5); // a 64-column strip plus one 8-column strip; rows 3 + 2
        for n in [1usize, 8, 11, 16] {
            for quantized in [false, true] {
                let q: Vec<f32> = (0..rows * hd).map(|i| (i as f32 * 0.13).sin()).collect();
                let k: Vec<f32> = (0..n * hd).map(|i| (i as f32 * 0.29).cos() * 2.0).collect();
                let v: Vec<f32> = (0..n * hd).map(|i| (i as f32 * 0.05).sin()).collect();
                let scales: Vec<f32> = (0..n).map(|i| 0.25 + i as f32 * 0.03).collect();
                let sc = quantized.then_some(&scales[..]);
                let zero = vec![0f32; hd];
                let start = || ((0..rows).map(|r| r as f32 * 0.1 - 0.2).collect::<Vec<f32>>(), vec![1.5f32; rows], vec![0.5f32; rows * hd]);
                let (mut max_w, mut sum_w, mut acc_w) = start();
                let mut probs = vec![0f32; rows * n.div_ceil(8) * 8];
                // SAFETY: features detected above.
                unsafe {
                    super::avx512::attend_rows(
                        &q,
                        StoredFloats::F32(&k),
                        StoredFloats::F32(&v),
                        n,
                        sc,
                        sc,
                        &zero,
                        &mut probs,
                        &mut max_w,
                        &mut sum_w,
                        &mut acc_w,
                    )
                };
                let (mut max_1, mut sum_1, mut acc_1) = start();
                for r in 0..rows {
                    // SAFETY: as above (avx2, fma and f16c are among them).
                    unsafe {
                        super::avx2::attend_rows(
                            &q[r * hd..(r + 1) * hd],
                            StoredFloats::F32(&k),
                            StoredFloats::F32(&v),
                            n,
                            sc,
                            sc,
                            &zero,
                            &mut probs,
                            &mut max_1[r..r + 1],
                            &mut sum_1[r..r + 1],
                            &mut acc_1[r * hd..(r + 1) * hd],
                        )
                    };
                }
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
                assert_eq!(bits(&max_w), bits(&max_1), "n={n} quantized={quantized}: max");
                assert_eq!(bits(&sum_w), bits(&sum_1), "n={n} quantized={quantized}: sum");
                assert_eq!(bits(&acc_w), bits(&acc_1), "n={n} quantized={quantized}: acc");
            }
        }
    }
}
