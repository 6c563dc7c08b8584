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

/// Completions shape for `entries`, whose text starts `offset` characters into the choice text.
/// Returns the shape and the offset after the last token.
pub fn completion_logprobs(tokenizer: &Tokenizer, entries: &[TokenLogprob], mut offset: usize) -> (Value, usize) {
    let (mut tokens, mut token_logprobs, mut top_logprobs, mut text_offset) = (vec![], vec![], vec![], vec![]);
    for e in entries {
        let text = token_text(tokenizer, e.token_id);
        text_offset.push(offset);
        offset += text.chars().count();
        tokens.push(text);
        token_logprobs.push(finite(e.logprob));
        let mut top = Map::new();
        for &(id, lp) in &e.top {
            top.insert(token_text(tokenizer, id), json!(finite(lp)));
        }
        top_logprobs.push(Value::Object(top));
    }
    let shape = json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset});
    (shape, offset)
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
        let (v, end) = completion_logprobs(&tok, &e, 10);
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
