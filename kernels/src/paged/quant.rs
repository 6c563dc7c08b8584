//! Quantized cache rows (ALGORITHMS.md §5.2): symmetric per-(token, KV head) int8 and fp8 e4m3.
//!
//! A row is `head_dim` one-byte codes then the f32 scale (little-endian). Writing quantizes once
//! (`write_kv`); nothing ever requantizes. Readers take the codes as f32 and the scale separately,
//! so attention multiplies the scale after the q·k dot for K and folds it into the probability
//! for V, never materialising a dequantized row.
//!
//! Every step is specified so the CUDA twin (kernels/cuda/kv_quant.cuh) gives the same bits:
//! the max is exact, the scale is one IEEE division, codes round half-to-even, fp8 encoding is
//! exact power-of-two scaling plus one rounding.
//!
//! Owns: the code formats. Must not know: cache layout, blocks or attention.

use super::kv_dtype::{KvDtype, SCALE_BYTES};

/// Largest int8 code (symmetric: -127..=127, -128 unused).
const INT8_MAX: f32 = 127.0;
/// Largest finite e4m3 value.
pub const FP8_MAX: f32 = 448.0;

/// Quantizes `x` (`head_dim` values) into `row` (`head_dim + 4` bytes). A zero row gets scale 0.
pub fn quantize_row(kind: KvDtype, x: &[f32], row: &mut [u8]) {
    debug_assert_eq!(row.len(), x.len() + SCALE_BYTES);
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (codes, scale_bytes) = row.split_at_mut(x.len());
    let scale = match kind {
        KvDtype::Int8 => amax / INT8_MAX,
        KvDtype::Fp8 => amax / FP8_MAX,
        _ => unreachable!("quantize_row is only called for quantized dtypes"),
    };
    scale_bytes.copy_from_slice(&scale.to_le_bytes());
    if scale == 0.0 {
        codes.fill(0);
        return;
    }
    match kind {
        KvDtype::Int8 => {
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = ((v / scale).round_ties_even().clamp(-INT8_MAX, INT8_MAX) as i8) as u8;
            }
        }
        _ => {
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = fp8_encode(v / scale);
            }
        }
    }
}

/// The row's scale.
#[inline(always)]
pub fn row_scale(row: &[u8]) -> f32 {
    let n = row.len() - SCALE_BYTES;
    f32::from_le_bytes([row[n], row[n + 1], row[n + 2], row[n + 3]])
}

/// The row's codes as f32 into `out` (`head_dim` long), unscaled; returns the scale.
#[inline(always)]
pub fn decode_row(kind: KvDtype, row: &[u8], out: &mut [f32]) -> f32 {
    let codes = &row[..out.len()];
    if kind == KvDtype::Int8 {
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = c as i8 as f32;
        }
    } else {
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = FP8_TO_F32[c as usize];
        }
    }
    row_scale(row)
}

/// Dequantized row (`code · scale`), for references and tests.
pub fn dequantize_row(kind: KvDtype, row: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; row.len() - SCALE_BYTES];
    let scale = decode_row(kind, row, &mut out);
    out.iter_mut().for_each(|v| *v *= scale);
    out
}

/// `2^e` for a normal-range exponent, exactly.
#[inline(always)]
const fn pow2(e: i32) -> f32 {
    f32::from_bits(((127 + e) as u32) << 23)
}

/// f32 → e4m3 (1 sign, 4 exponent bits biased by 7, 3 mantissa bits; no infinities), rounding
/// to nearest-even and saturating at ±448. NaN maps to 0x7F.
pub fn fp8_encode(v: f32) -> u8 {
    let sign = ((v.to_bits() >> 31) as u8) << 7;
    let a = v.abs();
    if a.is_nan() {
        return 0x7F;
    }
    if a >= FP8_MAX {
        return sign | 0x7E;
    }
    if a < pow2(-6) {
        // Subnormal: multiples of 2^-9; a result of 8 is the smallest normal (0x08).
        return sign | (a * pow2(9)).round_ties_even() as u8;
    }
    let e = ((a.to_bits() >> 23) as i32) - 127; // -6..=8
    let m = (a * pow2(3 - e)).round_ties_even() as i32; // 8..=16; 16 carries into the exponent
    sign | (((e + 7) << 3) + (m - 8)) as u8
}

