//! Tokenizers rebuilt from GGUF metadata must give exactly the ids of the HF tokenizer.json of
//! the same model: SmolLM2's real GGUF (byte-level BPE) and stories260K's SentencePiece model
//! turned into GGUF-style metadata.

mod tok_support;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use kvault_models::special_tokens::SpecialTokens;
use kvault_models::tokenizer::{IncrementalDecoder, Tokenizer};
use tok_support::*;

fn smollm_pair() -> (Tokenizer, Tokenizer) {
    let from_gguf = Tokenizer::from_gguf(&smollm_gguf_metadata()).expect("GGUF tokenizer builds");
    let from_json = Tokenizer::from_file(&model_dir("smollm2-135m-instruct").join("tokenizer.json")).unwrap();
    (from_gguf, from_json)
}

#[test]
fn smollm_gguf_tokenizer_matches_tokenizer_json_on_every_text_line() {
    let (gguf, json) = smollm_pair();
    assert_eq!(gguf.vocab_size(), json.vocab_size());
    let lines = text_lines();
    let mut compared = 0usize;
    for (file, line) in &lines {
        let a = gguf.encode(line, true).unwrap();
        let b = json.encode(line, true).unwrap();
        assert_eq!(a, b, "{file}: line {line:?}");
        compared += 1;
    }
    // Whole files too: newlines and long runs of whitespace only appear there.
    for file in ["alice_in_wonderland.txt", "rust_book_ch00-10.txt"] {
        let text = std::fs::read_to_string(shared().join("data/texts").join(file)).unwrap();
        assert_eq!(gguf.encode(&text, true).unwrap(), json.encode(&text, true).unwrap(), "{file} as a whole");
    }
    println!("compared {compared} lines (+2 whole files): GGUF-built ids == tokenizer.json ids");
    assert!(compared > 70_000, "expected every line of shared/data/texts, got {compared}");
}

#[test]
fn smollm_gguf_tokenizer_reproduces_reference_prompt_ids() {
    let (gguf, json) = smollm_pair();
    let reference = reference("smollm2-135m-instruct");
    let prompts = reference["prompts"].as_array().expect("prompts");
    for p in prompts {
        let text = p["prompt"].as_str().unwrap();
        let want = ids(&p["input_ids"]);
        assert_eq!(gguf.encode(text, true).unwrap(), want, "{}", p["name"]);
        assert_eq!(json.encode(text, true).unwrap(), want, "{}", p["name"]);
    }
    println!("compared {} reference prompts", prompts.len());
}

#[test]
fn smollm_gguf_tokenizer_decodes_and_flags_specials_like_tokenizer_json() {
    let (gguf, json) = smollm_pair();
    for (_, line) in text_lines().iter().step_by(97) {
        let ids = json.encode(line, true).unwrap();
        assert_eq!(gguf.decode(&ids, false).unwrap(), json.decode(&ids, false).unwrap());
        assert_eq!(gguf.decode(&ids, false).unwrap(), *line, "byte-level BPE round-trips");
    }
    for id in 0..json.vocab_size() as u32 {
        assert_eq!(gguf.is_special(id), json.is_special(id), "id {id}");
        assert_eq!(gguf.id_to_token(id), json.id_to_token(id), "id {id}");
    }
    let chat = "<|im_start|>user\nhi<|im_end|>";
    let ids = gguf.encode(chat, false).unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(gguf.decode(&ids, true).unwrap(), "user\nhi");
}

#[test]
fn smollm_gguf_special_tokens_end_turns_with_im_end() {
    let md = smollm_gguf_metadata();
    let tok = Tokenizer::from_gguf(&md).unwrap();
    let st = SpecialTokens::from_gguf(&md, &tok).unwrap();
    assert_eq!(st.bos_token_id, Some(1));
    assert!(st.is_eos(2), "{st:?}");
    assert_eq!(st.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(st.pad_token_id, Some(2));
    let from_dir = SpecialTokens::from_model_dir(&model_dir("smollm2-135m-instruct"), &tok).unwrap();
    assert_eq!(from_dir.eos_token_ids, vec![2]);
    assert_eq!(from_dir.bos_token.as_deref(), Some("<|im_start|>"));
}

#[test]
fn byte_level_streaming_never_splits_characters_and_matches_full_decode() {
    let (gguf, _) = smollm_pair();
    let tok = Arc::new(gguf);
    let mut texts: Vec<String> = text_lines().into_iter().step_by(53).map(|(_, l)| l).collect();
    texts.push("Emoji 🦀🎉 and CJK 中文字 and accents: déjà vu, naïve".into());
    let mut multibyte_seen = false;
    for text in &texts {
        let ids = tok.encode(text, false).unwrap();
        let mut dec = IncrementalDecoder::new(tok.clone(), true);
        let mut out = String::new();
        for &id in &ids {
            let delta = dec.push(id).unwrap();
            assert!(!delta.contains('\u{FFFD}'), "{text:?}: delta {delta:?}");
            out.push_str(&delta);
        }
        out.push_str(&dec.finish().unwrap());
        assert_eq!(out, tok.decode(&ids, true).unwrap(), "{text:?}");
        multibyte_seen |= ids.iter().any(|&id| tok.decode(&[id], false).unwrap().contains('\u{FFFD}'));
    }
    assert!(multibyte_seen, "the texts must include characters split over several tokens");
}

// --- SentencePiece: stories260K's tokenizer.model as GGUF-style metadata ---------------------

/// What a GGUF converter reads from a SentencePiece `ModelProto`.
struct SpModel {
    pieces: Vec<(String, f32, i32)>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.buf[self.pos];
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint too long")
    }

    /// (field number, wire type), or None at the end.
    fn key(&mut self) -> Option<(u64, u64)> {
        (self.pos < self.buf.len()).then(|| {
            let k = self.varint();
            (k >> 3, k & 7)
        })
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }

    fn len_delimited(&mut self) -> &'a [u8] {
        let n = self.varint() as usize;
        self.bytes(n)
    }

    fn skip(&mut self, wire: u64) {
        match wire {
            0 => {
                self.varint();
            }
            1 => {
                self.bytes(8);
            }
            2 => {
                self.len_delimited();
            }
            5 => {
                self.bytes(4);
            }
            w => panic!("unsupported wire type {w}"),
        }
    }
}

