//! The training forward of `kvault train-gates` against the real model (stories260K): without
//! gates it reproduces the paged engine's logits; with β ≡ 1 the retention bias changes nothing;
//! and the gate gradients from autograd match central finite differences (in f64).

use candle_core::{DType, Device, Tensor, Var};
use kvault_kernels::{AttentionMetadata, KvCacheShape, PagedKvCache};
use kvault_models::gates::{LayerGate, RetentionGates};
use kvault_models::model::{load_model, open_weights, LoadOptions};
use kvault_models::source::ModelSource;
use kvault_models::training::{ops::log_softmax, trimkv_loss, TrainingModel};

const IDS: [u32; 24] = [1, 403, 407, 261, 378, 285, 269, 293, 271, 296, 308, 272, 261, 280, 317, 267, 303, 345, 291, 275, 261, 326, 269, 290];

fn model(dtype: DType) -> TrainingModel {
    let (cfg, w) = open_weights(&ModelSource::Embedded, true, &Device::Cpu).unwrap();
    TrainingModel::load(cfg, w.as_ref(), dtype).unwrap()
}

fn gates(m: &TrainingModel, hidden: usize, bias: f64, seed: u64, dtype: DType) -> RetentionGates {
    let c = &m.config;
    let mut state = seed;
    // A small deterministic generator (the values only need to be fixed and varied).
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.2
    };
    let mut t = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| next()).collect::<Vec<f64>>(), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    };
    RetentionGates {
        layers: (0..c.num_layers)
            .map(|_| LayerGate {
                w1: t(&[hidden, c.hidden_size]),
                b1: t(&[hidden]),
                w2: t(&[c.num_kv_heads, hidden]),
                bias: Tensor::full(bias, c.num_kv_heads, &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
            })
            .collect(),
    }
}

#[test]
fn training_forward_without_gates_matches_the_paged_engine() {
    let m = model(DType::F32);
    let got = m.forward(&IDS, None).unwrap().logits;
    let loaded = load_model(&ModelSource::Embedded, &LoadOptions::default()).unwrap();
    let c = loaded.model.config().clone();
    let shape = KvCacheShape { num_blocks: 4, num_kv_heads: c.num_kv_heads, block_size: 16, head_dim: c.head_dim };
    let cache = PagedKvCache::new(c.num_layers, shape, kvault_kernels::KvDtype::F32, &Device::Cpu).unwrap();
    let n = IDS.len();
    let meta = AttentionMetadata::new((0..n as i64).collect(), (0..n as u32).collect(), vec![vec![0, 1]], vec![n], vec![n], 16, &Device::Cpu).unwrap();
    let rows = Tensor::new((0..n as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let want = loaded.model.forward(&Tensor::new(&IDS, &Device::Cpu).unwrap(), &meta, &cache, &rows, None).unwrap();
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-3, "max |Δlogit| = {diff}");
}

#[test]
fn retention_one_leaves_the_forward_unchanged() {
    let m = model(DType::F32);
    let plain = m.forward(&IDS, None).unwrap().logits;
    let g = gates(&m, 8, 1000.0, 1, DType::F32);
    let out = m.forward(&IDS, Some(&g)).unwrap();
    let diff = (plain - out.logits).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);
    // β = 1: every key is fully live, S_t = t + 1.
    let s: Vec<f32> = out.occupancy[0].get(0).unwrap().to_vec1().unwrap();
    assert!(s.iter().enumerate().all(|(t, v)| (v - (t + 1) as f32).abs() < 1e-4), "{s:?}");
}

#[test]
fn gate_gradients_match_finite_differences() {
    let m = model(DType::F64);
    let teacher = log_softmax(&m.forward(&IDS[..IDS.len() - 1], None).unwrap().logits).unwrap();
    let labels = &IDS[1..];
    let budget = 6; // small, so the capacity hinge is active on this short sequence
    let base = gates(&m, 8, 2.0, 7, DType::F64);
    let loss = |g: &RetentionGates| -> (f64, Tensor) {
        let f = m.forward(&IDS[..IDS.len() - 1], Some(g)).unwrap();
        let l = trimkv_loss(&f.logits, &teacher, labels, &f.occupancy, budget, 1.0).unwrap();
        (l.total.to_scalar::<f64>().unwrap(), l.total)
    };
    // Autograd through Vars for layer 1's gate.
    let layer = 1;
    let vars = [&base.layers[layer].w1, &base.layers[layer].b1, &base.layers[layer].w2, &base.layers[layer].bias]
        .map(|t| Var::from_tensor(t).unwrap());
    let mut tracked = base.clone();
    tracked.layers[layer] = LayerGate {
        w1: vars[0].as_tensor().clone(),
        b1: vars[1].as_tensor().clone(),
        w2: vars[2].as_tensor().clone(),
        bias: vars[3].as_tensor().clone(),
    };
    let (_, total) = loss(&tracked);
    let grads = total.backward().unwrap();
    // (parameter, flat index) pairs: a W1 entry, a b1 entry, a W2 entry, the bias of head 0.
    let eps = 1e-5;
    let mut checked = 0;
    for (p, idx) in [(0usize, 3usize), (0, 40), (1, 2), (2, 5), (3, 0)] {
        let auto: Vec<f64> = grads.get(vars[p].as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let numeric = {
            let shifted = |delta: f64| {
                let mut g = base.clone();
                let t = [&g.layers[layer].w1, &g.layers[layer].b1, &g.layers[layer].w2, &g.layers[layer].bias][p].clone();
                let mut v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
                v[idx] += delta;
                let t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                let lg = &mut g.layers[layer];
                match p {
                    0 => lg.w1 = t,
                    1 => lg.b1 = t,
                    2 => lg.w2 = t,
                    _ => lg.bias = t,
                }
                loss(&g).0
            };
            (shifted(eps) - shifted(-eps)) / (2.0 * eps)
        };
        let a = auto[idx];
        assert!(a.abs() > 1e-9, "parameter {p}[{idx}]: zero gradient, the check would be vacuous");
        assert!((a - numeric).abs() <= 1e-4 * a.abs().max(numeric.abs()) + 1e-9, "parameter {p}[{idx}]: autograd {a} vs finite difference {numeric}");
        checked += 1;
    }
    assert_eq!(checked, 5);
}
