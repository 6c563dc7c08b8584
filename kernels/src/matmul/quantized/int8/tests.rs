use super::*;
use crate::matmul::{MatmulPrecision, QuantizedMatrix};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use half::f16;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn packed(dtype: GgmlDType, n: usize, k: usize) -> Packed {
    let t = Tensor::from_vec(random(n * k, 17), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    Packed::new(dtype, &q.data().unwrap(), n, k).unwrap()
}

const FORMATS: [GgmlDType; 3] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0];

#[test]
fn every_kernel_on_this_cpu_gives_the_scalar_kernels_bits() {
    let kernels = Kernel::all_here();
    #[cfg(target_arch = "x86_64")]
    assert!(kernels.contains(&Kernel::Avx2) || !std::is_x86_feature_detected!("avx2"), "AVX2 kernel not offered");
    for dtype in FORMATS {
        // k = 96: an odd block count (a padded pair); n leaves remainders of every register tile
        // and of the tasks; m covers every group size and several groups.
        for (n, k) in [(53, 96), (100, 128), (7, 576)] {
            let w = packed(dtype, n, k);
            for (m, levels) in [1, 2, 3, 4, 5, 7, 9].into_iter().flat_map(|m| [(m, 1), (m, 2)]) {
                let x = random(m * k, 100 + m as u64);
                let want = matmul(Kernel::Scalar, &w, &x, m, n, k, levels).unwrap();
                for &kernel in &kernels {
                    let got = matmul(kernel, &w, &x, m, n, k, levels).unwrap();
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{kernel:?} {dtype:?} n={n} k={k} m={m} levels={levels}");
                }
            }
        }
    }
}

/// The only error is x's rounding: at most half a step (`max|x_block| / 127 / 2`) per element,
/// times the weight's `d·q` part, plus f32 rounding; with two levels a step 256 times finer
/// (one fine step where the remainder is clamped).
#[test]
fn error_is_bounded_by_half_a_quantization_step_of_x() {
    for dtype in FORMATS {
        let (n, k, m) = (29, 160, 3);
        let t = Tensor::from_vec(random(n * k, 17), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let w = Packed::new(dtype, &q.data().unwrap(), n, k).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let x = random(m * k, 5);
        for (kernel, levels) in Kernel::all_here().into_iter().flat_map(|kn| [(kn, 1), (kn, 2)]) {
            let step = if levels == 2 { 1.0 / 127.0 / 256.0 } else { 1.0 / 127.0 / 2.0 };
            let y = matmul(kernel, &w, &x, m, n, k, levels).unwrap();
            for r in 0..m {
                let xr = &x[r * k..(r + 1) * k];
                for c in 0..n {
                    let (mut exact, mut mag, mut bound) = (0f64, 0f64, 0f64);
                    for (e, &xv) in xr.iter().enumerate() {
                        let b = e / 32;
                        let amax = xr[b * 32..b * 32 + 32].iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                        let d = f16::from_bits(w.scales[(c * w.pairs + b / 2) * 4 + b % 2]).to_f32() as f64;
                        let p = xv as f64 * dense[c][e] as f64;
                        exact += p;
                        mag += p.abs();
                        bound += (d * w.value(c, b, e % 32) as f64).abs() * amax * step;
                    }
                    let err = (y[r * n + c] as f64 - exact).abs();
                    assert!(
                        err <= bound * 1.001 + 1e-5 * mag,
                        "{kernel:?} {dtype:?} x{levels} ({r},{c}): err {err} > {bound}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_row_gets_the_same_bits_alone_as_inside_any_batch() {
    for dtype in FORMATS {
        let k = 192;
        let t = Tensor::from_vec(random(61 * k, 3), (61, k), &Device::Cpu).unwrap();
        let q = Arc::new(QTensor::quantize(&t, dtype).unwrap());
        for precision in [MatmulPrecision::Int8, MatmulPrecision::Int16] {
            let qm = QuantizedMatrix::with_precision(q.clone(), precision).unwrap();
            assert_eq!(qm.precision(), precision);
            let x = Tensor::from_vec(random(20 * k, 4), (20, k), &Device::Cpu).unwrap();
            let bits = |t: &Tensor| {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            use candle_core::IndexOp;
            for row in [0, 1, 6, 13] {
                let alone = qm.matmul(&x.i(row..row + 1).unwrap()).unwrap();
                for m in [row + 1, row + 2, 20] {
                    let batch = qm.matmul(&x.i(0..m).unwrap()).unwrap();
                    assert_eq!(
                        bits(&batch.i(row..row + 1).unwrap()),
                        bits(&alone),
                        "{dtype:?} {precision:?} row {row} in a batch of {m}"
                    );
                }
            }
        }
    }
}

#[test]
fn formats_without_an_int8_kernel_stay_exact() {
    let t = Tensor::from_vec(random(4 * 256, 1), (4, 256), &Device::Cpu).unwrap();
    let q = Arc::new(QTensor::quantize(&t, GgmlDType::Q4K).unwrap());
    let int8 = QuantizedMatrix::with_precision(q.clone(), MatmulPrecision::Int8).unwrap();
    assert_eq!(int8.precision(), MatmulPrecision::Exact);
    let x = Tensor::from_vec(random(2 * 256, 2), (2, 256), &Device::Cpu).unwrap();
    let exact = QuantizedMatrix::new(q).unwrap().matmul(&x).unwrap();
    let diff =
        (int8.matmul(&x).unwrap() - exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);
}