fn parse_sentencepiece(buf: &[u8]) -> SpModel {
    let mut model = SpModel { pieces: Vec::new(), add_dummy_prefix: true, remove_extra_whitespaces: true };
    let mut r = Reader { buf, pos: 0 };
    while let Some((field, wire)) = r.key() {
        match (field, wire) {
            (1, 2) => {
                let mut p = Reader { buf: r.len_delimited(), pos: 0 };
                let (mut piece, mut score, mut kind) = (String::new(), 0f32, 1i32);
                while let Some((f, w)) = p.key() {
                    match (f, w) {
                        (1, 2) => piece = String::from_utf8(p.len_delimited().to_vec()).unwrap(),
                        (2, 5) => score = f32::from_le_bytes(p.bytes(4).try_into().unwrap()),
                        (3, 0) => kind = p.varint() as i32,
                        (_, w) => p.skip(w),
                    }
                }
                model.pieces.push((piece, score, kind));
            }
            (3, 2) => {
                let mut n = Reader { buf: r.len_delimited(), pos: 0 };
                while let Some((f, w)) = n.key() {
                    match (f, w) {
                        (3, 0) => model.add_dummy_prefix = n.varint() != 0,
                        (4, 0) => model.remove_extra_whitespaces = n.varint() != 0,
                        (_, w) => n.skip(w),
                    }
                }
            }
            (_, w) => r.skip(w),
        }
    }
    model
}

fn stories_metadata() -> HashMap<String, Value> {
    let path = model_dir("stories260K").join("tokenizer.model");
    let sp = parse_sentencepiece(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    assert_eq!(sp.pieces.len(), 512);
    let mut md = HashMap::new();
    let s = |v: &str| Value::String(v.to_string());
    md.insert("tokenizer.ggml.model".into(), s("llama"));
    md.insert("tokenizer.ggml.tokens".into(), Value::Array(sp.pieces.iter().map(|p| s(&p.0)).collect()));
    md.insert("tokenizer.ggml.scores".into(), Value::Array(sp.pieces.iter().map(|p| Value::F32(p.1)).collect()));
    md.insert("tokenizer.ggml.token_type".into(), Value::Array(sp.pieces.iter().map(|p| Value::I32(p.2)).collect()));
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
    md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    md.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(sp.add_dummy_prefix));
    md.insert("tokenizer.ggml.remove_extra_whitespaces".into(), Value::Bool(sp.remove_extra_whitespaces));
    md
}

fn model_json(t: &Tokenizer) -> serde_json::Value {
    let text = t.inner().to_string(false).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["model"].clone()
}

#[test]
fn sentencepiece_merges_derived_from_scores_equal_hf_conversion() {
    let gguf = Tokenizer::from_gguf(&stories_metadata()).unwrap();
    let json = Tokenizer::from_file(&model_dir("stories260K").join("tokenizer.json")).unwrap();
    let (a, b) = (model_json(&gguf), model_json(&json));
    assert_eq!(a["vocab"], b["vocab"]);
    assert_eq!(a["merges"], b["merges"], "merge ranks derived from SentencePiece scores");
    assert_eq!(a["merges"].as_array().unwrap().len(), 165);
}

#[test]
fn sentencepiece_gguf_tokenizer_matches_tokenizer_json_on_text_lines() {
    let gguf = Tokenizer::from_gguf(&stories_metadata()).unwrap();
    let json = Tokenizer::from_file(&model_dir("stories260K").join("tokenizer.json")).unwrap();
    let mut compared = 0usize;
    let mut extra: Vec<String> = ["  leading and  double  spaces ", "中文 🦀 <s> inside </s> text", "", " "]
        .iter()
        .map(|s| s.to_string())
        .collect();
    extra.extend(text_lines().into_iter().map(|(_, l)| l));
    for line in &extra {
        let ids = gguf.encode(line, true).unwrap();
        assert_eq!(ids, json.encode(line, true).unwrap(), "line {line:?}");
        assert_eq!(gguf.decode(&ids, true).unwrap(), json.decode(&ids, true).unwrap(), "line {line:?}");
        compared += 1;
    }
    // Decoding gives the text back up to SentencePiece's whitespace cleanup.
    let line = "Once upon a time, there was a little girl named Lily.";
    assert_eq!(gguf.decode(&gguf.encode(line, true).unwrap(), true).unwrap(), line);
    for p in reference("stories260K")["prompts"].as_array().unwrap() {
        assert_eq!(gguf.encode(p["prompt"].as_str().unwrap(), true).unwrap(), ids(&p["input_ids"]), "{}", p["name"]);
    }
    println!("compared {compared} lines: SentencePiece GGUF-built ids == tokenizer.json ids");
    assert!(compared > 70_000);
}
