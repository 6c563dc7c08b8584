//! The LycheeDecode training forward (`kvault calibrate-heads`) against the real model
//! (stories260K): prefill + decode rows reproduce the whole-sequence forward; hard roles that
//! leave nothing out (all retrieval, or a budget covering the context) are full attention; and
//! the HardKuma gradients to (a, b) match central finite differences (in f64).

use candle_core::{DType, Device, Tensor, Var};
use kvault_models::model::{load_model, open_weights, LoadOptions};
use kvault_models::source::ModelSource;
use kvault_models::training::lychee::kuma::hard_kuma;
use kvault_models::training::lychee::{distillation, BlockBudget, FullMixer, HardRolesMixer, Lagrange, RatioMask, TrainingMixer};
use kvault_models::training::TrainingModel;

const TEXT: &str = "Once upon a time, there was a little girl named Lily. She loved to play in the park with her ball. \
One day, she saw a big dog. The dog was very friendly and wanted to play. Lily threw the ball and the dog ran after it.";

fn model(dtype: DType) -> TrainingModel {
    let (cfg, w) = open_weights(&ModelSource::Embedded, true, &Device::Cpu).unwrap();
    TrainingModel::load(cfg, w.as_ref(), dtype).unwrap()
}

fn ids() -> Vec<u32> {
    let tok = load_model(&ModelSource::Embedded, &LoadOptions::default()).unwrap().tokenizer;
    let ids = tok.encode(TEXT, true).unwrap();
    assert!(ids.len() > 60, "{}", ids.len());
    ids
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn prefill_then_decode_rows_matches_the_whole_sequence_forward() {
    let m = model(DType::F32);
    let ids = ids();
    let split = ids.len() - 6;
    let prefix = m.prefill(&ids[..split]).unwrap();
    let hidden = m.decode_rows(&prefix, &ids[split..], &mut FullMixer).unwrap();
    let want = m.forward(&ids, None).unwrap().logits.narrow(0, split, ids.len() - split).unwrap();
    let d = max_diff(&m.logits_of(&hidden).unwrap(), &want);
    assert!(d < 1e-4, "max |Δlogit| = {d}");
}

#[test]
fn hard_roles_that_drop_nothing_are_full_attention_and_all_sparse_is_not() {
    let m = model(DType::F32);
    let ids = ids();
    let (l, h) = (m.config.num_layers, m.config.num_kv_heads);
    let split = ids.len() - 6;
    let prefix = m.prefill(&ids[..split]).unwrap();
    let full = m.decode_rows(&prefix, &ids[split..], &mut FullMixer).unwrap();
    let small = BlockBudget { block_size: 4, budget: 4, sink: 1, recent: 1 };
    let run = |retrieval: Vec<bool>, budget: BlockBudget| m.decode_rows(&prefix, &ids[split..], &mut HardRolesMixer::new(retrieval, h, budget, DType::F32)).unwrap();
    assert_eq!(max_diff(&run(vec![true; l * h], small), &full), 0.0);
    let layer0_only: Vec<bool> = (0..l * h).map(|i| i < h).collect();
    let whole = BlockBudget { block_size: 4, budget: ids.len().div_ceil(4), sink: 1, recent: 1 };
    assert!(max_diff(&run(layer0_only.clone(), whole), &full) < 1e-5);
    assert!(max_diff(&run(layer0_only, small), &full) > 1e-3, "a 16-token budget over 60+ tokens should change the output");
}

#[test]
fn kuma_gradients_match_finite_differences() {
    let m = model(DType::F64);
    let ids = ids();
    let (l, h) = (m.config.num_layers, m.config.num_kv_heads);
    let split = ids.len() - 6;
    let prefix = m.prefill(&ids[..split]).unwrap();
    let rows = &ids[split..];
    let teacher = m.decode_rows(&prefix, rows, &mut FullMixer).unwrap();
    let mask = RatioMask { keep_ratio: 0.2, sink_tokens: 2, recent_tokens: 4 };
    // Varied parameters and draws that keep every z strictly inside (0, 1).
    let vals = |base: f64, step: f64| Tensor::from_vec((0..l * h).map(|i| base + step * ((i * 7) % 11) as f64).collect::<Vec<_>>(), (l, h), &Device::Cpu).unwrap();
    let (a0, b0, u) = (vals(0.8, 0.05), vals(0.9, 0.04), vals(0.3, 0.04));
    let loss = |a: &Tensor, b: &Tensor| -> (Tensor, Tensor) {
        let z = hard_kuma(a, b, &u).unwrap();
        let zs: Vec<f64> = z.flatten_all().unwrap().to_vec1().unwrap();
        assert!(zs.iter().all(|&v| v > 0.0 && v < 1.0), "{zs:?}");
        let s = m.decode_rows(&prefix, rows, &mut TrainingMixer::new(z, mask, DType::F64)).unwrap();
        let d = distillation(&teacher, &s).unwrap();
        let c = Lagrange::new(0.05).step(a, b).unwrap().constraint;
        (d, c)
    };
    let (av, bv) = (Var::from_tensor(&a0).unwrap(), Var::from_tensor(&b0).unwrap());
    let (d, c) = loss(av.as_tensor(), bv.as_tensor());
    let total = (&d + &c).unwrap();
    let grads = total.backward().unwrap();
    let ga: Vec<f64> = grads.get(av.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let gb: Vec<f64> = grads.get(bv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let value = |a: &Tensor, b: &Tensor| {
        let (d, c) = loss(a, b);
        (d + c).unwrap().to_scalar::<f64>().unwrap()
    };
    let shifted = |t: &Tensor, i: usize, delta: f64| {
        let mut v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
        v[i] += delta;
        Tensor::from_vec(v, (l, h), &Device::Cpu).unwrap()
    };
    let eps = 1e-6;
    // Heads in layers 1, 2 and the last; layer 0 (full by rule) must get no gradient.
    for i in [h, h + 1, 2 * h + 2, l * h - 1] {
        for (which, auto) in [("a", ga[i]), ("b", gb[i])] {
            let numeric = if which == "a" {
                (value(&shifted(&a0, i, eps), &b0) - value(&shifted(&a0, i, -eps), &b0)) / (2.0 * eps)
            } else {
                (value(&a0, &shifted(&b0, i, eps)) - value(&a0, &shifted(&b0, i, -eps))) / (2.0 * eps)
            };
            assert!(auto.abs() > 1e-8, "{which}[{i}]: zero gradient, the check would be vacuous");
            assert!((auto - numeric).abs() <= 1e-4 * auto.abs().max(numeric.abs()) + 1e-9, "{which}[{i}]: autograd {auto} vs finite difference {numeric}");
        }
    }
    assert!(ga[..h].iter().chain(&gb[..h]).all(|&g| g == 0.0), "layer 0: {:?}", &ga[..h]);
}
