//! Rebuilds an HF `tokenizers::Tokenizer` from GGUF `tokenizer.ggml.*` metadata, so a lone
//! `.gguf` file is enough to serve a model.
//!
//! Two GGUF tokenizer models are understood: `gpt2` (byte-level BPE: SmolLM, Qwen2/3, Llama 3)
//! and `llama` (SentencePiece BPE with byte fallback: Llama 2, TinyLlama, llama2.c models). The
//! result is the pipeline HF's own `tokenizer.json` for that family would describe, so ids match
//! the HF tokenizer exactly.
//!
//! Token types decide added tokens the way HF's converters do: control (and the unknown piece)
//! become *special* added tokens (matched verbatim in text, dropped by `skip_special_tokens`);
//! user-defined pieces become added tokens that are matched verbatim but are *not* special, so a
//! tool-call marker such as Qwen's `<tool_call>` survives decoding with special tokens skipped.
//!
//! Must not know: where the metadata came from (file reading is the caller's) or which ids stop
//! generation.

use std::collections::HashSet;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{AddedToken, DecoderWrapper, PostProcessorWrapper};

use super::gguf_meta::{opt_bool, opt_f32_array, opt_id, opt_int_array, opt_str, opt_str_array, req_str, Metadata};
use super::{pretokenize, spm};

/// GGUF `tokenizer.ggml.token_type` values.
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

pub(super) fn build(md: &Metadata) -> Result<tokenizers::Tokenizer> {
    let model = req_str(md, "tokenizer.ggml.model")?;
    let tokens = opt_str_array(md, "tokenizer.ggml.tokens")?
        .ok_or_else(|| anyhow!("GGUF metadata has no tokenizer.ggml.tokens"))?;
    if tokens.is_empty() {
        bail!("GGUF metadata tokenizer.ggml.tokens is empty");
    }
    let types = opt_int_array(md, "tokenizer.ggml.token_type")?;
    if let Some(t) = &types {
        if t.len() != tokens.len() {
            bail!("GGUF metadata tokenizer.ggml.token_type has {} entries for {} tokens", t.len(), tokens.len());
        }
    }
    let vocab = Vocabulary { tokens, types };
    let mut tokenizer = match model {
        "gpt2" => byte_level_bpe(md, &vocab)?,
        "llama" => sentencepiece_bpe(md, &vocab)?,
        other => bail!("unsupported tokenizer.ggml.model `{other}` (supported: gpt2, llama)"),
    };
    add_special_and_user_tokens(&mut tokenizer, &vocab, model == "llama");
    tokenizer.with_post_processor(bos_eos_template(md, &vocab, model == "llama")?);
    Ok(tokenizer)
}

struct Vocabulary<'a> {
    tokens: Vec<&'a str>,
    types: Option<Vec<i64>>,
}

impl Vocabulary<'_> {
    fn kind(&self, id: usize) -> Option<i64> {
        self.types.as_ref().map(|t| t[id])
    }

    /// token → id. A string listed twice keeps its first id, so that id decodes to it and
    /// the later one is unreachable by encoding (as in llama.cpp).
    fn map(&self) -> Result<Vocab> {
        let mut seen = HashSet::with_capacity(self.tokens.len());
        let mut vocab = Vocab::default();
        let mut duplicates = 0usize;
        for (id, tok) in self.tokens.iter().enumerate() {
            let id = u32::try_from(id).context("GGUF vocabulary larger than 2^32 tokens")?;
            if seen.insert(*tok) {
                vocab.insert(tok.to_string(), id);
            } else {
                duplicates += 1;
            }
        }
        if duplicates > 0 {
            tracing::warn!("GGUF vocabulary lists {duplicates} token strings more than once; the first id wins");
        }
        Ok(vocab)
    }

    fn token(&self, id: u32) -> Result<&str> {
        self.tokens
            .get(id as usize)
            .copied()
            .ok_or_else(|| anyhow!("token id {id} is outside the vocabulary of {} tokens", self.tokens.len()))
    }
}

