//! ShareGPT conversations as benchmark prompts, filtered as vLLM does.
//!
//! A conversation contributes its first human turn as the prompt and the turn after it as the
//! expected reply; the reply's token count is the output length unless `--output-len` overrides
//! it. Entries are shuffled with the seed, then kept while valid: prompt ≥ 4 tokens, reply ≥ 4
//! tokens (not checked when the length is overridden), prompt ≤ 1024 tokens and prompt + output
//! ≤ 2048. If fewer valid entries exist than prompts asked for, valid ones are drawn again at
//! random (vLLM's oversampling).
//!
//! Must not know: how prompts are sent.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::SampledRequest;
use kvault_models::tokenizer::Tokenizer;

const MIN_LEN: usize = 4;
const MAX_PROMPT_LEN: usize = 1024;
const MAX_TOTAL_LEN: usize = 2048;

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    conversations: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    from: String,
    value: String,
}

pub fn sample(path: &Path, n: usize, output_len: Option<usize>, seed: u64, tokenizer: &Tokenizer) -> Result<Vec<SampledRequest>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the dataset", path.display()))?;
    let entries: Vec<Entry> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a ShareGPT file (a JSON list of {{\"conversations\": [{{\"from\", \"value\"}}]}})", path.display()))?;
    from_entries(entries, n, output_len, seed, tokenizer).with_context(|| path.display().to_string())
}

fn from_entries(entries: Vec<Entry>, n: usize, output_len: Option<usize>, seed: u64, tokenizer: &Tokenizer) -> Result<Vec<SampledRequest>> {
    let mut pairs: Vec<(String, String)> = entries.into_iter().filter_map(first_exchange).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    pairs.shuffle(&mut rng);
    let mut out = Vec::with_capacity(n);
    for (prompt, reply) in pairs {
        if out.len() == n {
            break;
        }
        // The server tokenizes the prompt with its special tokens; the reply is bare output.
        let prompt_len = tokenizer.encode(&prompt, true)?.len();
        let reply_len = tokenizer.encode(&reply, false)?.len();
        let expected = output_len.unwrap_or(reply_len);
        if is_valid(prompt_len, expected, output_len.is_some()) {
            out.push(SampledRequest { prompt, prompt_len, expected_output_len: expected });
        }
    }
    if out.is_empty() {
        bail!(
            "no usable conversation: each needs a human turn followed by a reply, a prompt of {MIN_LEN}..={MAX_PROMPT_LEN} \
             tokens, a reply of at least {MIN_LEN} and at most {MAX_TOTAL_LEN} tokens in all"
        );
    }
    let valid = out.len();
    while out.len() < n {
        let pick = out[rng.random_range(0..valid)].clone();
        out.push(pick);
    }
    Ok(out)
}

/// The first human turn and the turn that answers it.
fn first_exchange(entry: Entry) -> Option<(String, String)> {
    let turns = entry.conversations;
    let i = turns.iter().position(|t| matches!(t.from.as_str(), "human" | "user"))?;
    let reply = turns.get(i + 1)?;
    if matches!(reply.from.as_str(), "human" | "user") {
        return None;
    }
    Some((turns[i].value.clone(), reply.value.clone()))
}

fn is_valid(prompt_len: usize, output_len: usize, output_len_overridden: bool) -> bool {
    let too_short = prompt_len < MIN_LEN || (!output_len_overridden && output_len < MIN_LEN);
    !too_short && prompt_len <= MAX_PROMPT_LEN && prompt_len + output_len <= MAX_TOTAL_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stories() -> Tokenizer {
        Tokenizer::from_bytes(kvault_models::embedded::TOKENIZER_JSON).expect("embedded tokenizer")
    }

    fn entries(json: &str) -> Vec<Entry> {
        serde_json::from_str(json).unwrap()
    }

    const FILE: &str = r#"[
        {"id": "a", "conversations": [
            {"from": "system", "value": "be nice"},
            {"from": "human", "value": "Tell me a story about a little dog in the park"},
            {"from": "gpt", "value": "Once upon a time there was a little dog who loved to play"},
            {"from": "human", "value": "more"}]},
        {"id": "short", "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello there, how can I help you today with anything"}]},
        {"id": "one-turn", "conversations": [{"from": "human", "value": "Is anyone there at all today?"}]},
        {"id": "no-reply-len", "conversations": [
            {"from": "human", "value": "What is the name of the big red ball?"},
            {"from": "gpt", "value": "Ok"}]}
    ]"#;

    #[test]
    fn the_first_human_turn_is_the_prompt_and_the_reply_sets_the_output_length() {
        let tok = stories();
        let reqs = from_entries(entries(FILE), 1, None, 0, &tok).unwrap();
        assert_eq!(reqs[0].prompt, "Tell me a story about a little dog in the park");
        assert_eq!(reqs[0].prompt_len, tok.encode(&reqs[0].prompt, true).unwrap().len());
        let reply = "Once upon a time there was a little dog who loved to play";
        assert_eq!(reqs[0].expected_output_len, tok.encode(reply, false).unwrap().len());
    }

    #[test]
    fn too_short_prompts_replies_and_single_turns_are_skipped_and_valid_ones_oversampled() {
        let reqs = from_entries(entries(FILE), 5, None, 3, &stories()).unwrap();
        assert_eq!(reqs.len(), 5);
        assert!(reqs.iter().all(|r| r.prompt.starts_with("Tell me a story")), "{reqs:?}");
    }

    #[test]
    fn an_output_length_override_replaces_the_reply_length_and_its_minimum() {
        let reqs = from_entries(entries(FILE), 4, Some(2), 1, &stories()).unwrap();
        let prompts: std::collections::BTreeSet<&str> = reqs.iter().map(|r| r.prompt.as_str()).collect();
        assert!(prompts.contains("What is the name of the big red ball?"), "{prompts:?}");
        assert!(reqs.iter().all(|r| r.expected_output_len == 2));
    }

    #[test]
    fn the_seed_decides_the_order() {
        let many: String = (0..20)
            .map(|i| format!(r#"{{"conversations":[{{"from":"human","value":"Prompt number {i} is here"}},{{"from":"gpt","value":"reply number {i} is this one"}}]}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let file = format!("[{many}]");
        let tok = stories();
        let a = from_entries(entries(&file), 5, None, 1, &tok).unwrap();
        assert_eq!(a, from_entries(entries(&file), 5, None, 1, &tok).unwrap());
        assert_ne!(a, from_entries(entries(&file), 5, None, 2, &tok).unwrap());
    }

    #[test]
    fn a_file_without_usable_conversations_is_a_clear_error() {
        let err = from_entries(entries(r#"[{"conversations": []}]"#), 1, None, 0, &stories()).unwrap_err();
        assert!(err.to_string().contains("no usable conversation"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.json");
        std::fs::write(&p, "{not json").unwrap();
        let err = format!("{:#}", sample(&p, 1, None, 0, &stories()).unwrap_err());
        assert!(err.contains("bad.json") && err.contains("ShareGPT"), "{err}");
    }
}
