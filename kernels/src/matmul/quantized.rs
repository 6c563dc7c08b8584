//! `y = x Wᵀ` with W in a ggml quantized format and x in f32: no activation quantization.
//!
//! Each group of weight rows is dequantized into a small f32 buffer exactly as ggml defines the
//! format (the same arithmetic as candle's and gguf-py's dequantizers: `d * q (+ m)`, multiply
//! then add), then multiplied with the dense kernel's canonical dot. So a quantized model gives
//! bit for bit what the same model dequantized to f32 gives, and every token's result is
//! independent of the batch. Weights stay quantized in memory: only a few rows are ever expanded.
//!
//! Q4_0, Q4_1 and Q8_0 have hand-written dequantizers compiled for AVX2 when the CPU has it;
//! every other ggml type is dequantized through candle's own routines.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 32;
/// Weight rows dequantized together (the dense tile width).
const ROWS_PER_GROUP: usize = 4;

/// A `[out_dim, in_dim]` matrix in a ggml quantized format.
#[derive(Clone, Debug)]
pub struct QuantizedMatrix {
    q: Arc<QTensor>,
    out_dim: usize,
    in_dim: usize,
    row_bytes: usize,
}

impl QuantizedMatrix {
    pub fn new(q: Arc<QTensor>) -> Result<Self> {
        let (out_dim, in_dim) = q.shape().dims2()?;
        let dtype = q.dtype();
        if in_dim % dtype.block_size() != 0 {
            bail!("quantized matrix: row length {in_dim} is not a multiple of the {dtype:?} block size")
        }
        let row_bytes = in_dim / dtype.block_size() * dtype.type_size();
        Ok(Self { q, out_dim, in_dim, row_bytes })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.q.dtype()
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn qtensor(&self) -> &Arc<QTensor> {
        &self.q
    }

    /// `x`: `[tokens, in_dim]` f32 → `[tokens, out_dim]` f32.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }

    fn run(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        {
            if m <= super::fused::MAX_ROWS
                && super::fused::supported(self.dtype())
                && super::avx2_fma()
                && std::is_x86_feature_detected!("f16c")
            {
                return self.run_fused(x, m);
            }
        }
        self.run_tiled(x, m)
    }

    /// Decode batches: weights dequantized in registers, streamed once.
    #[cfg(target_arch = "x86_64")]
    fn run_fused(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let data = self.q.data()?;
        let (n, k, rb) = (self.out_dim, self.in_dim, self.row_bytes);
        let dtype = self.dtype();
        // Row-major [n, m] per task, transposed into [m, n] at the end.
        let mut by_row = vec![0f32; n * m];
        let row = |c: usize| &data[c * rb..(c + 1) * rb];
        by_row.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(t, chunk)| {
            let first = t * ROWS_PER_TASK;
            let mut i = 0;
            if m == 1 {
                while i + 4 <= chunk.len() {
                    let c = first + i;
                    // SAFETY: AVX2/FMA/F16C checked by the caller; rows hold k/32 whole blocks.
                    let four = unsafe {
                        super::fused::four_rows_one_x(dtype, [row(c), row(c + 1), row(c + 2), row(c + 3)], x, k)
                    };
                    chunk[i..i + 4].copy_from_slice(&four);
                    i += 4;
                }
            }
            for (j, out) in chunk[i..].chunks_mut(m).enumerate() {
                let c = first + i / m + j;
                // SAFETY: as above.
                unsafe { super::fused::row_dots(dtype, row(c), x, m, k, out) };
            }
        });
        if m == 1 {
            return Ok(by_row);
        }
        let mut out = vec![0f32; m * n];
        for c in 0..n {
            for r in 0..m {
                out[r * n + c] = by_row[c * m + r];
            }
        }
        Ok(out)
    }

    /// Prefill batches: a few rows dequantized at a time, multiplied as a dense tile.
    fn run_tiled(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let data = self.q.data()?;
        let (n, k) = (self.out_dim, self.in_dim);
        let dtype = self.dtype();
        let tasks: Vec<(usize, Vec<f32>)> = (0..n)
            .step_by(ROWS_PER_TASK)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|c0| {
                let c1 = (c0 + ROWS_PER_TASK).min(n);
                let mut part = vec![0f32; m * (c1 - c0)];
                let mut wbuf = vec![0f32; ROWS_PER_GROUP * k];
                let mut tile = vec![0f32; m * ROWS_PER_GROUP];
                let mut c = c0;
                while c < c1 {
                    let rows = ROWS_PER_GROUP.min(c1 - c);
                    let bytes = &data[c * self.row_bytes..(c + rows) * self.row_bytes];
                    dequantize_rows(dtype, bytes, &mut wbuf[..rows * k])?;
                    super::dense::block_into(x, &wbuf[..rows * k], m, k, rows, &mut tile[..m * rows]);
                    let width = c1 - c0;
                    for r in 0..m {
                        part[r * width + (c - c0)..r * width + (c - c0) + rows]
                            .copy_from_slice(&tile[r * rows..(r + 1) * rows]);
                    }
                    c += rows;
                }
                Ok((c0, part))
            })
            .collect::<Result<_>>()?;
        let mut out = vec![0f32; m * n];
        for (c0, part) in tasks {
            let width = part.len() / m.max(1);
            for r in 0..m {
                out[r * n + c0..r * n + c0 + width].copy_from_slice(&part[r * width..(r + 1) * width]);
            }
        }
        Ok(out)
    }
}

