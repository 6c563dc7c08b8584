//! The ids that bracket a sequence: BOS, the set of ids that end generation, and padding.
//!
//! HF spreads these over three files that often disagree: `config.json` and
//! `generation_config.json` (`eos_token_id` an int or a list) and `tokenizer_config.json`
//! (`eos_token` a string or an AddedToken object). A chat model typically lists its end-of-turn
//! token in one and its end-of-document token in another, and stopping on only one of them
//! runs generation on past the answer, so the stop set is their union. GGUF has single
//! `eos`/`eot`/`eom` id keys; there the stop set also gets the well-known end-of-turn tokens
//! present in the vocabulary as special tokens (llama.cpp's rule, for the same reason).
//!
//! Owns: reading those fields. Must not know: sampling or how stopping is applied.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use serde_json::Value as Json;

use crate::chat_template::token_string;
use crate::tokenizer::gguf_meta::opt_id;
use crate::tokenizer::Tokenizer;

/// Token texts that end a turn in common chat formats.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token_id: Option<u32>,
    /// Every id that ends generation; sorted, no duplicates.
    pub eos_token_ids: Vec<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token_id: Option<u32>,
}

/// The relevant fields of the three HF files, merged.
struct HfFields {
    bos_ids: Vec<u32>,
    eos_ids: Vec<u32>,
    pad_ids: Vec<u32>,
    bos_text: Option<String>,
    eos_text: Option<String>,
    pad_text: Option<String>,
}

/// `null`, an id, or (for eos) a list of ids.
fn ids_field(json: &Json, key: &str, file: &str, allow_list: bool) -> Result<Vec<u32>> {
    let one = |v: &Json| -> Result<u32> {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .with_context(|| format!("{file}: {key} must be a token id, found {v}"))
    };
    match json.get(key) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(list)) if allow_list => list.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

fn parse(text: &str, file: &str) -> Result<Json> {
    let json: Json = serde_json::from_str(text).with_context(|| format!("{file}: invalid JSON"))?;
    if !json.is_object() {
        bail!("{file}: expected a JSON object");
    }
    Ok(json)
}

