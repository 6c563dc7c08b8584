//! The int8 kernel on AVX2 (no VNNI): `vpmaddubsw` multiplies unsigned weight bytes by signed x
//! bytes into 16-bit pair sums (at most 2·15·127 for 4-bit weights, so never saturating), and
//! `vpmaddwd` by ones adds pairs of those into the same four-element 32-bit lanes as VNNI's dot.
//! Q8_0 weights are signed: the product is taken as |w| · (x with w's sign), at most 2·128·127.
//!
//! Owns: the 256-bit form of [`super::scalar`]'s arithmetic: block b's eight lanes in one
//! register, block b+1's in another, folded at the end exactly as the 512-bit kernel folds its
//! halves, so both kernels give the same bits.
//!
//! Must not know: threads or tensors.

use std::arch::x86_64::*;

use super::pack::Packed;
use super::quant::{Rows, LANES};
use super::{Q4_1, Q8_0};

/// True when this CPU can run the kernel.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

super::driver::kernel_driver!("avx2,fma,f16c", (1, 2, 1), (2, 1, 2), (3, 1, 3), (_, 1, 4));

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const F: u8, const L: usize, const NR: usize, const MR: usize>(
    w: &Packed,
    row: usize,
    x: &Rows,
    r0: usize,
) -> [[f32; MR]; NR] {
    let pairs = w.pairs;
    let pb = w.format.pair_bytes();
    let (qs, sc) = (w.qs.as_ptr().add(row * pairs * pb), w.scales.as_ptr().add(row * pairs * 4));
    let nib = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let with_init = !x.init.is_empty();
    // [j][half]: block b's lanes, then block b+1's.
    let mut acc = [[[_mm256_setzero_ps(); 2]; MR]; NR];
    for p in 0..pairs {
        let mut wq = [[_mm256_setzero_si256(); 2]; NR];
        let mut dw = [[_mm256_setzero_ps(); 2]; NR];
        let mut mw = [[_mm256_setzero_ps(); 2]; NR];
        for j in 0..NR {
            let q = qs.add((j * pairs + p) * pb);
            wq[j] = if F == Q8_0 {
                let flip = _mm256_set1_epi8(-128);
                [
                    _mm256_xor_si256(_mm256_loadu_si256(q as *const __m256i), flip),
                    _mm256_xor_si256(_mm256_loadu_si256(q.add(32) as *const __m256i), flip),
                ]
            } else {
                let v = _mm256_loadu_si256(q as *const __m256i);
                [_mm256_and_si256(v, nib), _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib)]
            };
            let s = _mm_cvtph_ps(_mm_loadl_epi64(sc.add((j * pairs + p) * 4) as *const __m128i));
            dw[j] = [_mm256_broadcastss_ps(s), _mm256_broadcastss_ps(_mm_movehdup_ps(s))];
            if F == Q4_1 {
                let hi = _mm_movehl_ps(s, s);
                mw[j] = [_mm256_broadcastss_ps(hi), _mm256_broadcastss_ps(_mm_movehdup_ps(hi))];
            }
        }
        for r in 0..MR {
            let base = (r0 + r) * x.pairs + p;
            let xp = x.qs.as_ptr().add(base * 64 * L);
            let xq = [_mm256_loadu_si256(xp as *const __m256i), _mm256_loadu_si256(xp.add(32) as *const __m256i)];
            let xf = if L == 2 {
                [_mm256_loadu_si256(xp.add(64) as *const __m256i), _mm256_loadu_si256(xp.add(96) as *const __m256i)]
            } else {
                [_mm256_setzero_si256(); 2]
            };
            for j in 0..NR {
                for h in 0..2 {
                    let level = |xv: __m256i| {
                        let prod = if F == Q8_0 {
                            _mm256_maddubs_epi16(_mm256_sign_epi8(wq[j][h], wq[j][h]), _mm256_sign_epi8(xv, wq[j][h]))
                        } else {
                            _mm256_maddubs_epi16(wq[j][h], xv)
                        };
                        _mm256_madd_epi16(prod, ones)
                    };
                    let mut dot = level(xq[h]);
                    if L == 2 {
                        dot = _mm256_add_epi32(_mm256_slli_epi32::<8>(dot), level(xf[h]));
                    }
                    if with_init {
                        dot = _mm256_add_epi32(
                            dot,
                            _mm256_loadu_si256(x.init.as_ptr().add(base * LANES + 8 * h) as *const __m256i),
                        );
                    }
                    let dx = _mm256_loadu_ps(x.d.as_ptr().add(base * LANES + 8 * h));
                    let a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw[j][h], dx), acc[j][r][h]);
                    acc[j][r][h] = if F == Q4_1 {
                        _mm256_fmadd_ps(mw[j][h], _mm256_loadu_ps(x.sum.as_ptr().add(base * LANES + 8 * h)), a)
                    } else {
                        a
                    };
                }
            }
        }
    }
    let mut out = [[0f32; MR]; NR];
    for j in 0..NR {
        for r in 0..MR {
            let mut lanes = [0f32; LANES];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[j][r][0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[j][r][1]);
            out[j][r] = super::fold(&lanes);
        }
    }
    out
}
