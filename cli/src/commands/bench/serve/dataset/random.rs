//! vLLM's `random` dataset: prompts of a chosen token length made of synthetic token ids.
//!
//! Per request: an input length and an output length drawn uniformly from
//! `[⌊L(1−r)⌋, ⌈L(1+r)⌉]` (output at least 1); a random offset; the prompt is the shared random
//! prefix followed by `allowed[(offset + i + j) mod |allowed|]` for j < input length, where
//! `allowed` is the vocabulary minus special tokens (and minus tokens that are not text on
//! their own, see [`allowed_token_ids`]). The ids are decoded to text and re-encoded,
//! because N ids rarely decode to text that encodes back to N ids; the sequence is then cut or
//! topped up with random ids and decoded again, a few rounds, until the text encodes to the
//! target length. The tokens the server adds itself (BOS) are subtracted from the input length
//! first, so the server sees `--input-len` tokens.
//!
//! Must not know: how prompts are sent.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::SampledRequest;
use kvault_models::tokenizer::Tokenizer;

/// Rounds of decode → re-encode → cut/top up before accepting a near miss (vLLM's default).
const MAX_ROUNDS: usize = 10;

#[derive(Clone, Debug, PartialEq)]
pub struct RandomSpec {
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
    pub prefix_len: usize,
}

/// Vocabulary ids that are not special tokens and decode to valid text on their own, ascending.
///
/// vLLM excludes only special tokens; kvault also drops byte pieces of multi-byte characters
/// (byte-fallback `<0xE2>`, byte-level BPE fragments): alone they decode to U+FFFD, which
/// re-encodes to three tokens, so a prompt full of them never settles at its target length.
pub fn allowed_token_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    (0..tokenizer.vocab_size() as u32)
        .filter(|&id| !tokenizer.is_special(id))
        .filter(|&id| tokenizer.decode(&[id], false).is_ok_and(|t| !t.is_empty() && !t.contains('\u{FFFD}')))
        .collect()
}

/// Tokens `encode(text, add_special_tokens = true)` adds around any text (a BOS, say).
pub fn special_tokens_added(tokenizer: &Tokenizer) -> Result<usize> {
    let probe = "a";
    Ok(tokenizer.encode(probe, true)?.len().saturating_sub(tokenizer.encode(probe, false)?.len()))
}

pub fn sample(spec: &RandomSpec, n: usize, seed: u64, tokenizer: &Tokenizer) -> Result<Vec<SampledRequest>> {
    let special = special_tokens_added(tokenizer)?;
    let real_input = spec.input_len.saturating_sub(special);
    let r = spec.range_ratio;
    let (in_lo, in_hi) = ((real_input as f64 * (1.0 - r)).floor() as usize, (real_input as f64 * (1.0 + r)).ceil() as usize);
    let (out_lo, out_hi) = (
        ((spec.output_len as f64 * (1.0 - r)).floor() as usize).max(1),
        ((spec.output_len as f64 * (1.0 + r)).ceil() as usize).max(1),
    );
    if spec.prefix_len + in_lo < 1 {
        bail!(
            "--input-len {} is too small: after the {special} special token(s) the tokenizer adds and \
             --range-ratio {r}, a prompt could have no tokens; raise --input-len or --prefix-len",
            spec.input_len
        );
    }
    let allowed = allowed_token_ids(tokenizer);
    if allowed.is_empty() {
        bail!("the tokenizer has no non-special tokens to build prompts from");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let input_lens: Vec<usize> = (0..n).map(|_| rng.random_range(in_lo..=in_hi)).collect();
    let output_lens: Vec<usize> = (0..n).map(|_| rng.random_range(out_lo..=out_hi)).collect();
    let offsets: Vec<usize> = (0..n).map(|_| rng.random_range(0..allowed.len())).collect();
    let prefix: Vec<u32> = (0..spec.prefix_len).map(|_| allowed[rng.random_range(0..allowed.len())]).collect();

    let mut mismatch: i64 = 0;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut ids = prefix.clone();
        ids.extend((0..input_lens[i]).map(|j| allowed[(offsets[i] + i + j) % allowed.len()]));
        let target = spec.prefix_len + input_lens[i];
        let (prompt, len) = decode_to_length(tokenizer, ids, target, &allowed, &mut rng)?;
        mismatch += len as i64 - target as i64;
        out.push(SampledRequest { prompt, prompt_len: len, expected_output_len: output_lens[i] });
    }
    if mismatch != 0 {
        tracing::warn!(
            "random dataset: the prompts have {} {} tokens in total than asked after decoding and re-encoding",
            mismatch.abs(),
            if mismatch > 0 { "more" } else { "fewer" }
        );
    }
    Ok(out)
}

