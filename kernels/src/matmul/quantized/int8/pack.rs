//! Q4_0, Q4_1 and Q8_0 weights re-laid out for the int8-activation kernels, blocks taken in
//! pairs so one 512-bit (or two 256-bit) integer dot products cover two whole blocks:
//!
//! ```text
//! Q4_0 / Q4_1, per pair (b, b+1): 32 bytes, byte i = q[b][i] | q[b+1][i] << 4
//!     -> `v & 0xF` is block b's 32 integers in order, `v >> 4 & 0xF` block b+1's
//! Q8_0, per pair: 64 bytes, q[b][0..32] then q[b+1][0..32], each stored as q ^ 0x80 (= q + 128, unsigned)
//! scales, per pair: four f16 [d_b, d_b+1, m_b, m_b+1] (m = 0 unless Q4_1)
//! ```
//!
//! Rows with an odd number of blocks get a zero block at the end (zero integers, zero scales),
//! so the kernels only ever see whole pairs. Scales stay f16, as in the file: a batch-1 decode
//! streams every weight once, and four bytes per block more (f32) would be a fifth more traffic
//! for Q4_1; widening four f16 values is one instruction per pair.
//!
//! Must not know: activations, registers or threads.

use candle_core::quantized::GgmlDType;
use candle_core::{bail, Result};

use super::super::dequant::{Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES};
use super::Format;

/// One matrix in the pair layout, `rows` × `pairs` pairs of blocks.
#[derive(Debug)]
pub struct Packed {
    pub format: Format,
    /// `[row][pair][pair_bytes]`.
    pub qs: Vec<u8>,
    /// `[row][pair][4]` f16 bits.
    pub scales: Vec<u16>,
    pub pairs: usize,
}

impl Packed {
    /// The rows of `parts` in order (same format and row length: the caller checks).
    pub fn stack(parts: &[&Packed]) -> Self {
        Self {
            format: parts[0].format,
            qs: parts.iter().flat_map(|p| p.qs.iter().copied()).collect(),
            scales: parts.iter().flat_map(|p| p.scales.iter().copied()).collect(),
            pairs: parts[0].pairs,
        }
    }

    /// Repacks whole rows of ggml blocks (`data` holds exactly `rows * k / 32` blocks).
    pub fn new(dtype: GgmlDType, data: &[u8], rows: usize, k: usize) -> Result<Self> {
        let (format, block) = match dtype {
            GgmlDType::Q4_0 => (Format::Q4_0, Q4_0_BYTES),
            GgmlDType::Q4_1 => (Format::Q4_1, Q4_1_BYTES),
            GgmlDType::Q8_0 => (Format::Q8_0, Q8_0_BYTES),
            other => bail!("no int8 layout for {other:?}"),
        };
        let nb = k / 32;
        if k % 32 != 0 || data.len() != rows * nb * block {
            bail!("int8 pack {dtype:?}: {} bytes do not hold {rows} rows of {k}", data.len())
        }
        let pairs = nb.div_ceil(2);
        let pb = format.pair_bytes();
        let mut qs = vec![0u8; rows * pairs * pb];
        let mut scales = vec![0u16; rows * pairs * 4];
        for (row, bytes) in data.chunks_exact(nb * block).enumerate() {
            for (b, blk) in bytes.chunks_exact(block).enumerate() {
                let (p, half) = (row * pairs + b / 2, b % 2);
                let f16_at = |i: usize| u16::from_le_bytes([blk[i], blk[i + 1]]);
                scales[p * 4 + half] = f16_at(0);
                if format == Format::Q4_1 {
                    scales[p * 4 + 2 + half] = f16_at(2);
                }
                let dst = &mut qs[p * pb..(p + 1) * pb];
                match format {
                    Format::Q8_0 => {
                        for (i, &q) in blk[2..].iter().enumerate() {
                            dst[half * 32 + i] = q ^ 0x80;
                        }
                    }
                    _ => {
                        // ggml byte i holds element i (low nibble) and element i + 16 (high).
                        let nibbles = &blk[block - 16..];
                        for i in 0..32 {
                            let q = if i < 16 { nibbles[i] & 0x0F } else { nibbles[i - 16] >> 4 };
                            dst[i] |= q << (4 * half);
                        }
                    }
                }
            }
        }
        if format == Format::Q8_0 && nb % 2 == 1 {
            // The padding block's integers are zero: stored as 0 ^ 0x80.
            for row in 0..rows {
                let p = row * pairs + pairs - 1;
                qs[p * pb + 32..(p + 1) * pb].fill(0x80);
            }
        }
        Ok(Self { format, qs, scales, pairs })
    }

    /// The integer of element `i` of block `b` of `row`, as ggml defines it (`q - 8` for Q4_0).
    pub fn value(&self, row: usize, b: usize, i: usize) -> i32 {
        let p = row * self.pairs + b / 2;
        let bytes = &self.qs[p * self.format.pair_bytes()..];
        match self.format {
            Format::Q8_0 => (bytes[(b % 2) * 32 + i] ^ 0x80) as i8 as i32,
            f => ((bytes[i] >> (4 * (b % 2))) & 0x0F) as i32 - if f == Format::Q4_0 { 8 } else { 0 },
        }
    }

    /// Heap bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.qs.len() + self.scales.len() * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    #[test]
    fn every_weight_reads_back_as_the_dequantized_value() {
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // Three blocks per row: one pair and one padded pair.
            let (rows, k) = (3, 96);
            let w: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let t = Tensor::from_vec(w, (rows, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&t, dtype).unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
            let p = Packed::new(dtype, &q.data().unwrap(), rows, k).unwrap();
            assert_eq!(p.pairs, 2);
            for (r, row) in want.iter().enumerate() {
                for (e, &v) in row.iter().enumerate() {
                    let (b, i) = (e / 32, e % 32);
                    let s = &p.scales[(r * 2 + b / 2) * 4..];
                    let d = half::f16::from_bits(s[b % 2]).to_f32();
                    let m = half::f16::from_bits(s[2 + b % 2]).to_f32();
                    let got = p.value(r, b, i) as f32 * d + m;
                    assert_eq!(got, v, "{dtype:?} row {r} element {e}");
                }
                // The padding block is all zeros.
                assert!((0..32).all(|i| p.value(r, 3, i) == if dtype == GgmlDType::Q4_0 { -8 } else { 0 }));
                assert_eq!(p.scales[(r * 2 + 1) * 4 + 1], 0);
            }
        }
        assert!(Packed::new(GgmlDType::Q4K, &[0; 144], 1, 256).is_err());
    }
}
