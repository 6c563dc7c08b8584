//! Tokenizers: one `Tokenizer` type whatever the model ships — an HF `tokenizer.json`, or only
//! the vocabulary inside a GGUF file (rebuilt in [`gguf`]) — plus streaming detokenization
//! ([`IncrementalDecoder`]).
//!
//! Owns: text ⇄ ids, which ids are special, and turning a stream of generated ids into text
//! deltas that never split a character.
//! Must not know: chat formatting, stop conditions or which ids end a sequence (that is
//! `special_tokens`), or anything about requests.

mod gguf;
pub(crate) mod gguf_meta;
mod incremental;
mod pretokenize;
mod spm;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::quantized::gguf_file;

pub use incremental::IncrementalDecoder;

/// A loaded tokenizer. Cheap to share behind an `Arc`; `Clone` copies the vocabulary.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Sorted ids of the added tokens marked special; kept because `tokenizers` only answers
    /// that question by cloning its whole added-token table.
    special_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).finish()
    }
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read tokenizer", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("{}: not a valid tokenizer.json", path.display()))
    }

    /// Parses the contents of an HF `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| anyhow!("tokenizer.json: {e}"))?;
        Ok(Self::from_inner(inner))
    }

    /// Rebuilds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(metadata: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        Ok(Self::from_inner(gguf::build(metadata)?))
    }

    /// Wraps an already-built `tokenizers` tokenizer.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        let mut special_ids: Vec<u32> =
            inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(id, _)| *id).collect();
        special_ids.sort_unstable();
        Self { inner, special_ids }
    }

    /// Text to ids. `add_special_tokens` runs the post-processor (e.g. prepends BOS); special
    /// tokens written literally in `text` are always recognized, as in HF.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizer: cannot encode text: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids to text. Unknown ids are dropped, as HF does.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("tokenizer: cannot decode {} ids: {e}", ids.len()))
    }

    /// Number of ids, added tokens included (the highest id + 1 when ids are dense).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is an added token marked special (the ones `skip_special_tokens` drops).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stories() -> Tokenizer {
        Tokenizer::from_bytes(crate::embedded::TOKENIZER_JSON).expect("embedded tokenizer parses")
    }

    #[test]
    fn encode_adds_bos_only_when_asked() {
        let tok = stories();
        let with = tok.encode("Once upon a time", true).unwrap();
        let without = tok.encode("Once upon a time", false).unwrap();
        assert_eq!(with[0], 1);
        assert_eq!(&with[1..], &without[..]);
        assert_eq!(tok.decode(&with, true).unwrap(), "Once upon a time");
    }

    #[test]
    fn special_ids_are_the_added_special_tokens() {
        let tok = stories();
        assert!(tok.is_special(1) && tok.is_special(2) && tok.is_special(0));
        let normal = tok.encode("hello", false).unwrap();
        assert!(normal.iter().all(|&id| !tok.is_special(id)));
        assert_eq!(tok.token_to_id("</s>"), Some(2));
        assert_eq!(tok.id_to_token(1).as_deref(), Some("<s>"));
        assert_eq!(tok.vocab_size(), 512);
    }

    #[test]
    fn from_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let err = format!("{:#}", Tokenizer::from_file(&path).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        let missing = dir.path().join("absent.json");
        let err = format!("{:#}", Tokenizer::from_file(&missing).unwrap_err());
        assert!(err.contains("absent.json"), "{err}");
    }
}
