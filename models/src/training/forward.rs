//! The frozen model's forward over one whole sequence in plain, differentiable ops, with or
//! without retention gates. Without gates it is the model itself (the teacher); with gates every
//! attention logit gets the bias `(t − i)·log β_i` (the student), and each layer reports its soft
//! occupancy `S_t = Σ_{i≤t} β_i^(t−i)` per KV head for the capacity loss.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, D};

use super::frozen::frozen_linear;
use super::ops::{causal_tables, rms_norm, rope, softmax};
use crate::config::ModelConfig;
use crate::gates::RetentionGates;
use crate::layers::RotaryEmbedding;
use crate::weights::{MatrixWeight, WeightName, WeightSource};

pub(super) struct Layer {
    pub(super) attn_norm: Tensor,
    pub(super) q: Tensor,
    pub(super) k: Tensor,
    pub(super) v: Tensor,
    pub(super) o: Tensor,
    pub(super) qkv_bias: Option<(Tensor, Tensor, Tensor)>,
    pub(super) o_bias: Option<Tensor>,
    pub(super) qk_norm: Option<(Tensor, Tensor)>,
    pub(super) mlp_norm: Tensor,
    pub(super) gate: Tensor,
    pub(super) up: Tensor,
    pub(super) down: Tensor,
}

/// The model's weights, dense in `dtype`, and RoPE tables: nothing here is ever trained.
pub struct TrainingModel {
    pub config: ModelConfig,
    pub(super) embed: Tensor,
    pub(super) layers: Vec<Layer>,
    pub(super) norm: Tensor,
    pub(super) lm_head: Tensor,
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
    pub(super) dtype: DType,
}

/// One forward's outputs.
pub struct Forward {
    /// `[tokens, vocab]`.
    pub logits: Tensor,
    /// Per layer, `S_t` as `[kv_heads, tokens]` (empty without gates).
    pub occupancy: Vec<Tensor>,
}

fn dense_matrix(w: &dyn WeightSource, name: WeightName, out: usize, inp: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    match w.matrix(name, out, inp, dtype, dev)? {
        MatrixWeight::Dense(t) => Ok(t),
        MatrixWeight::Quantized(q, _) => Ok(q.dequantize(dev)?.to_dtype(dtype)?),
    }
}

