//! Shared helpers for the tokenizer/chat-template/hub integration tests: locating the shared
//! assets (failing loudly when they are missing) and reading the GGUF metadata.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::quantized::gguf_file;

pub fn shared() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared"));
    assert!(
        dir.join("models").is_dir() && dir.join("data/texts").is_dir(),
        "shared test assets missing: looked for models/ and data/texts/ in {}",
        dir.display()
    );
    dir
}

pub fn model_dir(name: &str) -> PathBuf {
    let dir = shared().join("models").join(name);
    assert!(dir.is_dir(), "test model missing: {}", dir.display());
    dir
}

pub fn smollm_gguf_metadata() -> HashMap<String, gguf_file::Value> {
    let path = model_dir("smollm2-135m-instruct").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    gguf_file::Content::read(&mut file).unwrap_or_else(|e| panic!("{}: {e}", path.display())).metadata
}

pub fn reference(name: &str) -> serde_json::Value {
    let path = model_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// Every line of every text file in shared/data/texts, sorted by file name.
pub fn text_lines() -> Vec<(String, String)> {
    let dir = shared().join("data/texts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt" || x == "md"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no text files in {}", dir.display());
    let mut lines = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        lines.extend(text.lines().map(|l| (name.clone(), l.to_string())));
    }
    lines
}
