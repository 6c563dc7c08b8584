//! Qwen2 and Qwen3 load from HF folders and their particular pieces are wired in: q/k/v biases
//! (Qwen2), per-head q/k RMSNorm with an explicit head_dim (Qwen3), sharded safetensors.
//! No pretrained Qwen fits here, so the weights are random and the assertions are structural:
//! each piece must change the output when changed.

mod support;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use kvault_models::model::{load_model, LoadOptions};
use kvault_models::source::ModelSource;
use support::*;

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16; // explicit, != HIDDEN / HEADS for qwen3
const FFN: usize = 48;
const VOCAB: usize = 512;
const LAYERS: usize = 2;

fn tensors(model_type: &str, seed: u64, tweak: &dyn Fn(&str, &mut Vec<f32>)) -> HashMap<String, Tensor> {
    let mut state = seed;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.2
            })
            .collect()
    };
    let head_dim = if model_type == "qwen3" { HEAD_DIM } else { HIDDEN / HEADS };
    let (q, kv) = (HEADS * head_dim, KV_HEADS * head_dim);
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]), ("model.norm.weight".into(), vec![HIDDEN])];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        shapes.extend([
            (format!("{p}.input_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, HIDDEN]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, HIDDEN]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, HIDDEN]),
            (format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![FFN, HIDDEN]),
            (format!("{p}.mlp.up_proj.weight"), vec![FFN, HIDDEN]),
            (format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FFN]),
        ]);
        if model_type == "qwen2" {
            shapes.extend([
                (format!("{p}.self_attn.q_proj.bias"), vec![q]),
                (format!("{p}.self_attn.k_proj.bias"), vec![kv]),
                (format!("{p}.self_attn.v_proj.bias"), vec![kv]),
            ]);
        }
        if model_type == "qwen3" {
            shapes.extend([
                (format!("{p}.self_attn.q_norm.weight"), vec![head_dim]),
                (format!("{p}.self_attn.k_norm.weight"), vec![head_dim]),
            ]);
        }
    }
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let mut v = if name.ends_with("norm.weight") { vec![1.0; n] } else { rnd(n) };
            tweak(&name, &mut v);
            (name.clone(), Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
        })
        .collect()
}

fn write_model(dir: &Path, model_type: &str, dtype: DType, sharded: bool, tweak: &dyn Fn(&str, &mut Vec<f32>)) {
    let mut config = serde_json::json!({
        "model_type": model_type, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
    });
    if model_type == "qwen3" {
        config["head_dim"] = HEAD_DIM.into();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(model_dir("stories260K").join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let all: HashMap<String, Tensor> =
        tensors(model_type, 7, tweak).into_iter().map(|(k, v)| (k, v.to_dtype(dtype).unwrap())).collect();
    if sharded {
        let (mut a, mut b) = (HashMap::new(), HashMap::new());
        let mut map = serde_json::Map::new();
        for (k, v) in all {
            let shard = if k.contains("layers.1") { "model-00002-of-00002.safetensors" } else { "model-00001-of-00002.safetensors" };
            map.insert(k.clone(), shard.into());
            if shard.contains("00001") { a.insert(k, v) } else { b.insert(k, v) };
        }
        candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
        candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
        std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string()).unwrap();
    } else {
        candle_core::safetensors::save(&all, dir.join("model.safetensors")).unwrap();
    }
}

fn last_logits(dir: &Path) -> Vec<f32> {
    let m = load_model(&ModelSource::parse(Some(dir.to_str().unwrap())).unwrap(), &LoadOptions::default()).unwrap();
    let mut seq = OneSequence::new(m.model.as_ref(), 16, 8);
    seq.feed(&[1, 20, 30, 40, 50, 60], false).pop().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn qwen2_loads_and_uses_its_qkv_biases() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_model(a.path(), "qwen2", DType::F32, false, &|_, _| {});
    write_model(b.path(), "qwen2", DType::F32, false, &|name, v| {
        if name.ends_with("k_proj.bias") {
            v.iter_mut().for_each(|x| *x += 0.5);
        }
    });
    let (la, lb) = (last_logits(a.path()), last_logits(b.path()));
    assert!(la.iter().all(|x| x.is_finite()));
    assert!(max_diff(&la, &lb) > 1e-4, "changing k biases must change the output");
}

#[test]
fn qwen3_loads_with_explicit_head_dim_and_uses_its_qk_norms() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_model(a.path(), "qwen3", DType::F32, false, &|_, _| {});
    write_model(b.path(), "qwen3", DType::F32, false, &|name, v| {
        if name.ends_with("q_norm.weight") {
            v.iter_mut().enumerate().for_each(|(i, x)| *x = 1.0 + i as f32 * 0.1);
        }
    });
    let (la, lb) = (last_logits(a.path()), last_logits(b.path()));
    assert!(la.iter().all(|x| x.is_finite()));
    assert!(max_diff(&la, &lb) > 1e-4, "changing q_norm must change the output");
}

#[test]
fn sharded_bf16_weights_equal_a_single_file_after_rounding() {
    let (single, sharded) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_model(single.path(), "qwen2", DType::BF16, false, &|_, _| {});
    write_model(sharded.path(), "qwen2", DType::BF16, true, &|_, _| {});
    assert_eq!(last_logits(single.path()), last_logits(sharded.path()));
}

#[test]
fn missing_shard_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "qwen3", DType::F16, true, &|_, _| {});
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = match load_model(&ModelSource::Folder(dir.path().to_path_buf()), &LoadOptions::default()) {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("loading must fail"),
    };
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}
