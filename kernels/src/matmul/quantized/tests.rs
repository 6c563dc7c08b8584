use super::*;
use candle_core::{DType, Device, IndexOp};
use rand::{Rng, SeedableRng};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn tensor(rows: usize, cols: usize, seed: u64) -> Tensor {
    Tensor::from_vec(random(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap()
}

fn quantized(dtype: GgmlDType, n: usize, k: usize) -> (QuantizedMatrix, Tensor) {
    let q = Arc::new(QTensor::quantize(&tensor(n, k, 11), dtype).unwrap());
    let dense = q.dequantize(&Device::Cpu).unwrap();
    (QuantizedMatrix::new(q).unwrap(), dense)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Whether `dtype` takes the fused kernel (scale factored out) on this machine.
fn fused_here(dtype: GgmlDType) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Fused::for_dtype(dtype).is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        false
    }
}

/// Within f32 rounding of an f64 product of x and the dequantized weights (so the activations
/// were not quantized); on the tiled path also bit-identical to the batch-invariant dense
/// matmul on candle's dequantized weights.
fn check(dtype: GgmlDType, n: usize, k: usize, m: usize) {
    let (qm, dense) = quantized(dtype, n, k);
    let x = tensor(m, k, 5 + m as u64);
    let got = qm.matmul(&x).unwrap();
    assert_eq!(got.dims(), &[m, n]);
    if !fused_here(dtype) {
        let want = crate::matmul::matmul_bt(&x, &dense).unwrap();
        assert_eq!(bits(&got), bits(&want), "{dtype:?} n={n} k={k} m={m}");
    }

    let (xv, wv) = (x.to_vec2::<f32>().unwrap(), dense.to_vec2::<f32>().unwrap());
    let yv = got.to_vec2::<f32>().unwrap();
    for r in 0..m {
        for c in 0..n {
            let exact: f64 = (0..k).map(|i| xv[r][i] as f64 * wv[c][i] as f64).sum();
            let magnitude: f64 = (0..k).map(|i| (xv[r][i] as f64 * wv[c][i] as f64).abs()).sum();
            let err = (yv[r][c] as f64 - exact).abs();
            assert!(err <= 1e-5 * magnitude, "{dtype:?} ({r},{c}): {} vs {exact} (|.|={magnitude})", yv[r][c]);
        }
    }
}

#[test]
fn fused_formats_equal_the_product_with_dequantized_weights_up_to_rounding() {
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        // Every group size of the fused kernel (1..=8 x rows) and batches of several groups;
        // n leaves every remainder of the 4-row register tile and of the 32-row tasks.
        for m in [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 20] {
            check(dtype, 70, 64, m);
            check(dtype, 37, 96, m);
        }
        check(dtype, 133, 576, 1);
    }
}

#[test]
fn other_ggml_formats_match_dense_matmul_on_dequantized_weights_bit_for_bit() {
    use GgmlDType::*;
    for dtype in [Q4K, Q6K, Q5K, Q3K, Q2K, Q8K, Q5_0, Q5_1, F16, BF16, F32] {
        for m in [1, 3, 9] {
            check(dtype, 35, 512, m);
        }
    }
}

#[test]
fn a_token_gets_the_same_bits_alone_as_inside_any_batch() {
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K] {
        let k = 256;
        let (qm, _) = quantized(dtype, 67, k);
        let x = tensor(40, k, 3);
        let alone = qm.matmul(&x.i(1..2).unwrap()).unwrap();
        // Row 1 is lane 1 of the first group of 2, 3, 5 or 8 rows, and of multi-group batches.
        for m in [2, 3, 5, 8, 9, 17, 40] {
            let batch = qm.matmul(&x.i(0..m).unwrap()).unwrap();
            assert_eq!(bits(&batch.i(1..2).unwrap()), bits(&alone), "{dtype:?} in a batch of {m}");
        }
        // And a row deep in the batch (second group, different lane) equals itself alone.
        let late = qm.matmul(&x.i(12..13).unwrap()).unwrap();
        assert_eq!(bits(&qm.matmul(&x).unwrap().i(12..13).unwrap()), bits(&late), "{dtype:?} row 12");
    }
}

#[test]
fn leading_dimensions_of_x_are_kept() {
    let (qm, _) = quantized(GgmlDType::Q8_0, 20, 64);
    let x = tensor(6, 64, 9);
    let flat = qm.matmul(&x).unwrap();
    let shaped = qm.matmul(&x.reshape((2, 3, 64)).unwrap()).unwrap();
    assert_eq!(shaped.dims(), &[2, 3, 20]);
    assert_eq!(bits(&shaped), bits(&flat));
    let empty = qm.matmul(&Tensor::zeros((0, 64), DType::F32, &Device::Cpu).unwrap()).unwrap();
    assert_eq!(empty.dims(), &[0, 20]);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (qm, _) = quantized(GgmlDType::Q4_1, 8, 64);
    // Wrong width.
    assert!(qm.matmul(&tensor(2, 32, 1)).is_err());
    // Not f32.
    assert!(qm.matmul(&tensor(2, 64, 1).to_dtype(DType::F16).unwrap()).is_err());
    // Not contiguous: a transposed view.
    assert!(qm.matmul(&tensor(64, 2, 1).t().unwrap()).is_err());
    // Weights that are not a matrix.
    let vector = Tensor::from_vec(random(64, 1), 64, &Device::Cpu).unwrap();
    let q = Arc::new(QTensor::quantize(&vector, GgmlDType::Q8_0).unwrap());
    assert!(QuantizedMatrix::new(q).is_err());
}

