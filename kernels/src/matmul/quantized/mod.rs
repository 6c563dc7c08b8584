//! `y = x Wᵀ` for f32 activations against a weight matrix kept in a ggml quantized format.
//!
//! Owns: [`QuantizedMatrix`] (a candle `CustomOp1` holding the quantized weights) and the
//! choice of kernel per batch size, plus the split of the work over rayon tasks by weight rows.
//! The activations are never quantized and every product is accumulated in f32.
//!
//! - Q4_0 / Q4_1 / Q8_0 on AVX2+FMA+F16C, any batch: the fused kernel ([`fused`]) unpacks each
//!   block once in registers for a group of up to 8 x rows and factors the block scale out of
//!   the dot product (512-bit vectors where the CPU has AVX-512: [`fused512`]). Results equal `x · dequantized Wᵀ` up to f32 rounding (the test bound is
//!   1e-5 of Σ|x·w|), not bit for bit: regrouping `Σ x·(d·q + m)` as `d·Σ x·q + m·Σ x` saves a
//!   third of the vector work per weight, and a batch-1 decode is bound by exactly that work.
//! - Every other format, and CPUs without AVX2: a tile of weight rows is dequantized into a
//!   per-thread f32 buffer exactly as ggml defines the format and multiplied by a register-
//!   blocked GEMM (the dense kernel's) with the canonical accumulation of `crate::matmul::dot`, so the
//!   result is bit-identical to `crate::matmul::matmul_bt(x, dequantized W)`.
//!
//! Either way each output element is computed by one fixed sequence of operations that depends
//! only on its own x row and weight row: a token gets the same bits alone, in a decode batch,
//! or inside a prefill chunk.
//!
//! With [`MatmulPrecision::Int8`] or `Int16` the Q4_0 / Q4_1 / Q8_0 matrices take [`int8`]
//! instead: x is quantized to 8 (16) bits per block (each row on its own, so batch invariance
//! still holds) and the products are integer dot products. Other formats ignore the setting.
//!
//! Must not know: models, layers, or where the weights came from (GGUF or a quantization pass).

mod dequant;
mod int8;
#[cfg(target_arch = "x86_64")]
mod driver;
#[cfg(target_arch = "x86_64")]
mod fused;
#[cfg(target_arch = "x86_64")]
mod fused512;
#[cfg(target_arch = "x86_64")]
mod pack;

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub use dequant::dequantize;

/// Weight rows per rayon task on the fused path (a multiple of its 4-row register tile).
const FUSED_ROWS_PER_TASK: usize = 32;
/// Weight rows dequantized and multiplied together on the tiled path.
const TILE_ROWS: usize = 32;

/// A `[out_dim, in_dim]` weight matrix stored in a ggml quantized format, rows contiguous.
#[derive(Clone, Debug)]
pub struct QuantizedMatrix {
    weights: Weights,
    dtype: GgmlDType,
    out_dim: usize,
    in_dim: usize,
    /// Bytes of one weight row in ggml blocks (`in_dim / block_size` blocks).
    row_bytes: usize,
}

/// Where the weights live: repacked for a fused kernel, or the ggml blocks as loaded.
#[derive(Clone, Debug)]
enum Weights {
    #[cfg(target_arch = "x86_64")]
    Packed(Arc<pack::Packed>, Fused),
    Blocks(Arc<QTensor>),
    /// The int8-dot-product layout, the kernel this CPU runs it with, and x's 8-bit levels.
    Int8(Arc<int8::Packed>, int8::Kernel, usize),
}

/// How a quantized matmul treats the activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// f32 activations, f32 products: equal to `x · dequantized Wᵀ` up to f32 rounding.
    #[default]
    Exact,
    /// x rounded to 8 bits per 32-element block (per row), integer dot products (Q4_0, Q4_1,
    /// Q8_0; other formats stay exact). Batch-invariant, and the same bits on every CPU.
    Int8,
    /// As `Int8` with x held to 16 bits as two 8-bit levels (two integer dot products): a
    /// rounding error 256 times smaller for a little more integer work.
    Int16,
}

impl MatmulPrecision {
    /// 8-bit levels x is held in on the int8 path (none on the exact one).
    fn levels(self) -> usize {
        match self {
            Self::Exact => 0,
            Self::Int8 => 1,
            Self::Int16 => 2,
        }
    }
}

impl QuantizedMatrix {
    /// Wraps a 2-D quantized tensor; rows must consist of whole blocks. Q4_0 / Q4_1 / Q8_0 on
    /// a CPU with a fused kernel are repacked once ([`pack`]) and the `QTensor` is not kept, so
    /// the weights are held once if the caller drops its own handle.
    pub fn new(q: Arc<QTensor>) -> Result<Self> {
        Self::with_precision(q, MatmulPrecision::Exact)
    }

