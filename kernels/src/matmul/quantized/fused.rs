//! Q4_0, Q4_1 and Q8_0 weights against f32 x rows with AVX2+FMA, the block scale factored out:
//! every 32-weight block is unpacked into registers ONCE per group of up to [`GROUP`] x rows
//! and multiplied into all of them, so a decode step streams the quantized weights from memory
//! exactly once and never writes them back as f32. Weights come in the layout of
//! [`super::pack`] (integers, then f32 scales that cost a broadcast load and no arithmetic).
//!
//! Owns: the register tiling and the per-element arithmetic of these three formats. Per output
//! element (x row r, weight row j), with `q` the block's integers (`q - 8` for Q4_0) as f32:
//!
//! ```text
//! acc  (8 lanes) += d_b * (x_b·q_b, four 8-wide FMAs in K order)      for each block b, in order
//! mterm (scalar) += m_b * X_rb    (Q4_1 only; X_rb = sum of x row r's block b)
//! y = reduce8(acc) + mterm
//! ```
//!
//! That is the exact value `Σ x·(d·q + m)` regrouped — it differs from multiplying by the
//! dequantized weights only by f32 rounding — and it costs a third fewer vector operations per
//! weight. Every element is computed by this same sequence however many x rows share the pass
//! and whichever weight rows are tiled together, so a token's result never depends on its batch.
//!
//! Must not know: threads, tensors, or which layer is being computed.

use std::arch::x86_64::*;

use candle_core::quantized::GgmlDType;

pub use super::driver::GROUP;

pub(super) const Q4_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q8_0: u8 = 2;

/// True when `dtype` has a fused kernel and this CPU can run it.
pub fn available(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// Block sums of x for the Q4_1 offset term: `[group][block][GROUP]`, lanes past the last x row
/// zero. Each sum depends only on its own x row, in a fixed order.
pub fn block_sums(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let nb = k / 32;
    let groups = m.div_ceil(GROUP);
    let mut out = vec![0f32; groups * nb * GROUP];
    for r in 0..m {
        let (g, lane) = (r / GROUP, r % GROUP);
        for b in 0..nb {
            let blk = &x[r * k + b * 32..r * k + b * 32 + 32];
            let mut v = [0f32; 8];
            for (l, s) in v.iter_mut().enumerate() {
                *s = ((blk[l] + blk[8 + l]) + blk[16 + l]) + blk[24 + l];
            }
            out[(g * nb + b) * GROUP + lane] = crate::matmul::reduce8(v);
        }
    }
    out
}

/// `out[r * nrows + j]` = x row `r` · weight row `j`, for the `nrows` weight rows given in the
/// packed layout of [`super::pack`]: `qs` their integers, `scales` their f32 scales.
///
/// # Safety
/// `available(dtype)` must hold; `k` is a multiple of 32; `qs` and `scales` hold the same whole
/// rows of `k / 32` blocks of `dtype`; `x` holds `m * k` values; `sums` is
/// `block_sums(x, m, k)` (unused unless Q4_1); `out` holds `m * nrows` values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn rows_dot(
    dtype: GgmlDType,
    qs: &[u8],
    scales: &[f32],
    x: &[f32],
    sums: &[f32],
    m: usize,
    k: usize,
    out: &mut [f32],
) {
    match dtype {
        GgmlDType::Q4_0 => by_group::<Q4_0>(qs, scales, x, sums, m, k, out),
        GgmlDType::Q4_1 => by_group::<Q4_1>(qs, scales, x, sums, m, k, out),
        _ => by_group::<Q8_0>(qs, scales, x, sums, m, k, out),
    }
}

/// Bytes of integers per block in the packed layout ([`super::pack`]).
pub(super) const fn qs_bytes(f: u8) -> usize {
    if f == Q8_0 {
        32
    } else {
        16
    }
}

/// f32 scales per block in the packed layout: `d`, and `m` for Q4_1.
pub(super) const fn scales_per_block(f: u8) -> usize {
    if f == Q4_1 {
        2
    } else {
        1
    }
}

super::driver::group_driver!("avx2,fma,f16c");

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const F: u8, const NR: usize, const MR: usize>(
    qs: *const u8,
    qrb: usize,
    sc: *const f32,
    srb: usize,
    x: *const f32,
    sums: *const f32,
    k: usize,
) -> [[f32; MR]; NR] {
    let (qb, sb) = (qs_bytes(F), scales_per_block(F));
    let mut acc = [[_mm256_setzero_ps(); MR]; NR];
    // Lane r: x row r's Q4_1 offset term.
    let mut macc = [_mm256_setzero_ps(); NR];
    for b in 0..k / 32 {
        for j in 0..NR {
            let q = unpack::<F>(qs.add(j * qrb + b * qb));
            let s = sc.add(j * srb + b * sb);
            let d = _mm256_broadcast_ss(&*s);
            for (r, a) in acc[j].iter_mut().enumerate() {
                let xr = x.add(r * k + b * 32);
                let mut t = _mm256_mul_ps(_mm256_loadu_ps(xr), q[0]);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(8)), q[1], t);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(16)), q[2], t);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(24)), q[3], t);
                *a = _mm256_fmadd_ps(d, t, *a);
            }
            if F == Q4_1 {
                macc[j] = _mm256_fmadd_ps(
                    _mm256_broadcast_ss(&*s.add(1)),
                    _mm256_loadu_ps(sums.add(b * 8)),
                    macc[j],
                );
            }
        }
    }
    let mut out = [[0f32; MR]; NR];
    for j in 0..NR {
        let mut offs = [0f32; 8];
        _mm256_storeu_ps(offs.as_mut_ptr(), macc[j]);
        for r in 0..MR {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[j][r]);
            out[j][r] = crate::matmul::reduce8(lanes) + offs[r];
        }
    }
    out
}

/// The 32 integers of one block as f32 (`q - 8` for Q4_0), four vectors in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack<const F: u8>(qs: *const u8) -> [__m256; 4] {
    if F == Q8_0 {
        let q = qs;
        let mut w = [_mm256_setzero_ps(); 4];
        for (c, wc) in w.iter_mut().enumerate() {
            *wc = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(c * 8) as *const __m128i)));
        }
        return w;
    }
    // Byte i holds element i (low nibble) and element i + 16 (high nibble): widen bytes 0..8
    // and 8..16 to 32-bit lanes once, then split each into its two nibbles.
    let b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs as *const __m128i));
    let b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(8) as *const __m128i));
    let low = _mm256_set1_epi32(0x0F);
    let mut n = [
        _mm256_and_si256(b0, low),
        _mm256_and_si256(b1, low),
        _mm256_srli_epi32::<4>(b0),
        _mm256_srli_epi32::<4>(b1),
    ];
    if F == Q4_0 {
        let eight = _mm256_set1_epi32(8);
        for v in n.iter_mut() {
            *v = _mm256_sub_epi32(*v, eight);
        }
    }
    [
        _mm256_cvtepi32_ps(n[0]),
        _mm256_cvtepi32_ps(n[1]),
        _mm256_cvtepi32_ps(n[2]),
        _mm256_cvtepi32_ps(n[3]),
    ]
}
