//! From what a streaming client observed (chunks and their arrival times) to per-token
//! measurements: how many tokens each chunk carried, TTFT, the inter-token latencies, E2EL.
//!
//! # Definitions
//! - A *choices chunk* is an SSE message whose `choices` is non-empty; TTFT is the time from
//!   sending the request to the first one and E2EL the time to the last one (vLLM's `ttft` and
//!   `latency`). The final usage message (empty `choices`) is neither.
//! - The output token count `N` is the server's `usage.completion_tokens`; without usage it is
//!   the token count of the whole generated text (vLLM's fallback).
//! - **Tokens per chunk.** vLLM assumes one chunk = one token, which inflates ITL whenever a server
//!   batches several tokens into one chunk. Here every token is attributed to the chunk that
//!   delivered it:
//!   1. if the number of chunks carrying text equals `N`, each of them carries exactly one token
//!      (the usual case, and exact whatever the tokenizer);
//!   2. otherwise each chunk's text is tokenized on its own to estimate its count, and the
//!      estimates are reconciled with `N` ([`apportion`]): the first chunk carries at least one
//!      token (it is what TTFT measured); missing tokens (ones that produced no text of their
//!      own) are put on the last chunk that carried text; a surplus (re-tokenizing a fragment
//!      can split it finer than the server did) is taken one token at a time from the chunk
//!      holding the most, the later one on ties.
//! - **ITL** is then the gap between consecutive *tokens*, each stamped with its chunk's arrival
//!   time: a chunk carrying k tokens after a gap g contributes g once and k − 1 gaps of zero
//!   (the tokens really did arrive together). So a request always has `N − 1` ITL samples whose
//!   sum is the time from its first to its last token, and TPOT stays `(E2EL − TTFT)/(N − 1)`.
//!
//! Must not know: HTTP, SSE framing, or how samples are aggregated over requests.

use kvault_models::tokenizer::Tokenizer;

/// One choices chunk as received.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// Seconds since the request was sent.
    pub at: f64,
    /// The generated text it carried (completion `text`, or chat `delta.content` plus any
    /// reasoning text).
    pub text: String,
}

/// Everything the client recorded about one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Seconds from the start of the benchmark to sending the request.
    pub start: f64,
    /// Seconds the request waited for a concurrency slot before it was sent.
    pub queue: f64,
    /// Prompt tokens: the dataset's count, replaced by the server's `usage.prompt_tokens`.
    pub prompt_len: usize,
    pub chunks: Vec<Chunk>,
    pub usage_completion_tokens: Option<usize>,
    /// Set when the request failed (HTTP status, connection, an error event).
    pub error: Option<String>,
}

/// Per-request measurements in seconds; what metrics and the result file are computed from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestRecord {
    /// vLLM's rule: at least one choices chunk arrived and nothing failed.
    pub success: bool,
    pub error: Option<String>,
    pub start: f64,
    pub queue: f64,
    pub prompt_len: usize,
    pub output_tokens: usize,
    pub ttft: f64,
    /// Token-level gaps, `output_tokens − 1` of them.
    pub itls: Vec<f64>,
    pub e2el: f64,
    /// Tokens attributed to each choices chunk, in arrival order.
    pub chunk_tokens: Vec<usize>,
    pub generated_text: String,
}

impl RequestRecord {
    /// vLLM's TPOT, `(E2EL − TTFT)/(N − 1)`; None for one token or less.
    pub fn tpot(&self) -> Option<f64> {
        (self.output_tokens > 1).then(|| (self.e2el - self.ttft) / (self.output_tokens - 1) as f64)
    }

    /// The longest wait between two tokens of this request (0 with fewer than two tokens).
    pub fn max_itl(&self) -> f64 {
        self.itls.iter().copied().fold(0.0, f64::max)
    }

    /// When each token arrived, in seconds since the benchmark started.
    pub fn token_times(&self) -> Vec<f64> {
        if self.output_tokens == 0 {
            return Vec::new();
        }
        let mut t = self.start + self.ttft;
        let mut out = Vec::with_capacity(self.output_tokens);
        out.push(t);
        for gap in &self.itls {
            t += gap;
            out.push(t);
        }
        out
    }
}