/// Text whose encoding (without special tokens) has `target` ids, starting from `ids`;
/// returns it with its actual length (equal to `target` unless every round missed).
fn decode_to_length(
    tokenizer: &Tokenizer,
    mut ids: Vec<u32>,
    target: usize,
    allowed: &[u32],
    rng: &mut StdRng,
) -> Result<(String, usize)> {
    let mut text = tokenizer.decode(&ids, false)?;
    for _ in 0..MAX_ROUNDS {
        let encoded = tokenizer.encode(&text, false)?;
        if encoded.len() == target {
            return Ok((text, target));
        }
        ids = encoded;
        if ids.len() > target {
            ids.truncate(target);
        } else {
            let missing = target - ids.len();
            ids.extend((0..missing).map(|_| allowed[rng.random_range(0..allowed.len())]));
        }
        text = tokenizer.decode(&ids, false)?;
    }
    let len = tokenizer.encode(&text, false)?.len();
    Ok((text, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stories() -> Tokenizer {
        Tokenizer::from_bytes(kvault_models::embedded::TOKENIZER_JSON).expect("embedded tokenizer")
    }

    fn spec(input_len: usize, output_len: usize, range_ratio: f64, prefix_len: usize) -> RandomSpec {
        RandomSpec { input_len, output_len, range_ratio, prefix_len }
    }

    #[test]
    fn prompts_encode_to_the_requested_length_with_the_server_added_bos() {
        let tok = stories();
        let special = special_tokens_added(&tok).unwrap();
        let reqs = sample(&spec(64, 16, 0.0, 0), 20, 0, &tok).unwrap();
        assert_eq!(reqs.len(), 20);
        for r in &reqs {
            assert_eq!(tok.encode(&r.prompt, true).unwrap().len(), 64, "{:?}", r.prompt);
            assert_eq!(r.prompt_len + special, 64);
            assert_eq!(r.expected_output_len, 16);
        }
    }

    #[test]
    fn lengths_vary_within_the_range_ratio() {
        let tok = stories();
        let reqs = sample(&spec(101, 100, 0.5, 0), 200, 3, &tok).unwrap();
        let outs: Vec<usize> = reqs.iter().map(|r| r.expected_output_len).collect();
        assert!(outs.iter().all(|&o| (50..=150).contains(&o)), "{outs:?}");
        assert!(outs.iter().min().unwrap() < &70 && outs.iter().max().unwrap() > &130);
        let ins: Vec<usize> = reqs.iter().map(|r| r.prompt_len).collect();
        assert!(ins.iter().min().unwrap() < &70 && ins.iter().max().unwrap() > &130, "{ins:?}");
    }

    #[test]
    fn the_prefix_is_shared_by_every_prompt() {
        let tok = stories();
        let reqs = sample(&spec(48, 4, 0.0, 24), 5, 9, &tok).unwrap();
        let ids: Vec<Vec<u32>> = reqs.iter().map(|r| tok.encode(&r.prompt, false).unwrap()).collect();
        // Re-encoding can shift a token at the seam; the first 20 ids are untouched.
        for other in &ids[1..] {
            assert_eq!(&other[..20], &ids[0][..20]);
        }
        assert_ne!(ids[0][24..], ids[1][24..]);
    }

    #[test]
    fn the_same_seed_gives_the_same_prompts_and_another_seed_others() {
        let tok = stories();
        let a = sample(&spec(32, 8, 0.3, 4), 6, 5, &tok).unwrap();
        assert_eq!(a, sample(&spec(32, 8, 0.3, 4), 6, 5, &tok).unwrap());
        assert_ne!(a, sample(&spec(32, 8, 0.3, 4), 6, 6, &tok).unwrap());
    }

    #[test]
    fn prompts_never_contain_special_tokens_or_broken_characters() {
        let tok = stories();
        for r in sample(&spec(40, 2, 0.0, 8), 10, 1, &tok).unwrap() {
            assert!(tok.encode(&r.prompt, false).unwrap().iter().all(|&id| !tok.is_special(id)));
            assert!(!r.prompt.contains('\u{FFFD}'), "{:?}", r.prompt);
        }
        let allowed = allowed_token_ids(&tok);
        assert!(allowed.len() > 200 && allowed.len() < tok.vocab_size(), "{}", allowed.len());
    }

    #[test]
    fn an_input_length_that_leaves_no_tokens_is_an_error() {
        let tok = stories();
        let special = special_tokens_added(&tok).unwrap();
        assert!(special >= 1, "stories260K adds a BOS");
        let err = sample(&spec(special, 8, 0.0, 0), 1, 0, &tok).unwrap_err().to_string();
        assert!(err.contains("--input-len"), "{err}");
    }
}