impl CustomOp1 for QuantizedMatrix {
    fn name(&self) -> &'static str {
        "kvault-quantized-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else { bail!("quantized matmul: f32 activations required") };
        let (m, k) = l.shape().dims2()?;
        if k != self.in_dim {
            bail!("quantized matmul: x has {k} columns, W has {}", self.in_dim)
        }
        let Some((a, b)) = l.contiguous_offsets() else { bail!("quantized matmul: x must be contiguous") };
        let out = self.run(&x[a..b], m)?;
        Ok((CpuStorage::F32(out), Shape::from((m, self.out_dim))))
    }
}

/// Dequantizes whole rows (`bytes` holds complete blocks) into `out`.
pub fn dequantize_rows(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2_fma() && matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0) {
            // SAFETY: AVX2 checked; the body is the portable code, only compiled for AVX2.
            return unsafe { dequantize_simple_avx2(dtype, bytes, out) };
        }
    }
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0 => dequantize_simple(dtype, bytes, out),
        other => {
            let storage = other.from_data(Cow::Borrowed(bytes));
            match storage.dequantize(out.len())? {
                CpuStorage::F32(v) => out.copy_from_slice(&v),
                _ => bail!("dequantize {other:?}: unexpected output type"),
            }
            Ok(())
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequantize_simple_avx2(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    dequantize_simple(dtype, bytes, out)
}

/// Q4_0, Q4_1 and Q8_0, written so LLVM vectorizes the 32-element blocks. Multiply then add,
/// never fused: that is the rounding of the reference dequantizers.
#[inline(always)]
fn dequantize_simple(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match dtype {
        GgmlDType::Q4_0 => {
            for (blk, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                let d = f16_at(blk, 0);
                let qs = &blk[2..18];
                let (lo, hi) = y.split_at_mut(16);
                for j in 0..16 {
                    lo[j] = ((qs[j] & 0x0F) as i16 - 8) as f32 * d;
                    hi[j] = ((qs[j] >> 4) as i16 - 8) as f32 * d;
                }
            }
        }
        GgmlDType::Q4_1 => {
            for (blk, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let qs = &blk[4..20];
                let (lo, hi) = y.split_at_mut(16);
                for j in 0..16 {
                    lo[j] = (qs[j] & 0x0F) as f32 * d + m;
                    hi[j] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlDType::Q8_0 => {
            for (blk, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                let d = f16_at(blk, 0);
                for j in 0..32 {
                    y[j] = (blk[2 + j] as i8) as f32 * d;
                }
            }
        }
        other => bail!("no hand-written dequantizer for {other:?}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn check(dtype: GgmlDType, n: usize, k: usize, m: usize) {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(random(n * k, 1), (n, k), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
        let dense_w = q.dequantize(&dev).unwrap();
        let x = Tensor::from_vec(random(m * k, 2), (m, k), &dev).unwrap();
        let qm = QuantizedMatrix::new(q).unwrap();
        let got = qm.matmul(&x).unwrap().to_vec2::<f32>().unwrap();
        // Bit-identical to the dense kernel on candle's dequantized weights.
        let want = crate::matmul::matmul_bt(&x, &dense_w).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got, want, "{dtype:?} n={n} k={k} m={m}");
        // And one row alone equals the same row in the batch.
        let last = x.narrow(0, m - 1, 1).unwrap();
        assert_eq!(qm.matmul(&last).unwrap().to_vec2::<f32>().unwrap()[0], got[m - 1]);
    }

    #[test]
    fn quantized_matmul_is_bit_identical_to_dense_on_dequantized_weights() {
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // 1..=4 rows take the fused decode path, 6 the tiled one: both must agree with dense.
            for m in [1, 2, 3, 4, 6] {
                check(dtype, 70, 64, m);
                check(dtype, 37, 96, m);
            }
        }
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            check(dtype, 9, 256, 3);
        }
    }

    #[test]
    fn wrong_input_width_is_an_error() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(random(4 * 32, 1), (4, 32), &dev).unwrap();
        let qm = QuantizedMatrix::new(Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap())).unwrap();
        let x = Tensor::from_vec(random(16, 2), (1, 16), &dev).unwrap();
        assert!(qm.matmul(&x).is_err());
    }
}
