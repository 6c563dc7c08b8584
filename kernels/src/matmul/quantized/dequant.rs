//! Whole rows of a ggml quantized matrix expanded to f32, exactly as ggml defines each format.
//!
//! Owns: the byte-level view of ggml blocks (sizes, a checked cast of raw bytes to candle's
//! block structs) and the f32 value of every weight. Q4_0, Q4_1 and Q8_0 — the formats with a
//! register-fused decode kernel — are expanded here with the very arithmetic that kernel uses
//! (`(q - 8) * d`, `q * d + m` as a multiply then an add, `q * d`), so the decode and the
//! prefill paths see bit-identical weights. Every other type goes through candle's reference
//! `GgmlType::to_float` on the borrowed block slice (no copy of the quantized bytes).
//!
//! Must not know: activations, matmul tiling or threads.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_1, GgmlType,
};
use candle_core::quantized::GgmlDType;
use candle_core::{bail, Result};
use half::{bf16, f16};

/// Bytes of one Q4_0 block: f16 scale, 16 bytes of nibbles.
pub const Q4_0_BYTES: usize = 18;
/// Bytes of one Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
pub const Q4_1_BYTES: usize = 20;
/// Bytes of one Q8_0 block: f16 scale, 32 signed bytes.
pub const Q8_0_BYTES: usize = 34;

/// Expands `out.len()` weights from `bytes`, which must hold exactly that many elements as
/// whole blocks of `dtype` (callers slice whole rows, so this holds by construction; a
/// mismatch is reported, not trusted).
pub fn dequantize(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let bs = dtype.block_size();
    if out.len() % bs != 0 || bytes.len() != out.len() / bs * dtype.type_size() {
        bail!("dequantize {dtype:?}: {} bytes do not hold {} elements", bytes.len(), out.len())
    }
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0 => {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 is present; the body is the portable code compiled for it.
                    unsafe { simple_avx2(dtype, bytes, out) };
                    return Ok(());
                }
            }
            simple(dtype, bytes, out);
            Ok(())
        }
        GgmlDType::Q5_0 => via_candle::<BlockQ5_0>(bytes, out),
        GgmlDType::Q5_1 => via_candle::<BlockQ5_1>(bytes, out),
        GgmlDType::Q8_1 => via_candle::<BlockQ8_1>(bytes, out),
        GgmlDType::Q2K => via_candle::<BlockQ2K>(bytes, out),
        GgmlDType::Q3K => via_candle::<BlockQ3K>(bytes, out),
        GgmlDType::Q4K => via_candle::<BlockQ4K>(bytes, out),
        GgmlDType::Q5K => via_candle::<BlockQ5K>(bytes, out),
        GgmlDType::Q6K => via_candle::<BlockQ6K>(bytes, out),
        GgmlDType::Q8K => via_candle::<BlockQ8K>(bytes, out),
        GgmlDType::F32 => via_candle::<f32>(bytes, out),
        GgmlDType::F16 => via_candle::<f16>(bytes, out),
        GgmlDType::BF16 => via_candle::<bf16>(bytes, out),
    }
}

/// Candle's reference dequantizer on the bytes viewed in place as blocks of `T`.
fn via_candle<T: GgmlType>(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let size = std::mem::size_of::<T>();
    if bytes.len() % size != 0 || bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 {
        bail!("dequantize {:?}: block data is misaligned or truncated", T::DTYPE)
    }
    // SAFETY: size and alignment checked above; ggml blocks are `repr(C)` structs of plain
    // numbers (f16/f32 scales, byte arrays) for which every bit pattern is a valid value, and the
    // slice borrows `bytes` for its whole use.
    let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) };
    T::to_float(blocks, out);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn simple_avx2(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) {
    simple(dtype, bytes, out)
}

#[inline]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_0 / Q4_1 / Q8_0, written so LLVM vectorizes the 32-element blocks. Elements 0..16 of a
/// nibble block are the low nibbles of its 16 bytes, 16..32 the high ones.
#[inline(always)]
fn simple(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlDType::Q4_0 => {
            for (blk, y) in bytes.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(32)) {
                let d = half_at(blk, 0);
                let (lo, hi) = y.split_at_mut(16);
                for j in 0..16 {
                    let q = blk[2 + j];
                    lo[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                    hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlDType::Q4_1 => {
            for (blk, y) in bytes.chunks_exact(Q4_1_BYTES).zip(out.chunks_exact_mut(32)) {
                let (d, m) = (half_at(blk, 0), half_at(blk, 2));
                let (lo, hi) = y.split_at_mut(16);
                for j in 0..16 {
                    let q = blk[4 + j];
                    // A multiply, then an add — never fused: ggml's rounding of the weight.
                    lo[j] = (q & 0x0F) as f32 * d + m;
                    hi[j] = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlDType::Q8_0 => {
            for (blk, y) in bytes.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(32)) {
                let d = half_at(blk, 0);
                for j in 0..32 {
                    y[j] = (blk[2 + j] as i8) as f32 * d;
                }
            }
        }
        // `dequantize` routes only the three formats above here.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn random_weights(n: usize, k: usize) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let v: Vec<f32> = (0..n * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap()
    }

    #[test]
    fn every_type_expands_bit_identically_to_candles_dequantize() {
        use GgmlDType::*;
        for dtype in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, F16, BF16, F32] {
            let (n, k) = (3, 512);
            let q = QTensor::quantize(&random_weights(n, k), dtype).unwrap();
            let want: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let data = q.data().unwrap();
            let mut got = vec![0f32; n * k];
            dequantize(dtype, &data, &mut got).unwrap();
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{dtype:?} differs from candle's dequantization");
            // The portable path (no AVX2) must give the same bits as the vectorized one.
            if matches!(dtype, Q4_0 | Q4_1 | Q8_0) {
                let mut portable = vec![0f32; n * k];
                simple(dtype, &data, &mut portable);
                assert!(portable.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype:?}");
            }
        }
    }

    #[test]
    fn truncated_block_data_is_an_error() {
        let q = QTensor::quantize(&random_weights(2, 256), GgmlDType::Q4K).unwrap();
        let data = q.data().unwrap();
        let mut out = vec![0f32; 512];
        assert!(dequantize(GgmlDType::Q4K, &data[..data.len() - 1], &mut out).is_err());
        let q8 = QTensor::quantize(&random_weights(1, 32), GgmlDType::Q8_0).unwrap();
        let mut one = vec![0f32; 64];
        assert!(dequantize(GgmlDType::Q8_0, &q8.data().unwrap(), &mut one).is_err());
    }
}