impl TrainingModel {
    /// Loads every weight dense in `dtype` (f32 for training, f64 for gradient checks), on CPU.
    pub fn load(config: ModelConfig, w: &dyn WeightSource, dtype: DType) -> Result<Self> {
        let dev = Device::Cpu;
        let c = &config;
        let (h, d, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (qd, kvd) = (c.num_heads * d, c.num_kv_heads * d);
        let dense = |name, shape: &[usize]| w.dense(name, shape, dtype, &dev);
        let mat = |name, o, i| dense_matrix(w, name, o, i, dtype, &dev);
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            layers.push(Layer {
                attn_norm: dense(WeightName::AttnNorm(l), &[h])?,
                q: mat(WeightName::Q(l), qd, h)?,
                k: mat(WeightName::K(l), kvd, h)?,
                v: mat(WeightName::V(l), kvd, h)?,
                o: mat(WeightName::O(l), h, qd)?,
                qkv_bias: if c.qkv_bias {
                    Some((dense(WeightName::QBias(l), &[qd])?, dense(WeightName::KBias(l), &[kvd])?, dense(WeightName::VBias(l), &[kvd])?))
                } else {
                    None
                },
                o_bias: if c.o_bias { Some(dense(WeightName::OBias(l), &[h])?) } else { None },
                qk_norm: if c.qk_norm { Some((dense(WeightName::QNorm(l), &[d])?, dense(WeightName::KNorm(l), &[d])?)) } else { None },
                mlp_norm: dense(WeightName::MlpNorm(l), &[h])?,
                gate: mat(WeightName::Gate(l), i, h)?,
                up: mat(WeightName::Up(l), i, h)?,
                down: mat(WeightName::Down(l), h, i)?,
            });
        }
        let embed = mat(WeightName::Embed, c.vocab_size, h)?;
        let lm_head = if !c.tie_word_embeddings && w.contains(WeightName::LmHead) {
            mat(WeightName::LmHead, c.vocab_size, h)?
        } else {
            embed.clone()
        };
        let rotary = RotaryEmbedding::new(c, &dev)?;
        let (cos, sin) = rotary.tables();
        Ok(Self {
            embed,
            layers,
            norm: dense(WeightName::FinalNorm, &[h])?,
            lm_head,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            dtype,
            config,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs `ids` (positions `0..len`). With `gates`, attention carries the retention bias and
    /// the result holds each layer's occupancy; gradients flow to the gate tensors if they are
    /// `Var`s. Without gates, nothing here tracks gradients.
    pub fn forward(&self, ids: &[u32], gates: Option<&RetentionGates>) -> Result<Forward> {
        let c = &self.config;
        let t = ids.len();
        ensure!(t > 0 && t <= c.max_position_embeddings, "sequence of {t} tokens (the model takes 1..={})", c.max_position_embeddings);
        if let Some(g) = gates {
            g.check_fits(c.num_layers, c.hidden_size, c.num_kv_heads)?;
        }
        let dev = Device::Cpu;
        let ids_t = Tensor::new(ids, &dev)?;
        let mut x = self.embed.index_select(&ids_t, 0)?;
        let (age, mask) = causal_tables(t, self.dtype, &dev)?;
        let mut occupancy = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let xn = rms_norm(&x, &layer.attn_norm, c.rms_norm_eps)?;
            // The bias per (kv head, query, key): age times the key's log β, masked causally.
            let bias = match gates {
                Some(g) => {
                    let log_beta = g.layers[l].log_beta(&xn)?.to_dtype(self.dtype)?; // [t, kv]
                    let per_key = log_beta.t()?.unsqueeze(1)?; // [kv, 1, t]
                    let b = age.unsqueeze(0)?.broadcast_mul(&per_key)?.broadcast_add(&mask)?; // [kv, t, t]
                    occupancy.push(b.exp()?.sum(D::Minus1)?);
                    b
                }
                None => mask.unsqueeze(0)?,
            };
            let h = self.attention(layer, &xn, &bias)?;
            x = (x + h)?;
            let xn = rms_norm(&x, &layer.mlp_norm, c.rms_norm_eps)?;
            let gated = (frozen_linear(&xn, &layer.gate)?.silu()? * frozen_linear(&xn, &layer.up)?)?;
            x = (x + frozen_linear(&gated, &layer.down)?)?;
        }
        let x = rms_norm(&x, &self.norm, c.rms_norm_eps)?;
        Ok(Forward { logits: frozen_linear(&x, &self.lm_head)?, occupancy })
    }

    /// `q: [heads, t, d]`, `k, v: [kv, t, d]` of `xn: [t, hidden]` at positions `start..start + t`
    /// (projected, biased, q/k-normed, rotated).
    pub(super) fn qkv(&self, layer: &Layer, xn: &Tensor, start: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let (t, d, kv) = (xn.dim(0)?, c.head_dim, c.num_kv_heads);
        let (mut q, mut k, mut v) = (frozen_linear(xn, &layer.q)?, frozen_linear(xn, &layer.k)?, frozen_linear(xn, &layer.v)?);
        if let Some((qb, kb, vb)) = &layer.qkv_bias {
            q = q.broadcast_add(qb)?;
            k = k.broadcast_add(kb)?;
            v = v.broadcast_add(vb)?;
        }
        // [t, heads·d] → [heads, t, d]
        let heads = |x: Tensor, n: usize| -> Result<Tensor> { Ok(x.reshape((t, n, d))?.transpose(0, 1)?.contiguous()?) };
        let (mut q, mut k, v) = (heads(q, c.num_heads)?, heads(k, kv)?, heads(v, kv)?);
        if let Some((qn, kn)) = &layer.qk_norm {
            q = rms_norm(&q, qn, c.rms_norm_eps)?;
            k = rms_norm(&k, kn, c.rms_norm_eps)?;
        }
        let (cos, sin) = (self.cos.narrow(0, start, t)?, self.sin.narrow(0, start, t)?);
        Ok((rope(&q, &cos, &sin)?, rope(&k, &cos, &sin)?, v))
    }

    /// Causal attention of `xn: [t, hidden]` with `bias: [kv or 1, t, t]` added to every logit.
    fn attention(&self, layer: &Layer, xn: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (t, d, kv) = (xn.dim(0)?, c.head_dim, c.num_kv_heads);
        let group = c.num_heads / kv;
        let (q, k, v) = self.qkv(layer, xn, 0)?;
        // Query heads of one KV head are consecutive: [kv, group·t, d] against [kv, t, d].
        let q = q.reshape((kv, group * t, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.reshape((kv, group, t, t))?;
        let p = softmax(&scores.broadcast_add(&bias.unsqueeze(1)?)?)?;
        let out = p.reshape((kv, group * t, t))?.matmul(&v)?; // [kv, group·t, d]
        let out = out.reshape((c.num_heads, t, d))?.transpose(0, 1)?.reshape((t, c.num_heads * d))?;
        let mut y = frozen_linear(&out, &layer.o)?;
        if let Some(b) = &layer.o_bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}
