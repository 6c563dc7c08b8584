//! Logical weight names and their spelling in each format.
//!
//! Owns: the table from a logical weight to its HF safetensors name and its GGUF name, so
//! architectures never build format-specific strings.

/// A weight of the shared decoder, by role. `usize` fields are layer indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightName {
    Embed,
    FinalNorm,
    LmHead,
    /// Per-frequency RoPE divisors (GGUF `rope_freqs.weight`, Llama 3.1).
    RopeFreqs,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    QBias(usize),
    KBias(usize),
    VBias(usize),
    OBias(usize),
    QNorm(usize),
    KNorm(usize),
    MlpNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

impl WeightName {
    pub fn hf(self) -> String {
        use WeightName::*;
        match self {
            Embed => "model.embed_tokens.weight".into(),
            FinalNorm => "model.norm.weight".into(),
            LmHead => "lm_head.weight".into(),
            RopeFreqs => "rope_freqs.weight".into(),
            AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            Q(l) => format!("model.layers.{l}.self_attn.q_proj.weight"),
            K(l) => format!("model.layers.{l}.self_attn.k_proj.weight"),
            V(l) => format!("model.layers.{l}.self_attn.v_proj.weight"),
            O(l) => format!("model.layers.{l}.self_attn.o_proj.weight"),
            QBias(l) => format!("model.layers.{l}.self_attn.q_proj.bias"),
            KBias(l) => format!("model.layers.{l}.self_attn.k_proj.bias"),
            VBias(l) => format!("model.layers.{l}.self_attn.v_proj.bias"),
            OBias(l) => format!("model.layers.{l}.self_attn.o_proj.bias"),
            QNorm(l) => format!("model.layers.{l}.self_attn.q_norm.weight"),
            KNorm(l) => format!("model.layers.{l}.self_attn.k_norm.weight"),
            MlpNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            Gate(l) => format!("model.layers.{l}.mlp.gate_proj.weight"),
            Up(l) => format!("model.layers.{l}.mlp.up_proj.weight"),
            Down(l) => format!("model.layers.{l}.mlp.down_proj.weight"),
        }
    }

    pub fn gguf(self) -> String {
        use WeightName::*;
        match self {
            Embed => "token_embd.weight".into(),
            FinalNorm => "output_norm.weight".into(),
            LmHead => "output.weight".into(),
            RopeFreqs => "rope_freqs.weight".into(),
            AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            Q(l) => format!("blk.{l}.attn_q.weight"),
            K(l) => format!("blk.{l}.attn_k.weight"),
            V(l) => format!("blk.{l}.attn_v.weight"),
            O(l) => format!("blk.{l}.attn_output.weight"),
            QBias(l) => format!("blk.{l}.attn_q.bias"),
            KBias(l) => format!("blk.{l}.attn_k.bias"),
            VBias(l) => format!("blk.{l}.attn_v.bias"),
            OBias(l) => format!("blk.{l}.attn_output.bias"),
            QNorm(l) => format!("blk.{l}.attn_q_norm.weight"),
            KNorm(l) => format!("blk.{l}.attn_k_norm.weight"),
            MlpNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            Gate(l) => format!("blk.{l}.ffn_gate.weight"),
            Up(l) => format!("blk.{l}.ffn_up.weight"),
            Down(l) => format!("blk.{l}.ffn_down.weight"),
        }
    }
}
