//! Per layer, how the decode rows mix full and sparse attention ([`HeadMixer`]): before the
//! layer runs, a [`LayerPlan`] (the full-attention weight z of every KV head, and the key mask
//! of the sparse part); after it, the layer's full-attention logits ([`LayerScores`]) so the
//! mixer can build the masks of the layers above.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::masks::{BlockBudget, RatioMask};

/// What a layer's attention does. `z: None` means every head attends fully.
pub struct LayerPlan {
    /// `[kv_heads]`: 1 = full attention, 0 = sparse, in between a mix (HardKuma).
    pub z: Option<Tensor>,
    /// `[kv, group, rows, keys]`, 0 where a sparse head may look and a large negative number
    /// elsewhere (required when `z` is given).
    pub sparse_bias: Option<Tensor>,
}

impl LayerPlan {
    pub fn full() -> Self {
        Self { z: None, sparse_bias: None }
    }
}

/// One layer's full-attention logits of the decode rows (host copy, no gradient), scaled by
/// `1/√d` and without the causal mask: row `r` may see keys `0..prefix + r + 1`.
pub struct LayerScores {
    pub kv_heads: usize,
    pub group: usize,
    pub rows: usize,
    pub keys: usize,
    pub prefix: usize,
    pub scale: f64,
    /// `[kv, group, rows, keys]` row-major.
    pub logits: Vec<f32>,
}

impl LayerScores {
    /// The valid logits of (kv head, query head in the group, row).
    pub fn row(&self, h: usize, g: usize, r: usize) -> &[f32] {
        let at = ((h * self.group + g) * self.rows + r) * self.keys;
        &self.logits[at..at + self.prefix + r + 1]
    }

    /// The raw scores `q̄ · k_i` of KV head `h` at row `r`: the group's mean logit, unscaled
    /// (the mean of the dots is the dot with the mean query).
    pub fn mean_query_scores(&self, h: usize, r: usize) -> Vec<f32> {
        let n = self.prefix + r + 1;
        let mut out = vec![0f32; n];
        for g in 0..self.group {
            for (o, v) in out.iter_mut().zip(self.row(h, g, r)) {
                *o += v;
            }
        }
        let f = (1.0 / (self.group as f64 * self.scale)) as f32;
        out.iter_mut().for_each(|o| *o *= f);
        out
    }
}

pub trait HeadMixer {
    fn plan(&mut self, layer: usize) -> Result<LayerPlan>;
    fn observe(&mut self, layer: usize, scores: &LayerScores) -> Result<()>;
}

/// The teacher: full attention everywhere.
pub struct FullMixer;

impl HeadMixer for FullMixer {
    fn plan(&mut self, _: usize) -> Result<LayerPlan> {
        Ok(LayerPlan::full())
    }
    fn observe(&mut self, _: usize, _: &LayerScores) -> Result<()> {
        Ok(())
    }
}

