//! `y ≈ x Wᵀ` with x quantized per 32-element block to 8 bits (or to 16 bits held as two 8-bit
//! levels) and integer dot products, for Q4_0 / Q4_1 / Q8_0 weights: the `MatmulPrecision::Int8`
//! and `Int16` paths of [`super::QuantizedMatrix`].
//!
//! Why: a batch-1 decode spends its time turning 4-bit weights into f32 and multiplying them
//! into f32 activations. With x rounded to 8 bits, one integer instruction (`vpdpbusd` on
//! AVX-512 VNNI, `vpmaddubsw` + `vpmaddwd` on AVX2) multiplies 64 (32) weights into x and the
//! f32 work is left to one scale per block.
//!
//! What holds: each x row is quantized on its own ([`quant`]) and every output element goes
//! through one fixed sequence of operations ([`scalar`] spells it out), so a token gets the
//! same bits alone or in any batch, exactly as on the exact path. The three kernels (scalar,
//! AVX2, AVX-512 VNNI) compute the same integers and the same f32 operations in the same order,
//! so they agree bit for bit with each other: unlike the exact path, results do not change with
//! the CPU's vector width. What does not hold: equality with the f32 product — x's rounding
//! (half a step of `max|x_block| / 127`, or of 1/256 of that with two levels) is an error of its
//! own, measured in perplexity and greedy agreement by the model tests.
//!
//! Must not know: models, layers or where the weights came from.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod driver;
mod pack;
mod quant;
mod scalar;
#[cfg(test)]
mod tests;

use candle_core::quantized::GgmlDType;
use candle_core::Result;

#[cfg(target_arch = "x86_64")]
use super::driver::store;
pub use pack::Packed;
use quant::Rows;

#[cfg(target_arch = "x86_64")]
use crate::prefetch::prefetch_range;

/// x rows that share one pass over a weight block in the SIMD kernels.
const GROUP: usize = 4;
/// Weight rows per rayon task (a multiple of every register tile's row count).
const ROWS_PER_TASK: usize = 48;

/// How many weight rows ahead of the tile the kernels ask the CPU to load. A batch-1
/// decode streams every weight once with little arithmetic per byte, and the hardware
/// prefetchers restart at every page: in `perf`, the tile's weight loads were most of its
/// time (batch-1 decode +20–25% with the hints). A few hundred nanoseconds of work ahead (rows
/// are 288–900 bytes on SmolLM2's shapes; 4 to 64 rows measured alike). The fused (exact)
/// kernels, bound by unpacking rather than memory, gained nothing from them.
const PREFETCH_AHEAD: usize = 16;

/// Prefetch hints for the packed integers and scales of `count` weight rows from `row`
/// ([`PREFETCH_AHEAD`] ahead of the tile: see there why).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_rows(w: &Packed, row: usize, count: usize) {
    let row_bytes = w.pairs * w.format.pair_bytes();
    prefetch_range(&w.qs, row * row_bytes..(row + count) * row_bytes);
    prefetch_range(&w.scales, row * w.pairs * 4..(row + count) * w.pairs * 4);
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// The weight formats this path covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Format {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of weight integers per pair of blocks in [`pack`]'s layout.
    fn pair_bytes(self) -> usize {
        if self == Self::Q8_0 {
            64
        } else {
            32
        }
    }
}

/// Which int8 kernel runs; chosen once per CPU ([`Kernel::best`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni512,
}

impl Kernel {
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512::available() {
                return Self::Vnni512;
            }
            if avx2::available() {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }

    /// Every kernel this CPU can run (for tests).
    #[cfg(test)]
    pub fn all_here() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut v = vec![Self::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::available() {
                v.push(Self::Avx2);
            }
            if avx512::available() {
                v.push(Self::Vnni512);
            }
        }
        v
    }

    /// What the weights as this kernel reads them exceed the true integers by: VNNI multiplies
    /// unsigned weights, so Q8_0 is read as q + 128 and Q4_0 as q + 8 (its nibble); the AVX2
    /// kernel takes Q8_0's sign into x instead; the scalar kernel uses the true integers.
    fn offset(self, format: Format) -> i32 {
        match (self, format) {
            (Self::Scalar, _) | (_, Format::Q4_1) => 0,
            (_, Format::Q4_0) => 8,
            #[cfg(target_arch = "x86_64")]
            (Self::Avx2, Format::Q8_0) => 0,
            #[cfg(target_arch = "x86_64")]
            (Self::Vnni512, Format::Q8_0) => 128,
        }
    }
}

/// `x` row-major `[m, k]` times the `n` packed weight rows → `[m, n]`, x held in `levels` (1 or
/// 2) 8-bit levels ([`quant`]).
pub fn matmul(kernel: Kernel, w: &Packed, x: &[f32], m: usize, n: usize, k: usize, levels: usize) -> Result<Vec<f32>> {
    if !(1..=2).contains(&levels) {
        candle_core::bail!("int8 matmul: {levels} levels of x (1 or 2)")
    }
    let rows = Rows::new(x, m, k, kernel.offset(w.format), w.format == Format::Q4_1, levels);
    let task = |row0: usize, part: &mut [f32]| match kernel {
        Kernel::Scalar => scalar::rows_dot(w, row0, &rows, m, part),
        // SAFETY: the kernel was chosen by `Kernel::best`/`all_here`, which checked the CPU;
        // `rows` was quantized for this kernel and format; `part` holds m × (rows of this task)
        // values, all within the n rows `w` holds.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe {
            match (w.format, levels) {
                (Format::Q4_0, 1) => avx2::rows_dot::<Q4_0, 1>(w, row0, &rows, m, part),
                (Format::Q4_1, 1) => avx2::rows_dot::<Q4_1, 1>(w, row0, &rows, m, part),
                (Format::Q8_0, 1) => avx2::rows_dot::<Q8_0, 1>(w, row0, &rows, m, part),
                (Format::Q4_0, _) => avx2::rows_dot::<Q4_0, 2>(w, row0, &rows, m, part),
                (Format::Q4_1, _) => avx2::rows_dot::<Q4_1, 2>(w, row0, &rows, m, part),
                (Format::Q8_0, _) => avx2::rows_dot::<Q8_0, 2>(w, row0, &rows, m, part),
            }
        },
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni512 => unsafe {
            match (w.format, levels) {
                (Format::Q4_0, 1) => avx512::rows_dot::<Q4_0, 1>(w, row0, &rows, m, part),
                (Format::Q4_1, 1) => avx512::rows_dot::<Q4_1, 1>(w, row0, &rows, m, part),
                (Format::Q8_0, 1) => avx512::rows_dot::<Q8_0, 1>(w, row0, &rows, m, part),
                (Format::Q4_0, _) => avx512::rows_dot::<Q4_0, 2>(w, row0, &rows, m, part),
                (Format::Q4_1, _) => avx512::rows_dot::<Q4_1, 2>(w, row0, &rows, m, part),
                (Format::Q8_0, _) => avx512::rows_dot::<Q8_0, 2>(w, row0, &rows, m, part),
            }
        },
    };
    Ok(super::by_row_tasks(m, n, ROWS_PER_TASK, task))
}

/// The end of every element: block b's lanes folded onto block b+1's, then the canonical tree.
#[inline]
fn fold(lanes: &[f32; quant::LANES]) -> f32 {
    let folded: [f32; 8] = std::array::from_fn(|i| lanes[i] + lanes[i + 8]);
    crate::matmul::reduce8(folded)
}