fn byte_level_bpe(md: &Metadata, vocab: &Vocabulary) -> Result<tokenizers::Tokenizer> {
    let merges = opt_str_array(md, "tokenizer.ggml.merges")?
        .ok_or_else(|| anyhow!("GGUF metadata has no tokenizer.ggml.merges (required for a gpt2 tokenizer)"))?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(l, r)| (l.to_string(), r.to_string()))
                .ok_or_else(|| anyhow!("GGUF metadata tokenizer.ggml.merges[{i}] `{m}` is not two tokens"))
        })
        .collect::<Result<Vec<_>>>()?;
    let pipeline = pretokenize::for_pre(opt_str(md, "tokenizer.ggml.pre")?)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.map()?, merges)
        .ignore_merges(pipeline.ignore_merges)
        .build()
        .map_err(|e| anyhow!("GGUF byte-level BPE: {e}"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(pipeline.normalizer)
        .with_pre_tokenizer(Some(pipeline.pre_tokenizer))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    Ok(tokenizer)
}

fn sentencepiece_bpe(md: &Metadata, vocab: &Vocabulary) -> Result<tokenizers::Tokenizer> {
    let scores = match opt_f32_array(md, "tokenizer.ggml.scores")? {
        Some(s) if s.len() == vocab.tokens.len() => s,
        Some(s) => {
            bail!("GGUF metadata tokenizer.ggml.scores has {} entries for {} tokens", s.len(), vocab.tokens.len())
        }
        // Without scores a lower id is a more frequent piece: rank merges by id.
        None => (0..vocab.tokens.len()).map(|i| -(i as f32)).collect(),
    };
    let merges = spm::merges_from_scores(&vocab.tokens, &scores);
    let unk_id = match opt_id(md, "tokenizer.ggml.unknown_token_id")? {
        Some(id) => Some(id),
        None => (0..vocab.tokens.len()).find(|&i| vocab.kind(i) == Some(TYPE_UNKNOWN)).map(|i| i as u32),
    };
    let mut builder = BPE::builder().vocab_and_merges(vocab.map()?, merges).byte_fallback(true).fuse_unk(true);
    if let Some(id) = unk_id {
        builder = builder.unk_token(vocab.token(id).context("tokenizer.ggml.unknown_token_id")?.to_string());
    }
    let bpe = builder.build().map_err(|e| anyhow!("GGUF SentencePiece BPE: {e}"))?;
    let add_space_prefix = opt_bool(md, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let remove_extra_ws = opt_bool(md, "tokenizer.ggml.remove_extra_whitespaces")?.unwrap_or(false);
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(spm::normalizer(remove_extra_ws, add_space_prefix)?))
        .with_decoder(Some(spm::decoder(add_space_prefix)?));
    Ok(tokenizer)
}

fn add_special_and_user_tokens(tokenizer: &mut tokenizers::Tokenizer, vocab: &Vocabulary, unknown_is_special: bool) {
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (id, tok) in vocab.tokens.iter().enumerate() {
        if tok.is_empty() {
            continue; // an empty added token would match everywhere
        }
        match vocab.kind(id) {
            Some(TYPE_CONTROL) => special.push(AddedToken::from(*tok, true).normalized(false)),
            Some(TYPE_UNKNOWN) if unknown_is_special => special.push(AddedToken::from(*tok, true).normalized(false)),
            Some(TYPE_USER_DEFINED) => user.push(AddedToken::from(*tok, false).normalized(false)),
            _ => {}
        }
    }
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&user);
}