impl SpecialTokens {
    /// Reads `config.json`, `generation_config.json` and `tokenizer_config.json` from `dir`;
    /// any of them may be absent, but one that is present must parse.
    pub fn from_model_dir(dir: &Path, tokenizer: &Tokenizer) -> Result<Self> {
        let read = |name: &str| -> Result<Option<String>> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            std::fs::read_to_string(&path).map(Some).with_context(|| format!("{}: cannot read", path.display()))
        };
        let (config, generation, tok_config) =
            (read("config.json")?, read("generation_config.json")?, read("tokenizer_config.json")?);
        Self::from_json_texts(config.as_deref(), generation.as_deref(), tok_config.as_deref(), tokenizer)
            .with_context(|| format!("{}: special tokens", dir.display()))
    }

    /// As [`from_model_dir`](Self::from_model_dir), from the files' contents.
    pub fn from_json_texts(
        config: Option<&str>,
        generation_config: Option<&str>,
        tokenizer_config: Option<&str>,
        tokenizer: &Tokenizer,
    ) -> Result<Self> {
        let mut f = HfFields {
            bos_ids: vec![],
            eos_ids: vec![],
            pad_ids: vec![],
            bos_text: None,
            eos_text: None,
            pad_text: None,
        };
        // Earlier entries win for the single-valued fields: generation settings are the most
        // specific, the tokenizer's token strings the least.
        for (text, file) in [(generation_config, "generation_config.json"), (config, "config.json")] {
            let Some(text) = text else { continue };
            let json = parse(text, file)?;
            f.bos_ids.extend(ids_field(&json, "bos_token_id", file, false)?);
            f.eos_ids.extend(ids_field(&json, "eos_token_id", file, true)?);
            f.pad_ids.extend(ids_field(&json, "pad_token_id", file, false)?);
        }
        if let Some(text) = tokenizer_config {
            let json = parse(text, "tokenizer_config.json")?;
            f.bos_text = json.get("bos_token").and_then(token_string);
            f.eos_text = json.get("eos_token").and_then(token_string);
            f.pad_text = json.get("pad_token").and_then(token_string);
        }
        Ok(Self::resolve(f, tokenizer))
    }

    fn resolve(f: HfFields, tokenizer: &Tokenizer) -> Self {
        let lookup = |text: &Option<String>, what: &str| -> Option<u32> {
            let text = text.as_ref()?;
            let id = tokenizer.token_to_id(text);
            if id.is_none() {
                tracing::warn!("tokenizer_config.json: {what} `{text}` is not in the vocabulary; ignored");
            }
            id
        };
        let bos_token_id = f.bos_ids.first().copied().or_else(|| lookup(&f.bos_text, "bos_token"));
        let mut eos_token_ids = f.eos_ids;
        eos_token_ids.extend(lookup(&f.eos_text, "eos_token"));
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        let pad_token_id = f.pad_ids.first().copied().or_else(|| lookup(&f.pad_text, "pad_token"));
        let bos_token = f.bos_text.or_else(|| tokenizer.id_to_token(bos_token_id?));
        let eos_token = f.eos_text.or_else(|| tokenizer.id_to_token(*eos_token_ids.first()?));
        Self { bos_token_id, eos_token_ids, bos_token, eos_token, pad_token_id }
    }

    /// From GGUF metadata: `tokenizer.ggml.{bos,eos,eot,eom,padding}_token_id`, plus the
    /// well-known end-of-turn tokens the vocabulary has as special tokens.
    pub fn from_gguf(metadata: &HashMap<String, gguf_file::Value>, tokenizer: &Tokenizer) -> Result<Self> {
        let bos_token_id = opt_id(metadata, "tokenizer.ggml.bos_token_id")?;
        let eos_id = opt_id(metadata, "tokenizer.ggml.eos_token_id")?;
        let mut eos_token_ids: Vec<u32> = eos_id.into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            eos_token_ids.extend(opt_id(metadata, key)?);
        }
        eos_token_ids.extend(
            END_OF_TURN_TEXTS.iter().filter_map(|t| tokenizer.token_to_id(t)).filter(|&id| tokenizer.is_special(id)),
        );
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        let pad_token_id = opt_id(metadata, "tokenizer.ggml.padding_token_id")?;
        let bos_token = bos_token_id.and_then(|id| tokenizer.id_to_token(id));
        let eos_token = eos_id.or(eos_token_ids.first().copied()).and_then(|id| tokenizer.id_to_token(id));
        Ok(Self { bos_token_id, eos_token_ids, bos_token, eos_token, pad_token_id })
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.binary_search(&id).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf_file::Value;

    fn stories() -> Tokenizer {
        Tokenizer::from_bytes(crate::embedded::TOKENIZER_JSON).expect("embedded tokenizer parses")
    }

    #[test]
    fn eos_ids_are_the_union_of_all_three_files() {
        let tok = stories();
        let st = SpecialTokens::from_json_texts(
            Some(r#"{"eos_token_id": [7, 2], "bos_token_id": 1}"#),
            Some(r#"{"eos_token_id": 5}"#),
            Some(r#"{"eos_token": {"content": "<unk>"}, "bos_token": "<s>"}"#),
            &tok,
        )
        .unwrap();
        assert_eq!(st.eos_token_ids, vec![0, 2, 5, 7]);
        assert_eq!(st.bos_token_id, Some(1));
        assert_eq!(st.bos_token.as_deref(), Some("<s>"));
        assert_eq!(st.eos_token.as_deref(), Some("<unk>"));
        assert!(st.is_eos(5) && !st.is_eos(1));
    }

    #[test]
    fn missing_files_are_fine_and_strings_resolve_through_the_tokenizer() {
        let tok = stories();
        let st = SpecialTokens::from_json_texts(None, None, Some(r#"{"eos_token": "</s>", "pad_token": null}"#), &tok)
            .unwrap();
        assert_eq!(st.eos_token_ids, vec![2]);
        assert_eq!(st.pad_token_id, None);
        assert_eq!(SpecialTokens::from_json_texts(None, None, None, &tok).unwrap(), SpecialTokens::default());
    }

    #[test]
    fn malformed_files_are_errors_naming_them() {
        let tok = stories();
        let err = SpecialTokens::from_json_texts(Some("{"), None, None, &tok).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        let err = SpecialTokens::from_json_texts(None, Some(r#"{"eos_token_id": "two"}"#), None, &tok)
            .unwrap_err()
            .to_string();
        assert!(err.contains("generation_config.json") && err.contains("eos_token_id"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), "[]").unwrap();
        let err = format!("{:#}", SpecialTokens::from_model_dir(dir.path(), &tok).unwrap_err());
        assert!(err.contains("tokenizer_config.json") && err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn gguf_stop_set_has_eos_eot_and_special_end_of_turn_tokens() {
        let tok = stories();
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1));
        md.insert("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2));
        md.insert("tokenizer.ggml.eot_token_id".to_string(), Value::I32(9));
        let st = SpecialTokens::from_gguf(&md, &tok).unwrap();
        assert_eq!(st.eos_token_ids, vec![2, 9]);
        assert_eq!(st.bos_token.as_deref(), Some("<s>"));
        assert_eq!(st.eos_token.as_deref(), Some("</s>"));
    }
}
