//! Byte-level BPE pre-tokenization chosen by GGUF's `tokenizer.ggml.pre` name.
//!
//! A GGUF file names its pre-tokenizer instead of spelling out the regex, so each supported name
//! maps to the pipeline HF's `tokenizer.json` of that model family uses (the HF form is what
//! ids are checked against).
//!
//! An unknown name is an error rather than a GPT-2 fallback: a wrong split still produces
//! plausible-looking ids, so the model would silently see text it was never trained on. A file
//! with no `pre` at all predates the key; those were all GPT-2-style, so that case falls back
//! with a warning (llama.cpp makes the same two choices).
//!
//! Must not know: vocabularies, merges, or special tokens.

use anyhow::{bail, Result};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

/// Llama 3's split: contractions, letter runs with one leading non-letter, numbers in groups of
/// at most three, punctuation runs, newlines, other whitespace.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: as Llama 3's but every digit on its own.
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const GPT2_NAMES: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "phi-2",
    "olmo",
    "mpt",
    "roberta-bpe",
    "jina-v1-en",
    "jina-v2-es",
    "jina-v2-de",
    "jina-v2-code",
];
const DIGITS_THEN_GPT2_NAMES: &[&str] = &["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"];
const LLAMA3_NAMES: &[&str] = &["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"];
const QWEN2_NAMES: &[&str] = &["qwen2", "deepseek-r1-qwen"];

/// What a pre-tokenizer name implies for the tokenizer pipeline.
pub(super) struct ByteLevelPipeline {
    pub normalizer: Option<NormalizerWrapper>,
    pub pre_tokenizer: PreTokenizerWrapper,
    /// Llama 3 looks a whole pre-token up in the vocabulary before applying merges.
    pub ignore_merges: bool,
}

pub(super) fn for_pre(pre: Option<&str>) -> Result<ByteLevelPipeline> {
    let name = match pre {
        Some(name) => name,
        None => {
            tracing::warn!("GGUF has no tokenizer.ggml.pre; assuming the GPT-2 pre-tokenizer");
            "default"
        }
    };
    let gpt2 = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let regex_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| anyhow::anyhow!("pre-tokenizer regex: {e}"))?;
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ])))
    };
    let pipeline = if GPT2_NAMES.contains(&name) {
        ByteLevelPipeline { normalizer: None, pre_tokenizer: gpt2(), ignore_merges: false }
    } else if DIGITS_THEN_GPT2_NAMES.contains(&name) {
        let seq = Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), gpt2()]);
        ByteLevelPipeline { normalizer: None, pre_tokenizer: PreTokenizerWrapper::Sequence(seq), ignore_merges: false }
    } else if LLAMA3_NAMES.contains(&name) {
        ByteLevelPipeline { normalizer: None, pre_tokenizer: regex_then_bytes(LLAMA3_REGEX)?, ignore_merges: true }
    } else if QWEN2_NAMES.contains(&name) {
        // Qwen2's tokenizer.json composes text to NFC before splitting.
        ByteLevelPipeline {
            normalizer: Some(NormalizerWrapper::NFC(tokenizers::normalizers::NFC)),
            pre_tokenizer: regex_then_bytes(QWEN2_REGEX)?,
            ignore_merges: false,
        }
    } else {
        let known: Vec<&str> = [GPT2_NAMES, DIGITS_THEN_GPT2_NAMES, LLAMA3_NAMES, QWEN2_NAMES]
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect();
        bail!("unsupported tokenizer.ggml.pre `{name}` (supported: {})", known.join(", "))
    };
    Ok(pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn split(p: &ByteLevelPipeline, text: &str) -> Vec<String> {
        let mut s = PreTokenizedString::from(text);
        p.pre_tokenizer.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(t, _, _)| t.to_string()).collect()
    }

    #[test]
    fn smollm_splits_digits_one_by_one() {
        let p = for_pre(Some("smollm")).unwrap();
        assert_eq!(split(&p, "in 2024"), vec!["in", "Ġ", "2", "0", "2", "4"]);
    }

    #[test]
    fn llama3_groups_digits_by_three_and_qwen2_by_one() {
        let l3 = for_pre(Some("llama-bpe")).unwrap();
        assert_eq!(split(&l3, "12345"), vec!["123", "45"]);
        assert!(l3.ignore_merges);
        let q = for_pre(Some("qwen2")).unwrap();
        assert_eq!(split(&q, "12345"), vec!["1", "2", "3", "4", "5"]);
        assert!(q.normalizer.is_some());
    }

    #[test]
    fn unknown_pre_is_an_error_naming_it_and_missing_pre_is_gpt2() {
        let err = for_pre(Some("martian")).err().unwrap().to_string();
        assert!(err.contains("`martian`") && err.contains("llama-bpe"), "{err}");
        let p = for_pre(None).unwrap();
        assert_eq!(split(&p, "in 2024"), vec!["in", "Ġ2024"]);
    }
}
