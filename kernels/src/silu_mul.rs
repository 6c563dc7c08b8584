//! `silu(gate) * up`, the gated-MLP activation, fused so the intermediate never materialises.
//!
//! Must not know: which MLP calls it.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::elem::{contiguous, with_float_type, Elem, KernelFloat};

/// Elements per rayon task floor: an element is a few ns, so small tensors stay serial.
const MIN_ELEMS_PER_TASK: usize = 4096;

/// `silu(gate) * up` elementwise; shapes and dtypes must match; output has their dtype.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        bail!("silu_mul: gate {:?} and up {:?} shapes differ", gate.dims(), up.dims())
    }
    if gate.dtype() != up.dtype() {
        bail!("silu_mul: gate {:?} and up {:?} dtypes differ", gate.dtype(), up.dtype())
    }
    gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &SiluMul)
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu_mul"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        g: &candle_core::CudaStorage,
        gl: &Layout,
        u: &candle_core::CudaStorage,
        ul: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::silu_mul(g, gl, u, ul)
    }

    fn cpu_fwd(&self, g: &CpuStorage, g_l: &Layout, u: &CpuStorage, u_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let storage = with_float_type!(g, name, T => {
            let gate = contiguous::<T>(g, g_l, name, "gate")?;
            let up = contiguous::<T>(u, u_l, name, "up")?;
            T::into_storage(fused(gate, up))
        });
        Ok((storage, g_l.shape().clone()))
    }
}

fn fused<T: KernelFloat>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); gate.len()];
    out.par_chunks_mut(MIN_ELEMS_PER_TASK)
        .zip(gate.par_chunks(MIN_ELEMS_PER_TASK).zip(up.par_chunks(MIN_ELEMS_PER_TASK)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                let g = g.to_f32();
                *o = T::from_f32(g / (1.0 + (-g).exp()) * u.to_f32());
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-8.0..8.0)).collect()
    }

    fn naive(g: f32, u: f32) -> f32 {
        let g = g as f64;
        (g * (1.0 / (1.0 + (-g).exp())) * u as f64) as f32
    }

    #[test]
    fn matches_naive_silu_times_up_across_task_boundaries() -> Result<()> {
        let n = 3 * MIN_ELEMS_PER_TASK + 17;
        let (g, u) = (random(n, 1), random(n, 2));
        let out = silu_mul(&Tensor::from_slice(&g, n, &Device::Cpu)?, &Tensor::from_slice(&u, n, &Device::Cpu)?)?;
        for ((o, g), u) in out.to_vec1::<f32>()?.iter().zip(&g).zip(&u) {
            let want = naive(*g, *u);
            assert!((o - want).abs() <= 1e-5 * want.abs().max(1.0), "{o} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn f16_keeps_dtype_and_shape() -> Result<()> {
        let (g, u) = (random(2 * 10, 3), random(2 * 10, 4));
        let gt = Tensor::from_slice(&g, (2, 10), &Device::Cpu)?.to_dtype(DType::F16)?;
        let ut = Tensor::from_slice(&u, (2, 10), &Device::Cpu)?.to_dtype(DType::F16)?;
        let out = silu_mul(&gt, &ut)?;
        assert_eq!((out.dtype(), out.dims()), (DType::F16, &[2usize, 10][..]));
        let gr = gt.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let ur = ut.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        for ((o, g), u) in out.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?.iter().zip(&gr).zip(&ur) {
            let want = naive(*g, *u);
            assert!((o - want).abs() <= 2e-3 * want.abs().max(1.0), "{o} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_or_dtypes_are_errors() -> Result<()> {
        let a = Tensor::ones((2, 3), DType::F32, &Device::Cpu)?;
        assert!(silu_mul(&a, &Tensor::ones((3, 2), DType::F32, &Device::Cpu)?).is_err());
        assert!(silu_mul(&a, &Tensor::ones((2, 3), DType::F16, &Device::Cpu)?).is_err());
        assert!(silu_mul(&a.to_dtype(DType::U32)?, &a.to_dtype(DType::U32)?).is_err());
        Ok(())
    }
}
