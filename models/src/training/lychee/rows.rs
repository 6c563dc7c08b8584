//! The frozen model as a lychee request runs it: [`TrainingModel::prefill`] (full causal
//! attention over the prompt, no gradient; keeps every layer's keys after RoPE and values) and
//! [`TrainingModel::decode_rows`] (the next rows, teacher-forced, attending to the prefix and to
//! each other causally, each layer's attention mixed as a [`HeadMixer`] plans it).

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, D};

use super::super::forward::Layer;
use super::super::frozen::frozen_linear;
use super::super::ops::{rms_norm, softmax};
use super::super::TrainingModel;
use super::mixers::{HeadMixer, LayerPlan, LayerScores};

/// The prompt's cache: per layer `[kv, len, head_dim]` keys (after RoPE) and values.
pub struct Prefix {
    pub len: usize,
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

/// Additive causal mask of `rows` queries at positions `start..` over `start + rows` keys.
fn causal(rows: usize, start: usize, dtype: DType) -> Result<Tensor> {
    let keys = start + rows;
    let m: Vec<f32> = (0..rows).flat_map(|r| (0..keys).map(move |k| if k <= start + r { 0.0 } else { -1e9 })).collect();
    Ok(Tensor::from_vec(m, (rows, keys), &Device::Cpu)?.to_dtype(dtype)?)
}

impl TrainingModel {
    /// The rest of a layer after attention: output projection, residual, MLP.
    fn finish_layer(&self, layer: &Layer, x: &Tensor, attn: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let mut y = frozen_linear(attn, &layer.o)?;
        if let Some(b) = &layer.o_bias {
            y = y.broadcast_add(b)?;
        }
        let x = (x + y)?;
        let xn = rms_norm(&x, &layer.mlp_norm, c.rms_norm_eps)?;
        let gated = (frozen_linear(&xn, &layer.gate)?.silu()? * frozen_linear(&xn, &layer.up)?)?;
        Ok((&x + frozen_linear(&gated, &layer.down)?)?)
    }

    /// Runs the prompt with full causal attention and keeps its cache. Nothing is tracked.
    pub fn prefill(&self, ids: &[u32]) -> Result<Prefix> {
        let c = &self.config;
        let t = ids.len();
        ensure!(t > 0 && t < c.max_position_embeddings, "prompt of {t} tokens (the model takes fewer than {})", c.max_position_embeddings);
        let (kv, group, d) = (c.num_kv_heads, c.num_heads / c.num_kv_heads, c.head_dim);
        let mut x = self.embed.index_select(&Tensor::new(ids, &Device::Cpu)?, 0)?;
        let mask = causal(t, 0, self.dtype)?;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for layer in &self.layers {
            let xn = rms_norm(&x, &layer.attn_norm, c.rms_norm_eps)?;
            let (q, k, v) = self.qkv(layer, &xn, 0)?;
            let scores = (q.reshape((kv, group * t, d))?.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.reshape((kv, group, t, t))?;
            let p = softmax(&scores.broadcast_add(&mask)?)?;
            let out = p.reshape((kv, group * t, t))?.matmul(&v)?.reshape((c.num_heads, t, d))?.transpose(0, 1)?.reshape((t, c.num_heads * d))?;
            x = self.finish_layer(layer, &x, &out)?;
            keys.push(k.detach());
            values.push(v.detach());
        }
        Ok(Prefix { len: t, keys, values })
    }

    /// Runs `ids` at positions `prefix.len..` against the prefix, each layer as `mixer` plans
    /// it; returns the final normed hidden state `[rows, hidden]`. Gradients flow to whatever
    /// the plans' `z` tensors track.
    pub fn decode_rows(&self, prefix: &Prefix, ids: &[u32], mixer: &mut dyn HeadMixer) -> Result<Tensor> {
        let c = &self.config;
        let (rows, start) = (ids.len(), prefix.len);
        ensure!(rows > 0 && start + rows <= c.max_position_embeddings, "{start} + {rows} tokens exceed the model's context ({})", c.max_position_embeddings);
        let (kv, group, d) = (c.num_kv_heads, c.num_heads / c.num_kv_heads, c.head_dim);
        let keys_n = start + rows;
        let scale = 1.0 / (d as f64).sqrt();
        let mut x = self.embed.index_select(&Tensor::new(ids, &Device::Cpu)?, 0)?;
        let mask = causal(rows, start, self.dtype)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let plan: LayerPlan = mixer.plan(l)?;
            let xn = rms_norm(&x, &layer.attn_norm, c.rms_norm_eps)?;
            let (q, k, v) = self.qkv(layer, &xn, start)?;
            let k_all = Tensor::cat(&[&prefix.keys[l], &k], 1)?;
            let v_all = Tensor::cat(&[&prefix.values[l], &v], 1)?;
            let scores = (q.reshape((kv, group * rows, d))?.matmul(&k_all.t()?)? * scale)?.reshape((kv, group, rows, keys_n))?;
            mixer.observe(
                l,
                &LayerScores {
                    kv_heads: kv,
                    group,
                    rows,
                    keys: keys_n,
                    prefix: start,
                    scale,
                    logits: scores.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                },
            )?;
            let scores = scores.broadcast_add(&mask)?;
            let attend = |s: &Tensor| -> Result<Tensor> { Ok(softmax(s)?.reshape((kv, group * rows, keys_n))?.matmul(&v_all)?) };
            let full = attend(&scores)?;
            let out = match (&plan.z, &plan.sparse_bias) {
                (None, _) => full,
                (Some(z), Some(bias)) => {
                    let sparse = attend(&(&scores + bias)?)?;
                    let z = z.reshape((kv, 1, 1))?.to_dtype(self.dtype)?;
                    (full.broadcast_mul(&z)? + sparse.broadcast_mul(&z.affine(-1.0, 1.0)?)?)?
                }
                (Some(_), None) => anyhow::bail!("layer {l}: a mixed plan without a sparse mask"),
            };
            let out = out.reshape((c.num_heads, rows, d))?.transpose(0, 1)?.reshape((rows, c.num_heads * d))?;
            x = self.finish_layer(layer, &x, &out)?;
        }
        rms_norm(&x, &self.norm, c.rms_norm_eps)
    }

    /// Logits `[rows, vocab]` of final normed hidden states.
    pub fn logits_of(&self, hidden: &Tensor) -> Result<Tensor> {
        frozen_linear(hidden, &self.lm_head)
    }

    /// The greedy token of every row.
    pub fn greedy(&self, hidden: &Tensor) -> Result<Vec<u32>> {
        Ok(self.logits_of(hidden)?.argmax(D::Minus1)?.to_vec1()?)
    }
}
