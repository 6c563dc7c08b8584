//! The int8 kernel on AVX-512 VNNI: one `vpdpbusd` multiplies a pair of 32-weight blocks (64
//! unsigned weight bytes) by 64 signed x bytes and adds each group of four products into a
//! 32-bit lane, on top of the lane's `init` (which removes the weights' storage offset).
//!
//! Owns: the 512-bit form of the arithmetic in [`super::scalar`], lane for lane: lanes 0–7 are
//! block b, lanes 8–15 block b+1, so the block scales are two values spread over eight lanes
//! each (one permute per weight row and pair, shared by every x row of the tile).
//!
//! Must not know: threads or tensors.

use std::arch::x86_64::*;

use super::pack::Packed;
use super::quant::{Rows, LANES};
use super::{Q4_1, Q8_0};

/// True when this CPU can run the kernel.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

super::driver::kernel_driver!("avx512f,avx512bw,avx512vnni,avx2,fma,f16c", (1, 4, 1), (2, 4, 2), (3, 3, 3), (_, 3, 4));

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<const F: u8, const L: usize, const NR: usize, const MR: usize>(
    w: &Packed,
    row: usize,
    x: &Rows,
    r0: usize,
) -> [[f32; MR]; NR] {
    let pairs = w.pairs;
    let pb = w.format.pair_bytes();
    let (qs, sc) = (w.qs.as_ptr().add(row * pairs * pb), w.scales.as_ptr().add(row * pairs * 4));
    let idx_d = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let idx_m = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    let nib = _mm256_set1_epi8(0x0F);
    let with_init = !x.init.is_empty();
    let mut acc = [[_mm512_setzero_ps(); MR]; NR];
    for p in 0..pairs {
        let mut wq = [_mm512_setzero_si512(); NR];
        let mut dw = [_mm512_setzero_ps(); NR];
        let mut mw = [_mm512_setzero_ps(); NR];
        for j in 0..NR {
            let q = qs.add((j * pairs + p) * pb);
            wq[j] = if F == Q8_0 {
                _mm512_loadu_si512(q as *const _)
            } else {
                let v = _mm256_loadu_si256(q as *const __m256i);
                let lo = _mm256_and_si256(v, nib);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            };
            let s = _mm_cvtph_ps(_mm_loadl_epi64(sc.add((j * pairs + p) * 4) as *const __m128i));
            let s = _mm512_castps128_ps512(s);
            dw[j] = _mm512_permutexvar_ps(idx_d, s);
            if F == Q4_1 {
                mw[j] = _mm512_permutexvar_ps(idx_m, s);
            }
        }
        for r in 0..MR {
            let base = (r0 + r) * x.pairs + p;
            let xp = x.qs.as_ptr().add(base * 64 * L);
            let xq = _mm512_loadu_si512(xp as *const _);
            let xf = if L == 2 { _mm512_loadu_si512(xp.add(64) as *const _) } else { _mm512_setzero_si512() };
            let dx = _mm512_loadu_ps(x.d.as_ptr().add(base * LANES));
            let init = if with_init {
                _mm512_loadu_si512(x.init.as_ptr().add(base * LANES) as *const _)
            } else {
                _mm512_setzero_si512()
            };
            for j in 0..NR {
                let dot = if L == 2 {
                    let coarse = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[j], xq);
                    _mm512_dpbusd_epi32(_mm512_add_epi32(_mm512_slli_epi32::<8>(coarse), init), wq[j], xf)
                } else {
                    _mm512_dpbusd_epi32(init, wq[j], xq)
                };
                let a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[j], dx), acc[j][r]);
                acc[j][r] = if F == Q4_1 {
                    _mm512_fmadd_ps(mw[j], _mm512_loadu_ps(x.sum.as_ptr().add(base * LANES)), a)
                } else {
                    a
                };
            }
        }
    }
    let mut out = [[0f32; MR]; NR];
    for j in 0..NR {
        for r in 0..MR {
            let mut lanes = [0f32; LANES];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc[j][r]);
            out[j][r] = super::fold(&lanes);
        }
    }
    out
}