/// Turns a client observation into per-token measurements (see the module doc).
pub fn record(observed: Observed, tokenizer: &Tokenizer) -> RequestRecord {
    let generated_text: String = observed.chunks.iter().map(|c| c.text.as_str()).collect();
    let failed = |error: String| RequestRecord {
        success: false,
        error: Some(error),
        start: observed.start,
        queue: observed.queue,
        prompt_len: observed.prompt_len,
        generated_text: generated_text.clone(),
        ..RequestRecord::default()
    };
    if let Some(e) = &observed.error {
        return failed(e.clone());
    }
    if observed.chunks.is_empty() {
        return failed("the stream ended without a single choices chunk".into());
    }
    let total = match observed.usage_completion_tokens {
        Some(n) => n,
        None => count_tokens(tokenizer, &generated_text),
    };
    let chunk_tokens = tokens_per_chunk(&observed.chunks, total, tokenizer);
    let times: Vec<f64> = observed.chunks.iter().map(|c| c.at).collect();
    let itls = token_gaps(&times, &chunk_tokens);
    RequestRecord {
        success: true,
        error: None,
        start: observed.start,
        queue: observed.queue,
        prompt_len: observed.prompt_len,
        output_tokens: total,
        ttft: times[0],
        itls,
        e2el: times[times.len() - 1],
        chunk_tokens,
        generated_text,
    }
}

fn count_tokens(tokenizer: &Tokenizer, text: &str) -> usize {
    // An encode failure leaves the estimate at zero; reconciliation with the total still
    // assigns every token somewhere.
    tokenizer.encode(text, false).map(|ids| ids.len()).unwrap_or(0)
}

fn tokens_per_chunk(chunks: &[Chunk], total: usize, tokenizer: &Tokenizer) -> Vec<usize> {
    let with_text = chunks.iter().filter(|c| !c.text.is_empty()).count();
    if with_text == total {
        return chunks.iter().map(|c| usize::from(!c.text.is_empty())).collect();
    }
    let estimates: Vec<usize> = chunks.iter().map(|c| count_tokens(tokenizer, &c.text)).collect();
    apportion(&estimates, total)
}

/// Reconciles per-chunk token estimates with the true total (rules in the module doc).
pub fn apportion(estimates: &[usize], total: usize) -> Vec<usize> {
    let mut k = estimates.to_vec();
    if k.is_empty() {
        return k;
    }
    if total >= 1 && k[0] == 0 {
        k[0] = 1;
    }
    let sum: usize = k.iter().sum();
    if sum < total {
        let last_with_tokens = k.iter().rposition(|&n| n > 0).unwrap_or(0);
        k[last_with_tokens] += total - sum;
    } else {
        for _ in 0..sum - total {
            // The largest count, the latest chunk on ties (`max_by_key` keeps the last maximum):
            // so chunk 0 loses its last token only once every other chunk is empty.
            let (i, _) = k.iter().enumerate().max_by_key(|&(_, &n)| n).expect("k is not empty");
            k[i] -= 1;
        }
    }
    k
}