#[test]
fn accessors_describe_the_matrix() {
    let (qm, _) = quantized(GgmlDType::Q6K, 3, 512);
    assert_eq!((qm.dtype(), qm.out_dim(), qm.in_dim()), (GgmlDType::Q6K, 3, 512));
    assert_eq!(qm.weight_bytes(), 3 * 2 * 210, "two 210-byte Q6_K blocks per row");
    // Q4_1: 16 bytes of nibbles + two scales per block, f32 once packed for a fused kernel.
    let (q41, _) = quantized(GgmlDType::Q4_1, 3, 64);
    let per_block = if fused_here(GgmlDType::Q4_1) { 24 } else { 20 };
    assert_eq!(q41.weight_bytes(), 3 * 2 * per_block);
}

/// Both fused kernels, whichever this CPU would pick: each within rounding of the f64 product
/// and batch-invariant on its own (the one not picked is otherwise untested here).
#[cfg(target_arch = "x86_64")]
#[test]
fn each_fused_kernel_is_accurate_and_batch_invariant() {
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let kernels: Vec<Fused> = [Fused::Avx2, Fused::Avx512]
            .into_iter()
            .filter(|f| match f {
                Fused::Avx2 => fused::available(dtype),
                Fused::Avx512 => fused512::available(dtype),
            })
            .collect();
        assert!(!kernels.is_empty() || !std::is_x86_feature_detected!("avx2"), "AVX2 CPU without a fused kernel");
        let (n, k) = (45, 192);
        let (qm, dense) = quantized(dtype, n, k);
        let Weights::Packed(packed, _) = &qm.weights else { panic!("{dtype:?} was not packed for a fused kernel") };
        let wv = dense.to_vec2::<f32>().unwrap();
        for kernel in kernels {
            for m in [1, 2, 3, 6, 8, 11, 17] {
                let x = random(m * k, m as u64);
                let y = qm.run_fused(kernel, packed, &x, m);
                for r in 0..m {
                    for c in 0..n {
                        let prods = (0..k).map(|i| x[r * k + i] as f64 * wv[c][i] as f64);
                        let (exact, mag) = prods.fold((0.0, 0.0), |(s, a), p| (s + p, a + p.abs()));
                        assert!((y[r * n + c] as f64 - exact).abs() <= 1e-5 * mag, "{kernel:?} {dtype:?} m={m} ({r},{c})");
                    }
                }
                let last = qm.run_fused(kernel, packed, &x[(m - 1) * k..], 1);
                let same = last.iter().zip(&y[(m - 1) * n..]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kernel:?} {dtype:?}: last row alone differs from the batch of {m}");
            }
        }
    }
}

#[test]
fn a_stack_of_matrices_gives_their_outputs_side_by_side_bit_for_bit() {
    let k = 96;
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        for precision in [MatmulPrecision::Exact, MatmulPrecision::Int8, MatmulPrecision::Int16] {
            let part = |n: usize, seed: u64| {
                let q = Arc::new(QTensor::quantize(&tensor(n, k, seed), dtype).unwrap());
                QuantizedMatrix::with_precision(q, precision).unwrap()
            };
            // q/k/v-like shapes; 13 rows: not a multiple of any register tile or task.
            let parts = [part(24, 1), part(8, 2), part(13, 3)];
            let Some(stack) = QuantizedMatrix::stack(&parts.iter().collect::<Vec<_>>()) else {
                assert!(matches!(parts[0].weights, Weights::Blocks(_)), "{dtype:?} {precision:?} did not stack");
                continue;
            };
            assert_eq!((stack.out_dim(), stack.in_dim()), (45, k));
            for m in [1, 5] {
                let x = tensor(m, k, 40 + m as u64);
                let whole = stack.matmul(&x).unwrap();
                let mut at = 0;
                for p in &parts {
                    let alone = p.matmul(&x).unwrap();
                    assert_eq!(bits(&whole.narrow(1, at, p.out_dim()).unwrap()), bits(&alone), "{dtype:?} {precision:?} m={m}");
                    at += p.out_dim();
                }
            }
        }
    }
    // Different formats or row lengths do not stack.
    let a = QuantizedMatrix::new(Arc::new(QTensor::quantize(&tensor(8, 64, 1), GgmlDType::Q4_0).unwrap())).unwrap();
    let b = QuantizedMatrix::new(Arc::new(QTensor::quantize(&tensor(8, 64, 2), GgmlDType::Q8_0).unwrap())).unwrap();
    let c = QuantizedMatrix::new(Arc::new(QTensor::quantize(&tensor(8, 96, 3), GgmlDType::Q4_0).unwrap())).unwrap();
    assert!(QuantizedMatrix::stack(&[&a, &b]).is_none());
    assert!(QuantizedMatrix::stack(&[&a, &c]).is_none());
    assert!(QuantizedMatrix::stack(&[]).is_none());
}
