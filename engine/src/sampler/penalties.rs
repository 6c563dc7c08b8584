//! Sparse, in-place logit adjustments that depend on the request and its history, applied in
//! vLLM's order before temperature: logit bias, the `min_tokens` mask, the repetition penalty
//! (prompt + output), then OpenAI presence/frequency penalties (output only).
//!
//! Must not know: temperature, truncation or drawing; each function touches only the entries it
//! names, so the cost is proportional to the history, not the vocabulary.
//! Token ids outside the logits row (a tokenizer larger than the model's head) are skipped.

use super::params::SamplingParams;
use super::state::SamplerState;

/// Applies every adjustment `params` asks for.
pub fn apply_penalties(
    logits: &mut [f32],
    params: &SamplingParams,
    state: &mut SamplerState,
    prompt_ids: &[u32],
    output_ids: &[u32],
) {
    apply_logit_bias(logits, &params.logit_bias);
    if output_ids.len() < params.min_tokens {
        mask_tokens(logits, state.min_tokens_masked());
    }
    let wants_counts = params.repetition_penalty != 1.0
        || params.presence_penalty != 0.0
        || params.frequency_penalty != 0.0;
    if !wants_counts {
        return;
    }
    state.sync_outputs(output_ids);
    if params.repetition_penalty != 1.0 {
        let penalty = params.repetition_penalty;
        state.for_each_seen(prompt_ids, |t| apply_repetition_penalty(logits, t, penalty));
    }
    apply_presence_frequency(
        logits,
        state,
        params.presence_penalty,
        params.frequency_penalty,
    );
}

/// Whether `apply_penalties` would change any logit for a sequence with `num_output` tokens.
pub fn modifies_logits(params: &SamplingParams, num_output: usize) -> bool {
    !params.logit_bias.is_empty()
        || num_output < params.min_tokens
        || params.repetition_penalty != 1.0
        || params.presence_penalty != 0.0
        || params.frequency_penalty != 0.0
}

pub fn apply_logit_bias(logits: &mut [f32], bias: &[(u32, f32)]) {
    for &(token, b) in bias {
        if let Some(l) = logits.get_mut(token as usize) {
            *l += b;
        }
    }
}

pub fn mask_tokens(logits: &mut [f32], tokens: &[u32]) {
    for &t in tokens {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Called once per distinct seen token: a positive logit is divided by `penalty`, a negative one
/// multiplied, so a penalty > 1 always makes a seen token less likely (CTRL / HF / vLLM).
pub fn apply_repetition_penalty(logits: &mut [f32], token: u32, penalty: f32) {
    if let Some(l) = logits.get_mut(token as usize) {
        *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
    }
}

/// OpenAI: `logit -= count × frequency_penalty + (count > 0) × presence_penalty`, counts over the
/// generated tokens only.
fn apply_presence_frequency(
    logits: &mut [f32],
    state: &SamplerState,
    presence: f32,
    frequency: f32,
) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    for (&t, &count) in state.output_counts() {
        if let Some(l) = logits.get_mut(t as usize) {
            *l -= count as f32 * frequency + presence;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(logits: &mut [f32], params: &SamplingParams, prompt: &[u32], output: &[u32]) {
        let mut state = SamplerState::new(params, &[0]);
        apply_penalties(logits, params, &mut state, prompt, output);
    }

    #[test]
    fn logit_bias_adds_to_named_tokens_only() {
        let mut l = [1.0, 2.0, 3.0];
        let p = SamplingParams {
            logit_bias: vec![(0, 5.0), (2, -1.5), (9, 3.0)],
            ..Default::default()
        };
        run(&mut l, &p, &[], &[]);
        assert_eq!(l, [6.0, 2.0, 1.5]);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_once_per_token() {
        // Token 1 (2.0) is in the prompt and twice in the output: 2.0 / 2 = 1.0, once.
        // Token 2 (-1.0) is in the output: -1.0 * 2 = -2.0. Token 3 is unseen.
        let mut l = [0.5, 2.0, -1.0, 4.0];
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        run(&mut l, &p, &[1], &[1, 2, 1]);
        assert_eq!(l, [0.5, 1.0, -2.0, 4.0]);
    }

    #[test]
    fn presence_and_frequency_follow_the_openai_formula_over_output_only() {
        // Token 1: 3 occurrences -> 1.0 - (3 * 0.5 + 0.25) = -0.75. Token 2 only in the prompt.
        let mut l = [1.0, 1.0, 1.0];
        let p = SamplingParams {
            presence_penalty: 0.25,
            frequency_penalty: 0.5,
            ..Default::default()
        };
        run(&mut l, &p, &[2, 2], &[1, 1, 1]);
        assert_eq!(l, [1.0, -0.75, 1.0]);
    }

    #[test]
    fn min_tokens_masks_eos_and_stop_tokens_until_reached() {
        let p = SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![2],
            ..Default::default()
        };
        let mut l = [1.0, 1.0, 1.0];
        run(&mut l, &p, &[], &[1]);
        assert_eq!(l, [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY]);
        let mut l = [1.0, 1.0, 1.0];
        run(&mut l, &p, &[], &[1, 1]);
        assert_eq!(l, [1.0, 1.0, 1.0]);
    }

    #[test]
    fn modifies_logits_is_false_exactly_when_penalties_change_nothing() {
        let d = SamplingParams::default;
        let cases = [
            d(),
            SamplingParams {
                logit_bias: vec![(1, 1.0)],
                ..d()
            },
            SamplingParams {
                min_tokens: 5,
                stop_token_ids: vec![1],
                ..d()
            },
            SamplingParams {
                repetition_penalty: 1.5,
                ..d()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..d()
            },
            SamplingParams {
                frequency_penalty: -0.5,
                ..d()
            },
        ];
        for p in cases {
            let mut l = [1.0, 2.0, -1.0];
            run(&mut l, &p, &[1], &[1, 2]);
            assert_eq!(modifies_logits(&p, 2), l != [1.0, 2.0, -1.0], "{p:?}");
        }
    }

    #[test]
    fn out_of_vocab_history_tokens_are_skipped() {
        let mut l = [1.0, 1.0];
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 1.0,
            ..Default::default()
        };
        run(&mut l, &p, &[7], &[9]);
        assert_eq!(l, [1.0, 1.0]);
    }
}
