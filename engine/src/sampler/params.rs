//! `SamplingParams`: what a request asks of the sampler and of stop handling, with vLLM/OpenAI
//! defaults and validation that names the offending parameter.
//!
//! Must not know: HTTP field spellings (the server maps `top_logprobs` etc. onto these), models.

/// Largest `logprobs` (top-n alternatives) a request may ask for, as vLLM's default
/// `max_logprobs` and OpenAI's `top_logprobs` limit.
pub const MAX_LOGPROBS: usize = 20;

/// Temperatures below this are greedy (vLLM's `_SAMPLING_EPS`): dividing by ~0 only amplifies
/// float noise.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below `GREEDY_TEMPERATURE`) = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest most-likely set with at least this probability mass; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0 = off.
    pub min_p: f32,
    /// Over prompt + output tokens: positive logits divided, negative multiplied; 1 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from every token already in the output (OpenAI).
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the output (OpenAI).
    pub frequency_penalty: f32,
    /// Added to the raw logit of a token before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    /// Same seed, same tokens: each sequence owns its generator, whatever the batch holds.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Stop strings; the matched string is not part of the output.
    pub stop: Vec<String>,
    /// Tokens that end generation (kept in the output ids, like EOS).
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// `Some(n)`: return the chosen token's logprob plus the n most likely alternatives
    /// (0 = chosen only). Logprobs are of the raw model distribution.
    pub logprobs: Option<usize>,
    /// `Some(n)`: also score the prompt: each prompt token's logprob given the tokens before it,
    /// with the n most likely alternatives (vLLM's `prompt_logprobs`). Such a request gets no
    /// prefix-cache hit (every prompt position must be computed) and may ask for 0 tokens.
    pub prompt_logprobs: Option<usize>,
    /// Completions per prompt.
    pub n: usize,
    /// EOS and stop tokens are masked until this many tokens are generated.
    pub min_tokens: usize,
}

impl Default for SamplingParams {
    /// vLLM's defaults: plain sampling from the model distribution, 16 tokens.
    fn default() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            max_tokens: 16,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
            n: 1,
            min_tokens: 0,
        }
    }
}

/// A parameter out of range; `message` is ready to show a user, e.g.
/// "top_p must be in (0, 1], got 1.5".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidParam {
    pub param: &'static str,
    pub message: String,
}

fn invalid(param: &'static str, message: String) -> Result<(), InvalidParam> {
    Err(InvalidParam { param, message })
}

impl SamplingParams {
    /// Greedy decoding with otherwise default parameters.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE
    }

    /// Checks every parameter against its range (OpenAI's where it has one, else vLLM's).
    pub fn validate(&self, vocab_size: usize) -> Result<(), InvalidParam> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return invalid(
                "temperature",
                format!("temperature must be a finite number >= 0, got {t}"),
            );
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return invalid("top_p", format!("top_p must be in (0, 1], got {p}"));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return invalid("min_p", format!("min_p must be in [0, 1], got {m}"));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return invalid(
                "repetition_penalty",
                format!("repetition_penalty must be a finite number > 0, got {r}"),
            );
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return invalid(name, format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        for &(token, bias) in &self.logit_bias {
            if token as usize >= vocab_size {
                return invalid(
                    "logit_bias",
                    format!(
                        "logit_bias token id {token} is outside the vocabulary (size {vocab_size})"
                    ),
                );
            }
            if !(-100.0..=100.0).contains(&bias) {
                return invalid(
                    "logit_bias",
                    format!("logit_bias for token {token} must be in [-100, 100], got {bias}"),
                );
            }
        }
        if self.max_tokens == 0 && self.prompt_logprobs.is_none() {
            return invalid("max_tokens", "max_tokens must be at least 1 (0 only when scoring the prompt), got 0".into());
        }
        if let Some(k) = self.prompt_logprobs {
            if k > MAX_LOGPROBS {
                return invalid("prompt_logprobs", format!("prompt_logprobs must be at most {MAX_LOGPROBS}, got {k}"));
            }
        }
        if self.min_tokens > self.max_tokens {
            return invalid(
                "min_tokens",
                format!(
                    "min_tokens ({}) must not exceed max_tokens ({})",
                    self.min_tokens, self.max_tokens
                ),
            );
        }
        if self.n == 0 {
            return invalid("n", "n must be at least 1, got 0".into());
        }
        if let Some(k) = self.logprobs {
            if k > MAX_LOGPROBS {
                return invalid(
                    "logprobs",
                    format!("logprobs must be at most {MAX_LOGPROBS}, got {k}"),
                );
            }
        }
        if let Some(&id) = self
            .stop_token_ids
            .iter()
            .find(|&&id| id as usize >= vocab_size)
        {
            return invalid(
                "stop_token_ids",
                format!("stop token id {id} is outside the vocabulary (size {vocab_size})"),
            );
        }
        if self.stop.iter().any(String::is_empty) {
            return invalid("stop", "stop strings must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: SamplingParams) -> Result<(), InvalidParam> {
        p.validate(100)
    }

    #[test]
    fn defaults_are_valid_and_sample_from_the_model_distribution() {
        let p = SamplingParams::default();
        assert_eq!(check(p.clone()), Ok(()));
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.min_p, p.n),
            (1.0, 1.0, 0, 0.0, 1)
        );
        assert!(!p.is_greedy());
        assert!(SamplingParams::greedy().is_greedy());
    }

    #[test]
    fn top_p_out_of_range_names_the_parameter() {
        let err = check(SamplingParams {
            top_p: 1.5,
            ..Default::default()
        })
        .expect_err("invalid");
        assert_eq!(err.param, "top_p");
        assert_eq!(err.to_string(), "top_p must be in (0, 1], got 1.5");
        assert_eq!(
            check(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            })
            .map_err(|e| e.param),
            Err("top_p")
        );
    }

    #[test]
    fn each_out_of_range_parameter_is_reported_by_name() {
        let d = SamplingParams::default;
        let cases: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    temperature: -0.1,
                    ..d()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..d()
                },
                "temperature",
            ),
            (SamplingParams { min_p: 1.1, ..d() }, "min_p"),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..d()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: 2.5,
                    ..d()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: -3.0,
                    ..d()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(100, 1.0)],
                    ..d()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(1, 101.0)],
                    ..d()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    max_tokens: 0,
                    ..d()
                },
                "max_tokens",
            ),
            (
                SamplingParams {
                    min_tokens: 17,
                    ..d()
                },
                "min_tokens",
            ),
            (SamplingParams { n: 0, ..d() }, "n"),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..d()
                },
                "logprobs",
            ),
            (
                SamplingParams {
                    stop_token_ids: vec![100],
                    ..d()
                },
                "stop_token_ids",
            ),
            (
                SamplingParams {
                    stop: vec![String::new()],
                    ..d()
                },
                "stop",
            ),
        ];
        for (p, name) in cases {
            assert_eq!(check(p).map_err(|e| e.param), Err(name));
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let p = SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            min_p: 1.0,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            logit_bias: vec![(99, -100.0)],
            logprobs: Some(MAX_LOGPROBS),
            min_tokens: 16,
            ..SamplingParams::default()
        };
        assert_eq!(check(p), Ok(()));
    }
}
