//! AVX2+FMA versions of the portable inner loops of [`super::cpu`] (`dot`, `weighted_sum`), for
//! the heads whose width is not a multiple of 8 and for callers outside the item kernel (the
//! block step itself is [`super::block_step`]). LLVM vectorises the portable `dot` only 2 lanes
//! wide (its SLP pass splits the 16 accumulators), and the portable weighted sum loads and stores
//! the accumulator once per key; these keep the work in full 8-lane registers. Entered only after
//! run-time feature detection.
//!
//! Must not know: attention, softmax or the cache layout: these are plain vector loops.

use std::arch::x86_64::*;

/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), acc1);
        i += 16;
    }
    if i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    let single = _mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair));
    let mut total = _mm_cvtss_f32(single);
    for (x, y) in a[i..n].iter().zip(&b[i..n]) {
        total += x * y;
    }
    total
}

/// `cpu::weighted_sum` holding up to 64 output floats in registers across the whole
/// block (8 independent FMA chains), instead of loading and storing `acc` once per key.
///
/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn weighted_sum_avx2(acc: &mut [f32], probs: &[f32], v: &[f32]) {
    const CHUNKS: usize = 8;
    let hd = acc.len();
    let n = probs.len().min(v.len() / hd.max(1));
    let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
    let mut col = 0;
    while col + 8 <= hd {
        let chunks = ((hd - col) / 8).min(CHUNKS);
        let mut regs = [_mm256_setzero_ps(); CHUNKS];
        for (c, r) in regs.iter_mut().enumerate().take(chunks) {
            *r = _mm256_loadu_ps(pa.add(col + 8 * c));
        }
        for (i, &p) in probs.iter().enumerate().take(n) {
            let scale = _mm256_set1_ps(p);
            let row = pv.add(i * hd + col);
            for (c, r) in regs.iter_mut().enumerate().take(chunks) {
                *r = _mm256_fmadd_ps(scale, _mm256_loadu_ps(row.add(8 * c)), *r);
            }
        }
        for (c, r) in regs.iter().enumerate().take(chunks) {
            _mm256_storeu_ps(pa.add(col + 8 * c), *r);
        }
        col += 8 * chunks;
    }
    if col < hd {
        for (i, &p) in probs.iter().enumerate().take(n) {
            for (a, &x) in acc[col..].iter_mut().zip(&v[i * hd + col..(i + 1) * hd]) {
                *a += p * x;
            }
        }
    }
}

/// # Safety
/// The CPU must support avx2 and fma.
#[cfg(test)]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn axpy_avx2(acc: &mut [f32], p: f32, v: &[f32]) {
    let n = acc.len().min(v.len());
    let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
    let scale = _mm256_set1_ps(p);
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(pa.add(i), _mm256_fmadd_ps(scale, _mm256_loadu_ps(pv.add(i)), _mm256_loadu_ps(pa.add(i))));
        i += 8;
    }
    for (a, &x) in acc[i..n].iter_mut().zip(&v[i..n]) {
        *a += p * x;
    }
}