/// BOS/EOS insertion for `add_special_tokens=true`. Absent flags follow the model family:
/// SentencePiece Llama models always start with BOS, byte-level files say so explicitly.
fn bos_eos_template(md: &Metadata, vocab: &Vocabulary, is_spm: bool) -> Result<Option<PostProcessorWrapper>> {
    let add_bos = opt_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(is_spm);
    let add_eos = opt_bool(md, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let mut specials = Vec::new();
    let mut single: Vec<&str> = Vec::new();
    let mut pair: Vec<&str> = Vec::new();
    for (wanted, key, name) in
        [(add_bos, "tokenizer.ggml.bos_token_id", "BOS"), (add_eos, "tokenizer.ggml.eos_token_id", "EOS")]
    {
        if !wanted {
            continue;
        }
        let id = opt_id(md, key)?.ok_or_else(|| anyhow!("GGUF metadata asks to add {name} but has no {key}"))?;
        let token = vocab.token(id).with_context(|| key.to_string())?;
        specials.push(
            SpecialToken::new(name.into(), vec![id], vec![token.to_string()]).map_err(|e| anyhow!("{name}: {e}"))?,
        );
    }
    if specials.is_empty() {
        return Ok(None);
    }
    // HF's Llama layout: BOS $A EOS, and for a pair BOS $A EOS BOS $B EOS.
    for (seq, type_id) in [("$A", 0u32), ("$B:1", 1)] {
        let target = if type_id == 0 { &mut single } else { &mut pair };
        let (bos, eos) = if type_id == 0 { ("BOS", "EOS") } else { ("BOS:1", "EOS:1") };
        if add_bos {
            target.push(bos);
        }
        target.push(seq);
        if add_eos {
            target.push(eos);
        }
    }
    let pair: Vec<&str> = single.iter().copied().chain(pair).collect();
    let template = TemplateProcessing::builder()
        .try_single(single)
        .map_err(|e| anyhow!("BOS/EOS template: {e}"))?
        .try_pair(pair)
        .map_err(|e| anyhow!("BOS/EOS template: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| anyhow!("BOS/EOS template: {e}"))?;
    Ok(Some(PostProcessorWrapper::Template(template)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;

    fn strs(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A tiny byte-level vocabulary: every byte symbol a–e, `Ġ`, a merge or two, two controls
    /// and one user-defined marker.
    fn tiny_gpt2() -> Metadata {
        let tokens = ["<s>", "</s>", "<tool>", "a", "b", "c", "Ġ", "ab", "Ġab", "1", "2"];
        let types = [3, 3, 4, 1, 1, 1, 1, 1, 1, 1, 1];
        let mut md = Metadata::new();
        md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        md.insert("tokenizer.ggml.pre".into(), Value::String("smollm".into()));
        md.insert("tokenizer.ggml.tokens".into(), strs(&tokens));
        md.insert("tokenizer.ggml.token_type".into(), Value::Array(types.iter().map(|&t| Value::I32(t)).collect()));
        md.insert("tokenizer.ggml.merges".into(), strs(&["a b", "Ġ ab"]));
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(0));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(1));
        md
    }

    fn ids(t: &tokenizers::Tokenizer, text: &str, special: bool) -> Vec<u32> {
        t.encode_fast(text, special).unwrap().get_ids().to_vec()
    }

    #[test]
    fn byte_level_merges_and_controls_are_special() {
        let t = build(&tiny_gpt2()).unwrap();
        assert_eq!(ids(&t, "ab ab</s>", true), vec![7, 8, 1]);
        assert_eq!(t.decode(&[7, 8, 1], true).unwrap(), "ab ab");
        assert_eq!(t.decode(&[7, 8, 1], false).unwrap(), "ab ab</s>");
    }

    #[test]
    fn user_defined_tokens_match_but_survive_skip_special() {
        let t = build(&tiny_gpt2()).unwrap();
        assert_eq!(ids(&t, "a<tool>b", false), vec![3, 2, 4]);
        assert_eq!(t.decode(&[3, 2, 4], true).unwrap(), "a<tool>b");
    }

    #[test]
    fn bos_is_added_only_when_the_metadata_asks() {
        let mut md = tiny_gpt2();
        assert_eq!(ids(&build(&md).unwrap(), "ab", true), vec![7]);
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        assert_eq!(ids(&build(&md).unwrap(), "ab", true), vec![0, 7]);
        assert_eq!(ids(&build(&md).unwrap(), "ab", false), vec![7]);
        md.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
        assert_eq!(ids(&build(&md).unwrap(), "ab", true), vec![0, 7, 1]);
    }

    #[test]
    fn smollm_pre_splits_digits_before_merging() {
        let t = build(&tiny_gpt2()).unwrap();
        assert_eq!(ids(&t, "12", false), vec![9, 10]);
    }

    #[test]
    fn malformed_metadata_errors_name_the_key() {
        let mut md = tiny_gpt2();
        md.insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
        assert!(build(&md).unwrap_err().to_string().contains("`t5`"));
        let mut md = tiny_gpt2();
        md.insert("tokenizer.ggml.token_type".into(), Value::Array(vec![Value::I32(1)]));
        assert!(build(&md).unwrap_err().to_string().contains("token_type"));
        let mut md = tiny_gpt2();
        md.remove("tokenizer.ggml.merges");
        assert!(build(&md).unwrap_err().to_string().contains("tokenizer.ggml.merges"));
        let mut md = tiny_gpt2();
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(999));
        let err = format!("{:#}", build(&md).unwrap_err());
        assert!(err.contains("999") && err.contains("bos_token_id"), "{err}");
    }

    #[test]
    fn sentencepiece_prefixes_a_space_and_falls_back_to_bytes() {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        tokens.extend(["▁", "h", "i", "▁h", "▁hi"].iter().map(|s| s.to_string()));
        let mut types = vec![2, 3, 3];
        types.extend(std::iter::repeat_n(6, 256));
        types.extend([1, 1, 1, 1, 1]);
        let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
        let mut md = Metadata::new();
        md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        md.insert("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().cloned().map(Value::String).collect()));
        md.insert("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect()));
        md.insert("tokenizer.ggml.scores".into(), Value::Array(scores.into_iter().map(Value::F32).collect()));
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
        let t = build(&md).unwrap();
        let hi = 3 + 256 + 4;
        let e_acute = ids(&t, "hié", true);
        // BOS, ▁hi, then é as its two UTF-8 bytes 0xC3 0xA9.
        assert_eq!(e_acute, vec![1, hi, 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&e_acute, true).unwrap(), "hié");
    }
}
