//! Q4_0, Q4_1 and Q8_0 weights re-laid out for the fused kernels: the quantized integers of
//! every row contiguous (16 bytes of nibbles or 32 signed bytes per block, unchanged), and the
//! block scales (`d`, and `m` for Q4_1) widened once from f16 to f32 in a separate array.
//!
//! Why: converting two f16 scales per block costs a batch-1 decode about a third of its vector
//! work, while an f32 scale is a broadcast load folded into the FMA, with no arithmetic. The
//! price is 2 more bytes per scale (Q4_1: 24 bytes per block instead of 20; Q8_0: 36 for 34).
//! Measured on SmolLM2-135M (all matrices, batch 1): f32 scales beat keeping them f16 and
//! widening a row's scales eight at a time per tile (11.6 ms against 13.4 ms per token).
//!
//! Must not know: the kernels' register tiling, threads or tensors.

use candle_core::quantized::GgmlDType;
use candle_core::{bail, Result};
use half::f16;

use super::dequant::{Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES};

/// One fused-format matrix, `rows` × `blocks_per_row` blocks.
#[derive(Debug)]
pub struct Packed {
    /// `[row][block][qs_bytes]`.
    pub qs: Vec<u8>,
    /// `[row][block][scales_per_block]`: `d`, or `d, m` for Q4_1.
    pub scales: Vec<f32>,
    pub qs_bytes: usize,
    pub scales_per_block: usize,
}

impl Packed {
    /// The rows of `parts` in order (same format and row length: the caller checks).
    pub fn stack(parts: &[&Packed]) -> Self {
        Self {
            qs: parts.iter().flat_map(|p| p.qs.iter().copied()).collect(),
            scales: parts.iter().flat_map(|p| p.scales.iter().copied()).collect(),
            qs_bytes: parts[0].qs_bytes,
            scales_per_block: parts[0].scales_per_block,
        }
    }

    /// Repacks whole rows of ggml blocks (`data` holds exactly `rows * k / 32` blocks).
    pub fn new(dtype: GgmlDType, data: &[u8], rows: usize, k: usize) -> Result<Self> {
        let (block, header, qs_bytes, scales_per_block) = match dtype {
            GgmlDType::Q4_0 => (Q4_0_BYTES, 2, 16, 1),
            GgmlDType::Q4_1 => (Q4_1_BYTES, 4, 16, 2),
            GgmlDType::Q8_0 => (Q8_0_BYTES, 2, 32, 1),
            other => bail!("no packed layout for {other:?}"),
        };
        let blocks = rows * (k / 32);
        if k % 32 != 0 || data.len() != blocks * block {
            bail!("pack {dtype:?}: {} bytes do not hold {rows} rows of {k}", data.len())
        }
        let mut qs = Vec::with_capacity(blocks * qs_bytes);
        let mut scales = Vec::with_capacity(blocks * scales_per_block);
        for blk in data.chunks_exact(block) {
            for s in 0..scales_per_block {
                scales.push(f16::from_le_bytes([blk[2 * s], blk[2 * s + 1]]).to_f32());
            }
            qs.extend_from_slice(&blk[header..]);
        }
        Ok(Self { qs, scales, qs_bytes, scales_per_block })
    }

    /// Heap bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.qs.len() + self.scales.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    #[test]
    fn packed_blocks_hold_the_same_scales_and_integers() {
        let w: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let t = Tensor::from_vec(w, (2, 64), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4_1).unwrap();
        let data = q.data().unwrap();
        let p = Packed::new(GgmlDType::Q4_1, &data, 2, 64).unwrap();
        assert_eq!((p.qs.len(), p.scales.len()), (4 * 16, 4 * 2));
        // Third block: scales from its header, integers from its body.
        let blk = &data[2 * Q4_1_BYTES..3 * Q4_1_BYTES];
        assert_eq!(p.scales[4], f16::from_le_bytes([blk[0], blk[1]]).to_f32());
        assert_eq!(p.scales[5], f16::from_le_bytes([blk[2], blk[3]]).to_f32());
        assert_eq!(&p.qs[32..48], &blk[4..]);
        assert!(Packed::new(GgmlDType::Q4_1, &data[1..], 2, 64).is_err());
        assert!(Packed::new(GgmlDType::Q4K, &data, 2, 64).is_err());
    }
}
