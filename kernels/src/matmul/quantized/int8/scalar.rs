//! The int8 kernel in plain Rust: the reference the SIMD kernels must equal bit for bit, and the
//! kernel of CPUs without AVX2.
//!
//! Owns: the arithmetic every int8 kernel performs per output element, spelled out lane by lane.
//! Per pair of blocks and per 32-bit lane L (8 lanes per block, 4 consecutive elements each):
//!
//! ```text
//! dot_L  = Σ of 4 products w·q_x            (exact i32; w the true weight integers;
//!                                            two levels: 256·Σ w·q_x + Σ w·q'_x)
//! acc_L  = fma(f32(dot_L), d_w · d_x, acc_L)
//! acc_L  = fma(m_w, Σx / 8, acc_L)          (Q4_1 only)
//! y      = reduce8(acc_L + acc_L+8)         (block b's lanes folded onto block b+1's)
//! ```
//!
//! Must not know: threads or tensors.

use half::f16;

use super::pack::Packed;
use super::quant::{Rows, LANES};
use super::Format;

/// `out[r * nrows + j]` = x row r · weight row `row0 + j`, for `nrows = out.len() / m`.
pub fn rows_dot(w: &Packed, row0: usize, x: &Rows, m: usize, out: &mut [f32]) {
    let nrows = out.len() / m;
    for r in 0..m {
        for j in 0..nrows {
            out[r * nrows + j] = element(w, row0 + j, x, r);
        }
    }
}

fn element(w: &Packed, row: usize, x: &Rows, r: usize) -> f32 {
    let mut acc = [0f32; LANES];
    for p in 0..w.pairs {
        let s = &w.scales[(row * w.pairs + p) * 4..][..4];
        let base = (r * x.pairs + p) * LANES;
        let stride = 64 * x.levels;
        let xq = &x.qs[(r * x.pairs + p) * stride..][..stride];
        for (l, a) in acc.iter_mut().enumerate() {
            let half = l / 8;
            let b = 2 * p + half;
            let level = |at: usize| -> i32 {
                (0..4)
                    .map(|t| {
                        let i = 4 * (l % 8) + t;
                        w.value(row, b, i) * xq[at + half * 32 + i] as i32
                    })
                    .sum()
            };
            let dot = if x.levels == 2 { 256 * level(0) + level(64) } else { level(0) };
            let scale = f16::from_bits(s[half]).to_f32() * x.d[base + l];
            *a = (dot as f32).mul_add(scale, *a);
            if w.format == Format::Q4_1 {
                *a = f16::from_bits(s[2 + half]).to_f32().mul_add(x.sum[base + l], *a);
            }
        }
    }
    super::fold(&acc)
}
