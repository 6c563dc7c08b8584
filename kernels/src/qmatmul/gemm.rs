//! The prefill GEMM: many x rows against a tile of weight rows already dequantized to f32.
//!
//! Owns: the register blocking of a dense `x · wᵀ` (4 x rows × 2 weight rows, eight
//! independent FMA chains — enough to keep both FMA ports busy at their 4-cycle latency).
//! Each output element is still accumulated exactly as `crate::matmul::dot` does it (eight
//! lanes in K order, its fixed reduction tree, the K % 8 tail in order), so a token's result
//! does not depend on which other tokens share the batch or where the tile edges fall.
//!
//! Must not know: quantization formats, threads or tensors.

/// `out[r * stride + col + j]` = x row `r` · w row `j`, for `x` `[m, k]` and `w` `[n, k]`.
pub fn gemm_bt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, out: &mut [f32], stride: usize, col: usize) {
    debug_assert!(x.len() >= m * k && w.len() >= n * k);
    #[cfg(target_arch = "x86_64")]
    {
        if k % 8 == 0 && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2+FMA present; slice bounds are checked when results are stored and
            // the kernels read `k` values from row starts that lie inside `x` and `w`.
            unsafe { x86::gemm_bt(x, w, m, n, k, out, stride, col) };
            return;
        }
    }
    for r in 0..m {
        for j in 0..n {
            out[r * stride + col + j] = crate::matmul::dot(&x[r * k..(r + 1) * k], &w[j * k..(j + 1) * k]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    const MR: usize = 4;
    const NR: usize = 2;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_bt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, out: &mut [f32], stride: usize, col: usize) {
        assert!(x.len() >= m * k && w.len() >= n * k);
        let mut r = 0;
        while r < m {
            let mr = (m - r).min(MR);
            let xr = &x[r * k..];
            let mut j = 0;
            while j + NR <= n {
                match mr {
                    4 => store(tile::<4, NR>(xr, &w[j * k..], k), out, r, j, stride, col),
                    3 => store(tile::<3, NR>(xr, &w[j * k..], k), out, r, j, stride, col),
                    2 => store(tile::<2, NR>(xr, &w[j * k..], k), out, r, j, stride, col),
                    _ => store(tile::<1, NR>(xr, &w[j * k..], k), out, r, j, stride, col),
                }
                j += NR;
            }
            if j < n {
                match mr {
                    4 => store(tile::<4, 1>(xr, &w[j * k..], k), out, r, j, stride, col),
                    3 => store(tile::<3, 1>(xr, &w[j * k..], k), out, r, j, stride, col),
                    2 => store(tile::<2, 1>(xr, &w[j * k..], k), out, r, j, stride, col),
                    _ => store(tile::<1, 1>(xr, &w[j * k..], k), out, r, j, stride, col),
                }
            }
            r += mr;
        }
    }

    #[inline]
    fn store<const A: usize, const B: usize>(t: [[f32; B]; A], out: &mut [f32], r: usize, j: usize, stride: usize, col: usize) {
        for (i, row) in t.iter().enumerate() {
            let at = (r + i) * stride + col + j;
            out[at..at + B].copy_from_slice(row);
        }
    }

    /// `A` x rows against `B` weight rows over the whole of K (a multiple of 8).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const A: usize, const B: usize>(x: &[f32], w: &[f32], k: usize) -> [[f32; B]; A] {
        debug_assert!(x.len() >= A * k && w.len() >= B * k);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); B]; A];
        let mut p = 0;
        while p < k {
            let mut xv = [_mm256_setzero_ps(); A];
            for (i, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(xp.add(i * k + p));
            }
            for j in 0..B {
                let wv = _mm256_loadu_ps(wp.add(j * k + p));
                for i in 0..A {
                    acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
                }
            }
            p += 8;
        }
        let mut out = [[0f32; B]; A];
        for i in 0..A {
            for j in 0..B {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]);
                out[i][j] = crate::matmul::reduce8(lanes);
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
    fn every_element_is_the_canonical_dot_at_any_tile_edge() {
        // m and n leave every remainder of the 4×2 register tile; k=13 takes the portable path.
        for &(m, n, k) in &[(1, 1, 8), (5, 3, 64), (7, 9, 96), (11, 5, 13), (16, 64, 576)] {
            let x = random(m * k, 1);
            let w = random(n * k, 2);
            let (stride, col) = (n + 3, 2);
            let mut out = vec![f32::NAN; m * stride];
            gemm_bt(&x, &w, m, n, k, &mut out, stride, col);
            for r in 0..m {
                for j in 0..n {
                    let want = crate::matmul::dot(&x[r * k..(r + 1) * k], &w[j * k..(j + 1) * k]);
                    assert_eq!(out[r * stride + col + j].to_bits(), want.to_bits(), "({m},{n},{k}) r={r} j={j}");
                }
                // Columns outside [col, col + n) are left alone.
                assert!(out[r * stride].is_nan() && out[r * stride + col + n].is_nan());
            }
        }
    }
}