    /// As [`Self::new`], with the activations treated as `precision` says (CPU weights only;
    /// other devices and formats without an int8 kernel keep the exact path).
    pub fn with_precision(q: Arc<QTensor>, precision: MatmulPrecision) -> Result<Self> {
        let dtype = q.dtype();
        let (out_dim, in_dim) = match q.shape().dims() {
            &[o, i] => (o, i),
            dims => bail!("quantized matrix: expected a 2-D weight, got shape {dims:?}"),
        };
        let bs = dtype.block_size();
        if in_dim % bs != 0 {
            bail!("quantized matrix: row length {in_dim} is not a multiple of the {dtype:?} block size {bs}")
        }
        let row_bytes = in_dim / bs * dtype.type_size();
        if precision != MatmulPrecision::Exact && int8::Format::of(dtype).is_some() && q.device().is_cpu() {
            let packed = int8::Packed::new(dtype, &q.data()?, out_dim, in_dim)?;
            let weights = Weights::Int8(Arc::new(packed), int8::Kernel::best(), precision.levels());
            return Ok(Self { weights, dtype, out_dim, in_dim, row_bytes });
        }
        #[cfg(target_arch = "x86_64")]
        {
            if let (Some(kernel), true) = (Fused::for_dtype(dtype), q.device().is_cpu()) {
                let packed = pack::Packed::new(dtype, &q.data()?, out_dim, in_dim)?;
                let weights = Weights::Packed(Arc::new(packed), kernel);
                return Ok(Self { weights, dtype, out_dim, in_dim, row_bytes });
            }
        }
        Ok(Self { weights: Weights::Blocks(q), dtype, out_dim, in_dim, row_bytes })
    }

    /// One matrix whose rows are `parts`' rows in order, when they can run as one matmul: the
    /// same format, row length and kernel (the repacked layouts; the raw-block fallback does not
    /// stack). Every output element is computed exactly as in its part, so `x Wᵀ` of the stack
    /// is the parts' outputs side by side, bit for bit — while x is read, and on the int paths
    /// quantized, once instead of once per part (q/k/v, gate/up).
    pub fn stack(parts: &[&QuantizedMatrix]) -> Option<QuantizedMatrix> {
        let first = *parts.first()?;
        if !parts.iter().all(|p| p.dtype == first.dtype && p.in_dim == first.in_dim) {
            return None;
        }
        let weights = match &first.weights {
            Weights::Int8(_, kernel, levels) => {
                let mut packed = Vec::new();
                for p in parts {
                    match &p.weights {
                        Weights::Int8(w, k, l) if k == kernel && l == levels => packed.push(w.as_ref()),
                        _ => return None,
                    }
                }
                Weights::Int8(Arc::new(int8::Packed::stack(&packed)), *kernel, *levels)
            }
            #[cfg(target_arch = "x86_64")]
            Weights::Packed(_, kernel) => {
                let mut packed = Vec::new();
                for p in parts {
                    match &p.weights {
                        Weights::Packed(w, k) if k == kernel => packed.push(w.as_ref()),
                        _ => return None,
                    }
                }
                Weights::Packed(Arc::new(pack::Packed::stack(&packed)), *kernel)
            }
            Weights::Blocks(_) => return None,
        };
        let out_dim = parts.iter().map(|p| p.out_dim).sum();
        Some(Self { weights, dtype: first.dtype, out_dim, in_dim: first.in_dim, row_bytes: first.row_bytes })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Bytes of weights one matmul streams (the packed layout where there is one).
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            #[cfg(target_arch = "x86_64")]
            Weights::Packed(p, _) => p.size_in_bytes(),
            Weights::Blocks(_) => self.out_dim * self.row_bytes,
            Weights::Int8(p, ..) => p.size_in_bytes(),
        }
    }

    /// Which precision the activations get here (`Exact` for formats without an int8 kernel).
    pub fn precision(&self) -> MatmulPrecision {
        match self.weights {
            Weights::Int8(.., 2) => MatmulPrecision::Int16,
            Weights::Int8(..) => MatmulPrecision::Int8,
            _ => MatmulPrecision::Exact,
        }
    }

    /// `y = x Wᵀ`: x `[.., in_dim]` f32 (contiguous) → `[.., out_dim]` f32.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }

    /// `x` row-major `[m, in_dim]` → `[m, out_dim]`.
    fn run(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        if m == 0 || self.out_dim == 0 {
            return Ok(Vec::new());
        }
        match &self.weights {
            #[cfg(target_arch = "x86_64")]
            Weights::Packed(p, kernel) => Ok(self.run_fused(*kernel, p, x, m)),
            Weights::Int8(p, kernel, levels) => int8::matmul(*kernel, p, x, m, self.out_dim, self.in_dim, *levels),
            Weights::Blocks(q) => {
                if !q.device().is_cpu() {
                    bail!("quantized matmul: activations on the CPU but weights on {:?}", q.device().location())
                }
                let data = q.data()?;
                if data.len() != self.out_dim * self.row_bytes {
                    bail!("quantized matrix: {} bytes of weights, expected {}", data.len(), self.out_dim * self.row_bytes)
                }
                self.run_tiled(&data, x, m)
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn run_fused(&self, kernel: Fused, p: &pack::Packed, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.out_dim, self.in_dim);
        let (qrb, srb) = (k / 32 * p.qs_bytes, k / 32 * p.scales_per_block);
        let sums = if self.dtype == GgmlDType::Q4_1 { fused::block_sums(x, m, k) } else { Vec::new() };
        let task = |r0: usize, part: &mut [f32]| {
            let rows = part.len() / m;
            let (qs, sc) = (&p.qs[r0 * qrb..(r0 + rows) * qrb], &p.scales[r0 * srb..(r0 + rows) * srb]);
            // SAFETY: `Fused::for_dtype` checked the CPU for this kernel when the weights were
            // packed; `Packed::new` checked they hold n whole rows; x holds m * k values (checked
            // in `cpu_fwd`); k is a multiple of 32; `sums` matches x.
            unsafe {
                match kernel {
                    Fused::Avx2 => fused::rows_dot(self.dtype, qs, sc, x, &sums, m, k, part),
                    Fused::Avx512 => fused512::rows_dot(self.dtype, qs, sc, x, &sums, m, k, part),
                }
            }
        };
        by_row_tasks(m, n, FUSED_ROWS_PER_TASK, task)
    }

    fn run_tiled(&self, data: &[u8], x: &[f32], m: usize) -> Result<Vec<f32>> {
        let (n, k, rb) = (self.out_dim, self.in_dim, self.row_bytes);
        thread_local! {
            static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        }
        let parts: Vec<Vec<f32>> = (0..n.div_ceil(TILE_ROWS))
            .into_par_iter()
            .map(|t| {
                let c0 = t * TILE_ROWS;
                let rows = TILE_ROWS.min(n - c0);
                let mut part = vec![0f32; m * rows];
                TILE.with(|buf| -> Result<()> {
                    let mut w = buf.borrow_mut();
                    w.resize(TILE_ROWS * k, 0.0);
                    dequantize(self.dtype, &data[c0 * rb..(c0 + rows) * rb], &mut w[..rows * k])?;
                    crate::matmul::dense::block_into(x, &w[..rows * k], m, k, rows, &mut part);
                    Ok(())
                })?;
                Ok(part)
            })
            .collect::<Result<_>>()?;
        Ok(gather(&parts, m, n, TILE_ROWS))
    }
}

/// The register-fused kernel a format takes on this CPU, if any.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fused {
    Avx2,
    Avx512,
}

