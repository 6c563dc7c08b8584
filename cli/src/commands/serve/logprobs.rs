//! Engine logprobs in OpenAI's two JSON shapes: the legacy completions one (`tokens`,
//! `token_logprobs`, `top_logprobs` as a list of {token: logprob} dicts, `text_offset`) and
//! chat's (`content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]`).
//!
//! A token's text is the token decoded on its own, as vLLM reports it. Must not know: how
//! logprobs were computed, or the rest of the response.

use kvault_engine::events::TokenLogprob;
use kvault_models::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    // Decoding a known id cannot fail in practice; an unknown one shows as its id, never a 500.
    tokenizer.decode(&[id], false).unwrap_or_else(|_| format!("token_id:{id}"))
}

/// JSON floats cannot be -inf; OpenAI clients expect a number, so the most negative finite
/// value stands in (vLLM does the same).
fn finite(lp: f32) -> f64 {
    if lp.is_finite() { lp as f64 } else { -9999.0 }
}

/// The completions shape, built token by token: prompt tokens (when echoed; the first one has
/// no prediction, so its logprob and top are null as in OpenAI and vLLM), then generated ones.
/// `top_logprobs` holds the `top_n` most likely tokens plus the chosen one, as OpenAI documents
/// ("up to logprobs+1 elements"). `text_offset` counts characters of the tokens' texts from
/// `offset` on.
pub struct CompletionLogprobs<'t> {
    tokenizer: &'t Tokenizer,
    top_n: usize,
    offset: usize,
    tokens: Vec<String>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
}

impl<'t> CompletionLogprobs<'t> {
    pub fn new(tokenizer: &'t Tokenizer, top_n: usize, offset: usize) -> Self {
        Self { tokenizer, top_n, offset, tokens: vec![], token_logprobs: vec![], top_logprobs: vec![], text_offset: vec![] }
    }

    fn token(&mut self, id: u32) {
        let text = token_text(self.tokenizer, id);
        self.text_offset.push(self.offset);
        self.offset += text.chars().count();
        self.tokens.push(text);
    }

    /// A token nothing predicted (the first of the prompt).
    pub fn unscored(&mut self, id: u32) {
        self.token(id);
        self.token_logprobs.push(Value::Null);
        self.top_logprobs.push(Value::Null);
    }

    pub fn push(&mut self, e: &TokenLogprob) {
        self.token(e.token_id);
        self.token_logprobs.push(json!(finite(e.logprob)));
        let mut top = Map::new();
        for &(id, lp) in e.top.iter().take(self.top_n) {
            top.insert(token_text(self.tokenizer, id), json!(finite(lp)));
        }
        if !e.top.iter().take(self.top_n).any(|&(id, _)| id == e.token_id) {
            top.entry(token_text(self.tokenizer, e.token_id)).or_insert(json!(finite(e.logprob)));
        }
        self.top_logprobs.push(Value::Object(top));
    }

    pub fn extend(&mut self, entries: &[TokenLogprob]) {
        entries.iter().for_each(|e| self.push(e));
    }

    /// The echoed prompt: its first token unscored, the rest from the engine's prompt scores
    /// (`scores[i]` is prompt token `i + 1`).
    pub fn prompt(&mut self, prompt_ids: &[u32], scores: &[TokenLogprob]) {
        if let Some(&first) = prompt_ids.first() {
            self.unscored(first);
        }
        self.extend(scores);
    }