/// `[kv, group, rows, keys]` bias from a keep-predicate per (kv, group, row).
fn bias_tensor(s: &LayerScores, dtype: DType, mut fill: impl FnMut(usize, usize, usize, &mut [bool])) -> Result<Tensor> {
    let mut bias = vec![0f32; s.logits.len()];
    let mut keep = vec![false; s.keys];
    for h in 0..s.kv_heads {
        for g in 0..s.group {
            for r in 0..s.rows {
                let valid = s.prefix + r + 1;
                fill(h, g, r, &mut keep);
                let at = ((h * s.group + g) * s.rows + r) * s.keys;
                for (b, &k) in bias[at..at + valid].iter_mut().zip(&keep[..valid]) {
                    if !k {
                        *b = -1e9;
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(bias, (s.kv_heads, s.group, s.rows, s.keys), &Device::Cpu)?.to_dtype(dtype)?)
}

/// The paper's training form: layer `l ≥ 1` mixes full attention and sparse attention under
/// the token masks that layer `l − 1`'s query heads computed from their own logits, with weights
/// `z[l]` (layer 0 attends fully: it is retrieval by rule).
pub struct TrainingMixer {
    /// `[layers, kv_heads]`, tracked.
    pub z: Tensor,
    pub mask: RatioMask,
    pub dtype: DType,
    next_bias: Option<Tensor>,
}

impl TrainingMixer {
    pub fn new(z: Tensor, mask: RatioMask, dtype: DType) -> Self {
        Self { z, mask, dtype, next_bias: None }
    }
}

impl HeadMixer for TrainingMixer {
    fn plan(&mut self, layer: usize) -> Result<LayerPlan> {
        if layer == 0 {
            return Ok(LayerPlan::full());
        }
        let bias = self.next_bias.take().ok_or_else(|| anyhow::anyhow!("layer {layer}: no mask from layer {}", layer - 1))?;
        Ok(LayerPlan { z: Some(self.z.get(layer)?), sparse_bias: Some(bias) })
    }

    fn observe(&mut self, _: usize, s: &LayerScores) -> Result<()> {
        let mask = self.mask;
        self.next_bias = Some(bias_tensor(s, self.dtype, |h, g, r, keep| mask.keep(s.row(h, g, r), keep))?);
        Ok(())
    }
}

/// Hard roles under the inference rule: retrieval heads attend fully and, after attending,
/// replace their head index's block selection; sparse heads attend to the selection left by the
/// nearest lower retrieval layer with the same head index (layer 0 is all retrieval, so every
/// index has a selection before any sparse head reads it).
pub struct HardRolesMixer {
    pub retrieval: Vec<bool>,
    pub kv_heads: usize,
    pub budget: BlockBudget,
    pub dtype: DType,
    /// Per KV head, per row: the blocks a sparse head of that index reads.
    selection: Vec<Vec<Vec<usize>>>,
    /// The next layer's sparse mask, built once this layer's selections are known.
    next_bias: Option<Tensor>,
}

impl HardRolesMixer {
    pub fn new(retrieval: Vec<bool>, kv_heads: usize, budget: BlockBudget, dtype: DType) -> Self {
        Self { retrieval, kv_heads, budget, dtype, selection: vec![Vec::new(); kv_heads], next_bias: None }
    }

    fn roles(&self, layer: usize) -> &[bool] {
        &self.retrieval[layer * self.kv_heads..(layer + 1) * self.kv_heads]
    }
}

impl HeadMixer for HardRolesMixer {
    fn plan(&mut self, layer: usize) -> Result<LayerPlan> {
        let roles = self.roles(layer);
        if layer == 0 || roles.iter().all(|&r| r) {
            return Ok(LayerPlan::full());
        }
        let z: Vec<f32> = roles.iter().map(|&r| if r { 1.0 } else { 0.0 }).collect();
        let bias = self.next_bias.take().ok_or_else(|| anyhow::anyhow!("layer {layer}: no selection from the layers below"))?;
        Ok(LayerPlan { z: Some(Tensor::new(z, &Device::Cpu)?.to_dtype(self.dtype)?), sparse_bias: Some(bias) })
    }

    fn observe(&mut self, layer: usize, s: &LayerScores) -> Result<()> {
        for h in 0..self.kv_heads {
            if self.roles(layer)[h] {
                self.selection[h] = (0..s.rows).map(|r| self.budget.select(&s.mean_query_scores(h, r))).collect();
            }
        }
        let (budget, sel) = (self.budget, &self.selection);
        self.next_bias = Some(bias_tensor(s, self.dtype, |h, _, r, keep| budget.keep(&sel[h][r], s.prefix + r + 1, keep))?);
        Ok(())
    }
}

/// The heuristic's measurement: with full attention everywhere, the attention mass each head
/// (layer ≥ 1) puts outside its own top-k blocks, summed over the rows (mean over the group's
/// query heads). A head whose mass spills outside any budget needs full attention.
pub struct OutsideMassProbe {
    pub budget: BlockBudget,
    pub kv_heads: usize,
    /// `[layers · kv_heads]`: the sum over observed rows.
    pub outside: Vec<f64>,
    pub rows_seen: usize,
}

impl OutsideMassProbe {
    pub fn new(num_layers: usize, kv_heads: usize, budget: BlockBudget) -> Self {
        Self { budget, kv_heads, outside: vec![0.0; num_layers * kv_heads], rows_seen: 0 }
    }
}

impl HeadMixer for OutsideMassProbe {
    fn plan(&mut self, _: usize) -> Result<LayerPlan> {
        Ok(LayerPlan::full())
    }

    fn observe(&mut self, layer: usize, s: &LayerScores) -> Result<()> {
        if layer == 0 {
            self.rows_seen += s.rows;
        }
        let mut keep = vec![false; s.keys];
        for h in 0..s.kv_heads {
            for r in 0..s.rows {
                let valid = s.prefix + r + 1;
                self.budget.keep(&self.budget.select(&s.mean_query_scores(h, r)), valid, &mut keep);
                let mut mass = 0.0;
                for g in 0..s.group {
                    let logits = s.row(h, g, r);
                    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let (mut total, mut outside) = (0f64, 0f64);
                    for (&l, &k) in logits.iter().zip(&keep) {
                        let e = ((l - max) as f64).exp();
                        total += e;
                        if !k {
                            outside += e;
                        }
                    }
                    mass += outside / total;
                }
                self.outside[layer * self.kv_heads + h] += mass / s.group as f64;
            }
        }
        Ok(())
    }
}
