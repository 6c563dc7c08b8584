//! The dense f32 kernel: rows of x against rows of W, register-tiled 4×4 for batches and
//! row-parallel for single rows, every element accumulated exactly as [`super::dot`].

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Output columns (rows of W) per parallel task.
const COLS_PER_TASK: usize = 64;

/// `x`: `[m, k]` f32, `w`: `[n, k]` f32 → `[m, n]`.
pub fn matmul_bt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &MatmulBt)
}

struct MatmulBt;

impl CustomOp2 for MatmulBt {
    fn name(&self) -> &'static str {
        "kvault-matmul-bt"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (xs, ws) else {
            bail!("matmul_bt: f32 inputs required")
        };
        let (m, k) = xl.shape().dims2()?;
        let (n, kw) = wl.shape().dims2()?;
        if k != kw {
            bail!("matmul_bt: x has {k} columns, W {kw}")
        }
        let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            bail!("matmul_bt: inputs must be contiguous")
        };
        let out = matmul_bt_slices(&x[xa..xb], &w[wa..wb], m, n, k);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// Slice form: `x` row-major `[m, k]`, `w` row-major `[n, k]`, result `[m, n]`.
pub fn matmul_bt_slices(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    // Parallel over column blocks; each task writes its columns of every row. Results are
    // gathered per task and scattered, since tasks own column ranges, not contiguous memory.
    let blocks: Vec<(usize, Vec<f32>)> = (0..n)
        .step_by(COLS_PER_TASK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|c0| {
            let c1 = (c0 + COLS_PER_TASK).min(n);
            let mut part = vec![0f32; m * (c1 - c0)];
            block(x, w, m, k, c0, c1, &mut part);
            (c0, part)
        })
        .collect();
    for (c0, part) in blocks {
        let width = part.len() / m.max(1);
        for r in 0..m {
            out[r * n + c0..r * n + c0 + width].copy_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
    out
}

/// Every row of `x` against all `n` rows of `w` (`[n, k]`), into `out` (`[m, n]`).
pub(crate) fn block_into(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    block(x, w, m, k, 0, n, out)
}

/// Columns `c0..c1` of every row, into `part` (`[m, c1 - c0]`).
fn block(x: &[f32], w: &[f32], m: usize, k: usize, c0: usize, c1: usize, part: &mut [f32]) {
    let width = c1 - c0;
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2_fma() {
            let mut r = 0;
            while r + 4 <= m {
                let mut c = c0;
                while c + 4 <= c1 {
                    // SAFETY: AVX2+FMA checked; indices stay within the 4 rows / 4 columns.
                    let t = unsafe { x86::tile4x4(&x[r * k..(r + 4) * k], &w[c * k..(c + 4) * k], k) };
                    for i in 0..4 {
                        for j in 0..4 {
                            part[(r + i) * width + (c - c0) + j] = t[i][j];
                        }
                    }
                    c += 4;
                }
                for c in c..c1 {
                    for i in 0..4 {
                        part[(r + i) * width + (c - c0)] = super::dot(&x[(r + i) * k..(r + i + 1) * k], &w[c * k..(c + 1) * k]);
                    }
                }
                r += 4;
            }
            for r in r..m {
                for c in c0..c1 {
                    part[r * width + (c - c0)] = super::dot(&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
                }
            }
            return;
        }
    }
    for r in 0..m {
        for c in c0..c1 {
            part[r * width + (c - c0)] = super::dot_portable(&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lanes(v: __m256) -> [f32; 8] {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(x: &[f32], w: &[f32]) -> f32 {
        let k = x.len();
        let main = k / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut i = 0;
        while i < main {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(wp.add(i)), acc);
            i += 8;
        }
        let mut s = super::super::reduce8(lanes(acc));
        for j in main..k {
            s = x[j].mul_add(w[j], s);
        }
        s
    }

    /// 4 rows of x (`[4, k]`) against 4 rows of W (`[4, k]`): 16 accumulators, each the exact
    /// lane sequence of `dot_avx2`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile4x4(x: &[f32], w: &[f32], k: usize) -> [[f32; 4]; 4] {
        let main = k / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); 4]; 4];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut p = 0;
        while p < main {
            let xv = [
                _mm256_loadu_ps(xp.add(p)),
                _mm256_loadu_ps(xp.add(k + p)),
                _mm256_loadu_ps(xp.add(2 * k + p)),
                _mm256_loadu_ps(xp.add(3 * k + p)),
            ];
            for j in 0..4 {
                let wv = _mm256_loadu_ps(wp.add(j * k + p));
                for i in 0..4 {
                    acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
                }
            }
            p += 8;
        }
        let mut out = [[0f32; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                let mut s = super::super::reduce8(lanes(acc[i][j]));
                for t in main..k {
                    s = x[i * k + t].mul_add(w[j * k + t], s);
                }
                out[i][j] = s;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn every_row_is_bit_identical_to_the_canonical_dot_whatever_the_batch() {
        for &(m, n, k) in &[(1, 70, 64), (5, 33, 172), (9, 130, 13), (17, 64, 576)] {
            let x = random(m * k, 1);
            let w = random(n * k, 2);
            let y = matmul_bt_slices(&x, &w, m, n, k);
            for r in 0..m {
                for c in 0..n {
                    let d = crate::matmul::dot(&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
                    assert_eq!(y[r * n + c].to_bits(), d.to_bits(), "({m},{n},{k}) row {r} col {c}");
                }
            }
            // A row computed alone equals the same row inside the batch.
            let last = &x[(m - 1) * k..];
            let alone = matmul_bt_slices(last, &w, 1, n, k);
            assert_eq!(alone, y[(m - 1) * n..].to_vec());
        }
    }

    #[test]
    fn simd_and_portable_dots_agree_bit_for_bit() {
        for k in [1, 7, 8, 9, 64, 173] {
            let x = random(k, 3);
            let w = random(k, 4);
            assert_eq!(crate::matmul::dot(&x, &w).to_bits(), crate::matmul::dot_portable(&x, &w).to_bits(), "k={k}");
        }
    }

    #[test]
    fn result_matches_a_plain_f64_product() {
        let (m, n, k) = (6, 11, 100);
        let x = random(m * k, 5);
        let w = random(n * k, 6);
        let y = matmul_bt_slices(&x, &w, m, n, k);
        for r in 0..m {
            for c in 0..n {
                let e: f64 = (0..k).map(|t| x[r * k + t] as f64 * w[c * k + t] as f64).sum();
                assert!((y[r * n + c] as f64 - e).abs() < 1e-4, "{} vs {e}", y[r * n + c]);
            }
        }
    }

    #[test]
    fn tensor_entry_point_checks_shapes() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev).unwrap();
        let y = matmul_bt(&x, &w).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![1.0, 2.0, 3.0], vec![3.0, 4.0, 7.0]]);
        let bad = Tensor::new(&[[1f32, 2.0, 3.0]], &dev).unwrap();
        assert!(matmul_bt(&bad, &w).is_err());
    }
}
