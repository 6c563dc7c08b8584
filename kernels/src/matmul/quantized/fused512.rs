//! The fused Q4_0 / Q4_1 / Q8_0 kernel of [`super::fused`] on 512-bit vectors, for CPUs with
//! AVX-512 (F, BW, VL). A 32-weight block is exactly two 16-lane vectors — the low nibbles of
//! its 16 bytes, then the high ones — so unpacking takes half the instructions of AVX2, and a
//! batch-1 decode, bound by that unpacking, runs about twice as fast.
//!
//! Owns: only the 16-lane form. The arithmetic per output element mirrors the AVX2 kernel
//! (block scale factored out, the Q4_1 offset through the same x block sums) with 16
//! accumulation lanes, folded to 8 (lane i + lane i + 8) and then reduced with
//! `crate::matmul::reduce8`. A CPU always takes the same kernel, so results stay independent
//! of the batch; the two kernels differ from each other by f32 rounding only.
//!
//! Must not know: threads, tensors, or which layer is being computed.

use std::arch::x86_64::*;

use candle_core::quantized::GgmlDType;

use super::fused::{qs_bytes, scales_per_block, Q4_0, Q4_1, Q8_0};

/// True when `dtype` has a fused kernel and this CPU has the 512-bit instructions it needs.
pub fn available(dtype: GgmlDType) -> bool {
    super::fused::available(dtype)
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
}

/// Same contract as [`super::fused::rows_dot`].
///
/// # Safety
/// `available(dtype)` must hold; otherwise as [`super::fused::rows_dot`].
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

super::driver::group_driver!("avx512f,avx512bw,avx512vl,avx2,fma,f16c");

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
    let mut acc = [[_mm512_setzero_ps(); MR]; NR];
    let mut macc = [_mm256_setzero_ps(); NR];
    for b in 0..k / 32 {
        for j in 0..NR {
            let q = unpack::<F>(qs.add(j * qrb + b * qb));
            let s = sc.add(j * srb + b * sb);
            let d = _mm512_set1_ps(*s);
            for (r, a) in acc[j].iter_mut().enumerate() {
                let xr = x.add(r * k + b * 32);
                let t = _mm512_mul_ps(_mm512_loadu_ps(xr), q[0]);
                let t = _mm512_fmadd_ps(_mm512_loadu_ps(xr.add(16)), q[1], t);
                *a = _mm512_fmadd_ps(d, t, *a);
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
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc[j][r]);
            let mut folded = [0f32; 8];
            for (i, f) in folded.iter_mut().enumerate() {
                *f = lanes[i] + lanes[i + 8];
            }
            out[j][r] = crate::matmul::reduce8(folded) + offs[r];
        }
    }
    out
}

/// The 32 integers of one block as f32 (`q - 8` for Q4_0): elements 0..16, then 16..32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn unpack<const F: u8>(qs: *const u8) -> [__m512; 2] {
    if F == Q8_0 {
        let q = qs;
        let lo = _mm512_cvtepi8_epi32(_mm_loadu_si128(q as *const __m128i));
        let hi = _mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16) as *const __m128i));
        return [_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi)];
    }
    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(qs as *const __m128i));
    let mut lo = _mm512_and_si512(v, _mm512_set1_epi32(0x0F));
    let mut hi = _mm512_srli_epi32::<4>(v);
    if F == Q4_0 {
        let eight = _mm512_set1_epi32(8);
        lo = _mm512_sub_epi32(lo, eight);
        hi = _mm512_sub_epi32(hi, eight);
    }
    [_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi)]
}
