//! Decode-sized batches of x against Q4_0, Q4_1 or Q8_0 weights with AVX2+FMA: every 32-weight
//! block is unpacked into registers ONCE and multiplied into the accumulators of every x row,
//! so a decode step streams the quantized weights from memory exactly once and never writes
//! them back as f32.
//!
//! Owns: the register tiling (how many weight rows and x rows share one pass) and the in-register
//! unpacking of the three formats. The arithmetic is pinned: each weight is rounded exactly as
//! [`super::dequant`] rounds it, and each output element is the canonical lane sequence of
//! `crate::matmul::dot` (eight FMA lanes in K order, then its fixed reduction tree). So this path,
//! the prefill GEMM and the dense matmul on dequantized weights agree bit for bit, whatever
//! the batch.
//!
//! Must not know: threads, tensors, or which layer is being computed.

use std::arch::x86_64::*;

use candle_core::quantized::GgmlDType;

use super::dequant::{Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES};

/// x rows handled by one register pass; larger batches are split into groups of this size.
pub const MAX_GROUP: usize = 8;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// True when `dtype` has a fused kernel and this CPU can run it.
pub fn available(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// `out[j * m + r]` = x row `r` · weight row `j`, for every weight row in `rows`.
///
/// # Safety
/// `available(dtype)` must hold; `k` is a multiple of 32; `rows` holds whole rows of `k / 32`
/// blocks of `dtype`; `x` holds `m * k` values; `out` holds `m` values per weight row.
pub unsafe fn rows_dot(dtype: GgmlDType, rows: &[u8], x: &[f32], m: usize, k: usize, out: &mut [f32]) {
    match dtype {
        GgmlDType::Q4_0 => by_group::<Q4_0>(rows, x, m, k, out),
        GgmlDType::Q4_1 => by_group::<Q4_1>(rows, x, m, k, out),
        _ => by_group::<Q8_0>(rows, x, m, k, out),
    }
}

const fn block_bytes(f: u8) -> usize {
    match f {
        Q4_0 => Q4_0_BYTES,
        Q4_1 => Q4_1_BYTES,
        _ => Q8_0_BYTES,
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn by_group<const F: u8>(rows: &[u8], x: &[f32], m: usize, k: usize, out: &mut [f32]) {
    let mut r0 = 0;
    while r0 < m {
        let g = (m - r0).min(MAX_GROUP);
        let xg = &x[r0 * k..(r0 + g) * k];
        // Enough independent accumulators to hide the FMA latency (4 cycles, 2 per cycle):
        // with one x row, four weight rows run side by side.
        match g {
            1 => tiles::<F, 4, 1>(rows, xg, k, out, m, r0),
            2 => tiles::<F, 2, 2>(rows, xg, k, out, m, r0),
            3 => tiles::<F, 2, 3>(rows, xg, k, out, m, r0),
            4 => tiles::<F, 1, 4>(rows, xg, k, out, m, r0),
            5 => tiles::<F, 1, 5>(rows, xg, k, out, m, r0),
            6 => tiles::<F, 1, 6>(rows, xg, k, out, m, r0),
            7 => tiles::<F, 1, 7>(rows, xg, k, out, m, r0),
            _ => tiles::<F, 1, 8>(rows, xg, k, out, m, r0),
        }
        r0 += g;
    }
}

/// All weight rows against `MR` x rows, `NR` weight rows per pass.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiles<const F: u8, const NR: usize, const MR: usize>(
    rows: &[u8],
    x: &[f32],
    k: usize,
    out: &mut [f32],
    stride: usize,
    col: usize,
) {
    let rb = k / 32 * block_bytes(F);
    let nrows = rows.len() / rb;
    let mut j = 0;
    while j + NR <= nrows {
        let t = tile::<F, NR, MR>(rows.as_ptr().add(j * rb), rb, x.as_ptr(), k);
        for (a, row) in t.iter().enumerate() {
            out[(j + a) * stride + col..(j + a) * stride + col + MR].copy_from_slice(row);
        }
        j += NR;
    }
    while j < nrows {
        let t = tile::<F, 1, MR>(rows.as_ptr().add(j * rb), rb, x.as_ptr(), k);
        out[j * stride + col..j * stride + col + MR].copy_from_slice(&t[0]);
        j += 1;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const F: u8, const NR: usize, const MR: usize>(
    w: *const u8,
    rb: usize,
    x: *const f32,
    k: usize,
) -> [[f32; MR]; NR] {
    let bb = block_bytes(F);
    let mut acc = [[_mm256_setzero_ps(); MR]; NR];
    for b in 0..k / 32 {
        for (j, acc_j) in acc.iter_mut().enumerate() {
            let wv = expand::<F>(w.add(j * rb + b * bb));
            for (r, a) in acc_j.iter_mut().enumerate() {
                let xr = x.add(r * k + b * 32);
                for (c, wc) in wv.iter().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(c * 8)), *wc, *a);
                }
            }
        }
    }
    let mut out = [[0f32; MR]; NR];
    for j in 0..NR {
        for r in 0..MR {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[j][r]);
            out[j][r] = crate::matmul::reduce8(lanes);
        }
    }
    out
}

/// The f16 at `p` (little-endian), broadcast to all lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale(p: *const u8) -> __m256 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    _mm256_broadcastss_ps(v)
}

/// The 32 weights of one block, as four vectors in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expand<const F: u8>(blk: *const u8) -> [__m256; 4] {
    match F {
        Q8_0 => {
            let d = scale(blk);
            let q = blk.add(2);
            let mut w = [_mm256_setzero_ps(); 4];
            for (c, wc) in w.iter_mut().enumerate() {
                let v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(c * 8) as *const __m128i));
                *wc = _mm256_mul_ps(_mm256_cvtepi32_ps(v), d);
            }
            w
        }
        _ => {
            // Byte i holds element i (low nibble) and element i + 16 (high nibble): widen
            // bytes 0..8 and 8..16 to 32-bit lanes once, then split each into its two nibbles.
            let qs = blk.add(if F == Q4_1 { 4 } else { 2 });
            let b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs as *const __m128i));
            let b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(8) as *const __m128i));
            let low = _mm256_set1_epi32(0x0F);
            let mut n = [
                _mm256_and_si256(b0, low),
                _mm256_and_si256(b1, low),
                _mm256_srli_epi32::<4>(b0),
                _mm256_srli_epi32::<4>(b1),
            ];
            let d = scale(blk);
            let mut w = [_mm256_setzero_ps(); 4];
            if F == Q4_1 {
                let m = scale(blk.add(2));
                for (wc, nc) in w.iter_mut().zip(n) {
                    // Multiply, then add — unfused, as ggml rounds the weight.
                    *wc = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(nc), d), m);
                }
            } else {
                let eight = _mm256_set1_epi32(8);
                for nc in n.iter_mut() {
                    *nc = _mm256_sub_epi32(*nc, eight);
                }
                for (wc, nc) in w.iter_mut().zip(n) {
                    *wc = _mm256_mul_ps(_mm256_cvtepi32_ps(nc), d);
                }
            }
            w
        }
    }
}