const fn fp8_decode(b: u8) -> f32 {
    let exp = ((b >> 3) & 0xF) as i32;
    let mant = (b & 7) as f32;
    let mag = if b & 0x7F == 0x7F {
        f32::NAN
    } else if exp == 0 {
        mant * pow2(-9)
    } else {
        (8.0 + mant) * pow2(exp - 10)
    };
    if b & 0x80 != 0 {
        -mag
    } else {
        mag
    }
}

const fn fp8_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = fp8_decode(i as u8);
        i += 1;
    }
    t
}

/// e4m3 code → f32.
pub static FP8_TO_F32: [f32; 256] = fp8_table();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_encode_is_the_nearest_code_with_ties_to_even() {
        // Brute force against the decode table: for many values the chosen code is a nearest one.
        let finite: Vec<(u8, f32)> = (0..=255u8).map(|b| (b, FP8_TO_F32[b as usize])).filter(|(_, v)| v.is_finite()).collect();
        for i in -100_000..=100_000 {
            let v = i as f32 * 0.00471;
            let code = fp8_encode(v);
            let got = FP8_TO_F32[code as usize];
            let best = finite.iter().map(|&(_, f)| (f - v.clamp(-FP8_MAX, FP8_MAX)).abs()).fold(f32::INFINITY, f32::min);
            assert!((got - v.clamp(-FP8_MAX, FP8_MAX)).abs() <= best, "{v}: code {code:#x} = {got}, best distance {best}");
        }
        for (b, v) in finite {
            if v != 0.0 {
                assert_eq!(fp8_encode(v), b, "every finite code encodes to itself ({v})");
            }
        }
        assert_eq!(FP8_TO_F32[0x7E], 448.0);
        assert_eq!(FP8_TO_F32[0x01], pow2(-9));
        assert_eq!(fp8_encode(1e6), 0x7E);
        assert_eq!(fp8_encode(-1e6), 0xFE);
        // 1.0625 sits halfway between 1.0 (mantissa 0) and 1.125 (mantissa 1): even wins.
        assert_eq!(fp8_encode(1.0625), 0x38);
    }

    #[test]
    fn int8_rows_round_trip_within_half_a_step_and_keep_the_extreme_exact() {
        let x: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.7).sin() * 3.0).collect();
        let mut row = vec![0u8; 68];
        quantize_row(KvDtype::Int8, &x, &mut row);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(row_scale(&row), amax / 127.0);
        let back = dequantize_row(KvDtype::Int8, &row);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= amax / 127.0 * 0.5 + 1e-6, "{a} vs {b}");
        }
        let i = x.iter().position(|v| v.abs() == amax).unwrap();
        assert!((back[i] - x[i]).abs() < 1e-6);
    }

    #[test]
    fn fp8_rows_have_relative_error_below_one_sixteenth() {
        let x: Vec<f32> = (0..128).map(|i| ((i as f32) * 1.3).cos() * 0.2 + 0.01).collect();
        let mut row = vec![0u8; 132];
        quantize_row(KvDtype::Fp8, &x, &mut row);
        let scale = row_scale(&row);
        for (a, b) in x.iter().zip(dequantize_row(KvDtype::Fp8, &row)) {
            // 3 mantissa bits: half an ulp is 1/16 relative; subnormals are within 2^-10·scale.
            assert!((a - b).abs() <= a.abs() / 16.0 + scale * pow2(-10), "{a} vs {b}");
        }
    }

    #[test]
    fn zero_rows_get_zero_scale_and_zero_codes() {
        for kind in [KvDtype::Int8, KvDtype::Fp8] {
            let mut row = vec![0xAAu8; 8 + 4];
            quantize_row(kind, &[0.0; 8], &mut row);
            assert!(row.iter().all(|&b| b == 0), "{kind}");
        }
    }
}