#[cfg(target_arch = "x86_64")]
impl Fused {
    fn for_dtype(dtype: GgmlDType) -> Option<Self> {
        if fused512::available(dtype) {
            Some(Self::Avx512)
        } else if fused::available(dtype) {
            Some(Self::Avx2)
        } else {
            None
        }
    }
}

/// Runs `task(first_weight_row, part)` in parallel over tasks of `step` weight rows, each
/// filling `part` = its columns of every x row (`[m, rows]`), and returns `[m, n]`. At batch 1 a
/// task's part is its slice of the output, so nothing is gathered.
fn by_row_tasks(m: usize, n: usize, step: usize, task: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    if m == 1 {
        let mut out = vec![0f32; n];
        out.par_chunks_mut(step).enumerate().for_each(|(t, part)| task(t * step, part));
        return out;
    }
    let parts: Vec<Vec<f32>> = (0..n.div_ceil(step))
        .into_par_iter()
        .map(|t| {
            let r0 = t * step;
            let mut part = vec![0f32; m * step.min(n - r0)];
            task(r0, &mut part);
            part
        })
        .collect();
    gather(&parts, m, n, step)
}

/// Lays out per-task column blocks (`[m, width]`, task t holding columns from `t * step`) as `[m, n]`.
fn gather(parts: &[Vec<f32>], m: usize, n: usize, step: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
        for (t, part) in parts.iter().enumerate() {
            let width = part.len() / m;
            row[t * step..t * step + width].copy_from_slice(&part[r * width..(r + 1) * width]);
        }
    });
    out
}

impl CustomOp1 for QuantizedMatrix {
    fn name(&self) -> &'static str {
        "kvault-qmatmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else {
            bail!("quantized matmul: activations must be f32, got {:?}", s.dtype())
        };
        let dims = l.shape().dims();
        let Some((&k, lead)) = dims.split_last() else { bail!("quantized matmul: x must have at least one dimension") };
        if k != self.in_dim {
            bail!("quantized matmul: x has {k} columns, W {}x{} expects {}", self.out_dim, self.in_dim, self.in_dim)
        }
        let Some((a, b)) = l.contiguous_offsets() else { bail!("quantized matmul: x must be contiguous") };
        let m = lead.iter().product::<usize>();
        let out = self.run(&x[a..b], m)?;
        let mut out_dims = lead.to_vec();
        out_dims.push(self.out_dim);
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

#[cfg(test)]
mod tests;