/// Gaps between consecutive tokens when chunk i (arriving at `times[i]`) carries `counts[i]`
/// tokens.
pub fn token_gaps(times: &[f64], counts: &[usize]) -> Vec<f64> {
    let mut gaps = Vec::new();
    let mut previous: Option<f64> = None;
    for (&t, &n) in times.iter().zip(counts) {
        for _ in 0..n {
            if let Some(p) = previous {
                gaps.push(t - p);
            }
            previous = Some(t);
        }
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stories() -> Tokenizer {
        Tokenizer::from_bytes(kvault_models::embedded::TOKENIZER_JSON).expect("embedded tokenizer")
    }

    fn chunk(at: f64, text: &str) -> Chunk {
        Chunk { at, text: text.into() }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn a_multi_token_chunk_contributes_its_gap_once_then_zero_gaps() {
        // Tokens: 1 at 0.10; 3 at 0.30; 1 at 0.35 -> gaps 0.20, 0, 0, 0.05.
        let gaps = token_gaps(&[0.10, 0.30, 0.35], &[1, 3, 1]);
        assert!(close(&gaps, &[0.20, 0.0, 0.0, 0.05]), "{gaps:?}");
    }

    #[test]
    fn a_chunk_without_tokens_adds_no_gap_and_its_time_folds_into_the_next() {
        let gaps = token_gaps(&[0.1, 0.2, 0.4], &[1, 0, 1]);
        assert!(close(&gaps, &[0.3]), "{gaps:?}");
    }

    #[test]
    fn apportion_keeps_estimates_that_already_add_up() {
        assert_eq!(apportion(&[1, 2, 1], 4), vec![1, 2, 1]);
    }

    #[test]
    fn apportion_puts_missing_tokens_on_the_last_chunk_with_tokens() {
        // The trailing finish chunk carried no text: it gets nothing.
        assert_eq!(apportion(&[1, 1, 1, 0], 5), vec![1, 1, 3, 0]);
    }

    #[test]
    fn apportion_takes_a_surplus_from_the_largest_and_latest_chunks() {
        assert_eq!(apportion(&[2, 2, 3, 1], 5), vec![2, 1, 1, 1]);
        assert_eq!(apportion(&[2, 2, 2], 3), vec![1, 1, 1]);
    }

    #[test]
    fn apportion_gives_the_first_chunk_a_token_because_ttft_measured_it() {
        assert_eq!(apportion(&[0, 2, 1], 3), vec![1, 1, 1]);
        // Fewer tokens than chunks: later chunks go to zero before the first one.
        assert_eq!(apportion(&[1, 1, 1], 1), vec![1, 0, 0]);
    }

    #[test]
    fn one_text_chunk_per_token_gives_exactly_n_minus_one_itls() {
        let obs = Observed {
            start: 2.0,
            prompt_len: 7,
            chunks: vec![chunk(0.5, "Once"), chunk(0.6, " upon"), chunk(0.8, " a"), chunk(0.85, "")],
            usage_completion_tokens: Some(3),
            ..Observed::default()
        };
        let r = record(obs, &stories());
        assert!(r.success);
        assert_eq!(r.chunk_tokens, vec![1, 1, 1, 0]);
        assert!(close(&r.itls, &[0.1, 0.2]), "{:?}", r.itls);
        assert_eq!((r.ttft, r.e2el, r.output_tokens), (0.5, 0.85, 3));
        // TPOT = (0.85 - 0.5) / 2
        assert!((r.tpot().unwrap() - 0.175).abs() < 1e-12);
        assert!((r.max_itl() - 0.2).abs() < 1e-12);
        assert!(close(&r.token_times(), &[2.5, 2.6, 2.8]));
        assert_eq!(r.generated_text, "Once upon a");
    }

    #[test]
    fn chunks_carrying_several_tokens_are_counted_by_tokenizing_their_text() {
        let tok = stories();
        let second = " upon a time";
        let k = tok.encode(second, false).unwrap().len();
        assert!(k > 1, "the fixture needs a multi-token chunk");
        let obs = Observed {
            chunks: vec![chunk(0.1, "Once"), chunk(0.4, second)],
            usage_completion_tokens: Some(1 + k),
            ..Observed::default()
        };
        let r = record(obs, &tok);
        assert_eq!(r.chunk_tokens, vec![1, k]);
        assert_eq!(r.itls.len(), k);
        assert!((r.itls[0] - 0.3).abs() < 1e-12);
        assert!(r.itls[1..].iter().all(|&g| g == 0.0));
    }

    #[test]
    fn without_usage_the_generated_text_is_tokenized_for_the_count() {
        let tok = stories();
        let text = "Once upon a time";
        let n = tok.encode(text, false).unwrap().len();
        let obs = Observed { chunks: vec![chunk(0.1, text)], usage_completion_tokens: None, ..Observed::default() };
        let r = record(obs, &tok);
        assert_eq!(r.output_tokens, n);
        assert_eq!(r.itls.len(), n - 1);
    }

    #[test]
    fn a_request_without_chunks_or_with_an_error_failed() {
        let tok = stories();
        let r = record(Observed { prompt_len: 3, ..Observed::default() }, &tok);
        assert!(!r.success && r.error.is_some());
        let r = record(
            Observed { chunks: vec![chunk(0.1, "a")], error: Some("HTTP 500".into()), ..Observed::default() },
            &tok,
        );
        assert!(!r.success);
        assert_eq!(r.error.as_deref(), Some("HTTP 500"));
        assert_eq!(r.output_tokens, 0);
    }
}