    /// Characters after the last token.
    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn json(self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

/// Completions shape for generated `entries` whose text starts `offset` characters into the
/// choice text. Returns the shape and the offset after the last token.
pub fn completion_logprobs(tokenizer: &Tokenizer, entries: &[TokenLogprob], top_n: usize, offset: usize) -> (Value, usize) {
    let mut lp = CompletionLogprobs::new(tokenizer, top_n, offset);
    lp.extend(entries);
    let end = lp.offset();
    (lp.json(), end)
}

/// vLLM's `prompt_logprobs`: one entry per prompt token, null for the first, else a map from
/// token id to `{logprob, rank, decoded_token}` holding the prompt token and the `top_n` most
/// likely ones. A rank is the 1-based place in the distribution; the engine reports the top-n
/// only, so a prompt token outside them has `rank: null`.
pub fn vllm_prompt_logprobs(tokenizer: &Tokenizer, prompt_ids: &[u32], scores: &[TokenLogprob], top_n: usize) -> Value {
    let mut out = Vec::with_capacity(prompt_ids.len());
    if !prompt_ids.is_empty() {
        out.push(Value::Null);
    }
    for e in scores {
        let top = &e.top[..e.top.len().min(top_n)];
        let entry = |id: u32, lp: f32, rank: Option<usize>| json!({"logprob": finite(lp), "rank": rank, "decoded_token": token_text(tokenizer, id)});
        let mut map = Map::new();
        let own_rank = e.top.iter().position(|&(id, _)| id == e.token_id).map(|i| i + 1);
        map.insert(e.token_id.to_string(), entry(e.token_id, e.logprob, own_rank));
        for (i, &(id, lp)) in top.iter().enumerate() {
            map.entry(id.to_string()).or_insert_with(|| entry(id, lp, Some(i + 1)));
        }
        out.push(Value::Object(map));
    }
    Value::Array(out)
}

/// Chat shape: `{"content": [...]}`.
pub fn chat_logprobs(tokenizer: &Tokenizer, entries: &[TokenLogprob]) -> Value {
    let one = |id: u32, lp: f32| {
        let text = token_text(tokenizer, id);
        let bytes: Vec<u8> = text.as_bytes().to_vec();
        (text, bytes, finite(lp))
    };
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let (token, bytes, logprob) = one(e.token_id, e.logprob);
            let top: Vec<Value> = e
                .top
                .iter()
                .map(|&(id, lp)| {
                    let (token, bytes, logprob) = one(id, lp);
                    json!({"token": token, "logprob": logprob, "bytes": bytes})
                })
                .collect();
            json!({"token": token, "logprob": logprob, "bytes": bytes, "top_logprobs": top})
        })
        .collect();
    json!({"content": content})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_bytes(kvault_models::embedded::TOKENIZER_JSON).expect("embedded tokenizer")
    }

    fn entries(tok: &Tokenizer) -> Vec<TokenLogprob> {
        let ids = tok.encode("Once upon", false).unwrap();
        ids.iter()
            .map(|&id| TokenLogprob { token_id: id, logprob: -0.5, top: vec![(id, -0.5), ((id + 1) % 512, f32::NEG_INFINITY)] })
            .collect()
    }

    #[test]
    fn completion_shape_has_parallel_lists_and_running_offsets() {
        let tok = tokenizer();
        let e = entries(&tok);
        let (v, end) = completion_logprobs(&tok, &e, 2, 10);
        let tokens = v["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), e.len());
        assert_eq!(v["token_logprobs"].as_array().unwrap().len(), e.len());
        assert_eq!(v["text_offset"][0], 10);
        let lens: usize = tokens.iter().map(|t| t.as_str().unwrap().chars().count()).sum();
        assert_eq!(end, 10 + lens);
        let top0 = v["top_logprobs"][0].as_object().unwrap();
        assert_eq!(top0.len(), 2);
        assert!(top0.values().all(|x| x.as_f64().is_some()), "-inf must become a finite number: {top0:?}");
    }

    #[test]
    fn echoed_prompts_start_with_null_and_the_chosen_token_is_always_in_top() {
        let tok = tokenizer();
        let ids = tok.encode("Once upon a time", false).unwrap();
        // The engine's scores of tokens 1.., each with a top-1 that is not the prompt token.
        let scores: Vec<TokenLogprob> =
            ids[1..].iter().map(|&id| TokenLogprob { token_id: id, logprob: -2.0, top: vec![((id + 1) % 512, -0.1)] }).collect();
        let mut lp = CompletionLogprobs::new(&tok, 1, 0);
        lp.prompt(&ids, &scores);
        let v = lp.json();
        assert_eq!(v["token_logprobs"][0], Value::Null);
        assert_eq!(v["top_logprobs"][0], Value::Null);
        assert_eq!(v["tokens"].as_array().unwrap().len(), ids.len());
        assert_eq!(v["token_logprobs"][1], -2.0);
        assert_eq!(v["top_logprobs"][1].as_object().unwrap().len(), 2, "top-1 plus the prompt token");
        let p = vllm_prompt_logprobs(&tok, &ids, &scores, 1);
        assert_eq!(p[0], Value::Null);
        let first = p[1].as_object().unwrap();
        assert_eq!(first[&ids[1].to_string()]["rank"], Value::Null, "outside the top-n: rank unknown");
        assert_eq!(first[&((ids[1] + 1) % 512).to_string()]["rank"], 1);
    }

    #[test]
    fn chat_shape_carries_bytes_and_top_alternatives() {
        let tok = tokenizer();
        let e = entries(&tok);
        let v = chat_logprobs(&tok, &e);
        let first = &v["content"][0];
        let token = first["token"].as_str().unwrap();
        let bytes: Vec<u8> = first["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(bytes, token.as_bytes());
        assert_eq!(first["logprob"], -0.5);
        assert_eq!(first["top_logprobs"].as_array().unwrap().len(), 2);
    }
}
