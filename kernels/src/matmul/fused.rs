//! Decode-sized batches (up to [`MAX_ROWS`] rows of x) against Q4_0, Q4_1 or Q8_0 weights with
//! AVX2: each 32-element block is expanded into four vectors of weights in registers and
//! multiplied straight into every row's accumulator, so the weights stream from memory once and
//! are never written back as f32. The arithmetic is exactly the canonical dot's — weights
//! rounded as `q * d (+ m)`, lanes accumulated in K order with FMA, the same reduction tree —
//! so results are bit-identical to the dequantize-then-dot path.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use candle_core::quantized::GgmlDType;

/// Largest batch the fused path takes; larger batches amortize a dequantized tile instead.
pub const MAX_ROWS: usize = 4;

pub fn supported(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0)
}

/// `out[r] = dot(x[r], dequantized row)` for the `m ≤ MAX_ROWS` rows of `x` (`[m, k]`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `row` must hold exactly `k / 32` blocks of `dtype`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn row_dots(dtype: GgmlDType, row: &[u8], x: &[f32], m: usize, k: usize, out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); MAX_ROWS];
    let blocks = k / 32;
    let xp = x.as_ptr();
    for b in 0..blocks {
        let w = match dtype {
            GgmlDType::Q4_0 => q4_0(row.as_ptr().add(b * 18)),
            GgmlDType::Q4_1 => q4_1(row.as_ptr().add(b * 20)),
            _ => q8_0(row.as_ptr().add(b * 34)),
        };
        for r in 0..m {
            let xr = xp.add(r * k + b * 32);
            for (c, wc) in w.iter().enumerate() {
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(c * 8)), *wc, acc[r]);
            }
        }
    }
    for r in 0..m {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
        out[r] = super::reduce8(lanes);
    }
}

/// One row of x against four weight rows at once: four independent FMA chains hide the FMA
/// latency that a single chain (one x row, one weight row) is bound by. Per element the
/// arithmetic is unchanged.
///
/// # Safety
/// As [`row_dots`]; each of `rows` holds exactly `k / 32` blocks of `dtype`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn four_rows_one_x(dtype: GgmlDType, rows: [&[u8]; 4], x: &[f32], k: usize) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let xp = x.as_ptr();
    for b in 0..k / 32 {
        let xs = [
            _mm256_loadu_ps(xp.add(b * 32)),
            _mm256_loadu_ps(xp.add(b * 32 + 8)),
            _mm256_loadu_ps(xp.add(b * 32 + 16)),
            _mm256_loadu_ps(xp.add(b * 32 + 24)),
        ];
        for (j, row) in rows.iter().enumerate() {
            let w = match dtype {
                GgmlDType::Q4_0 => q4_0(row.as_ptr().add(b * 18)),
                GgmlDType::Q4_1 => q4_1(row.as_ptr().add(b * 20)),
                _ => q8_0(row.as_ptr().add(b * 34)),
            };
            acc[j] = _mm256_fmadd_ps(xs[0], w[0], acc[j]);
            acc[j] = _mm256_fmadd_ps(xs[1], w[1], acc[j]);
            acc[j] = _mm256_fmadd_ps(xs[2], w[2], acc[j]);
            acc[j] = _mm256_fmadd_ps(xs[3], w[3], acc[j]);
        }
    }
    let mut out = [0f32; 4];
    for j in 0..4 {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[j]);
        out[j] = super::reduce8(lanes);
    }
    out
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half(p: *const u8) -> __m256 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    let v = _mm_cvtph_ps(_mm_set1_epi16(bits as i16));
    _mm256_set1_ps(_mm_cvtss_f32(v))
}

/// Elements 0..8, 8..16 from the low nibbles of bytes 0..8, 8..16; 16..32 from the high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: *const u8) -> [__m256i; 4] {
    let q = _mm_loadu_si128(qs as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    [
        _mm256_cvtepu8_epi32(lo),
        _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
        _mm256_cvtepu8_epi32(hi),
        _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)),
    ]
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0(blk: *const u8) -> [__m256; 4] {
    let d = half(blk);
    let eight = _mm256_set1_epi32(8);
    let n = nibbles(blk.add(2));
    // No closures here: they would not inherit the caller's target features.
    [
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(n[0], eight)), d),
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(n[1], eight)), d),
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(n[2], eight)), d),
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(n[3], eight)), d),
    ]
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1(blk: *const u8) -> [__m256; 4] {
    let (d, m) = (half(blk), half(blk.add(2)));
    let n = nibbles(blk.add(4));
    // Multiply then add, unfused: the reference dequantizers' rounding.
    [
        _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(n[0]), d), m),
        _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(n[1]), d), m),
        _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(n[2]), d), m),
        _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(n[3]), d), m),
    ]
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0(blk: *const u8) -> [__m256; 4] {
    let d = half(blk);
    let qs = blk.add(2);
    [
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(qs as *const __m128i))), d),
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(qs.add(8) as *const __m128i))), d),
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(qs.add(16) as *const __m128i))), d),
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(qs.add(24) as *const __m128i))), d),
    ]
}
