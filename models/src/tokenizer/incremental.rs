//! Streaming detokenization: generated ids in, text deltas out.
//!
//! Decoding one token at a time is wrong in two ways: a character split over several byte
//! tokens decodes to U+FFFD halves, and SentencePiece decoders strip the space in front of
//! whatever token comes first. So each step decodes a short window of recent ids twice, without
//! and with the new tail, and emits the difference (vLLM's prefix/read-offset scheme):
//!
//! ```text
//!   ids:   ... | prefix_offset ........ read_offset ....... end |
//!                 └ already emitted ──┘ └ not yet emitted ─┘
//!   delta = decode(ids[prefix..end]) minus decode(ids[prefix..read])
//! ```
//!
//! Both decodes start at the same token, so a stripped leading space cancels out, and nothing
//! is emitted while the text ends in U+FFFD (a character still incomplete). One refinement over
//! vLLM: the window always starts at a token that produces text. A window starting at a skipped
//! special token would make the *next* token look first and lose its leading space.
//!
//! Must not know: stop strings or sequences (the caller trims deltas), or requests.

use std::sync::Arc;

use anyhow::Result;

use super::Tokenizer;

const REPLACEMENT: char = '\u{FFFD}';
/// How many text-producing context tokens seed the window: enough for any leading-space rule.
const CONTEXT_TOKENS: usize = 4;

pub struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// decode(ids[prefix_offset..read_offset]), cached between steps.
    prefix_text: String,
}

impl IncrementalDecoder {
    /// A decoder for text that starts at the first pushed id (its leading space, if the
    /// tokenizer strips one at the start of text, is stripped as `decode` would).
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            prefix_text: String::new(),
        }
    }

    /// A decoder for text that continues `context` (e.g. the prompt): the first generated
    /// token keeps the space it has after the prompt's last words. Only a few trailing context
    /// ids are kept.
    pub fn with_context(tokenizer: Arc<Tokenizer>, skip_special_tokens: bool, context: &[u32]) -> Result<Self> {
        let mut this = Self::new(tokenizer, skip_special_tokens);
        let mut start = context.len();
        let mut found = 0;
        for (i, &id) in context.iter().enumerate().rev() {
            if found == CONTEXT_TOKENS {
                break;
            }
            if this.produces_text(id) {
                start = i;
                found += 1;
            }
        }
        this.ids.extend_from_slice(&context[start..]);
        this.read_offset = this.ids.len();
        this.prefix_text = this.tokenizer.decode(&this.ids, skip_special_tokens)?;
        Ok(this)
    }

    /// Feeds one generated id; returns the text that is now final (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if text.len() <= self.prefix_text.len() || text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let Some(delta) = text.strip_prefix(self.prefix_text.as_str()) else {
            // The window's text changed under us; wait for more ids (finish flushes the rest).
            return Ok(String::new());
        };
        let delta = delta.to_string();
        self.advance(text)?;
        Ok(delta)
    }

    /// Flushes what is left at the end of generation, including an incomplete character
    /// (as U+FFFD, exactly what a full decode shows).
    pub fn finish(&mut self) -> Result<String> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        let delta = match text.strip_prefix(self.prefix_text.as_str()) {
            Some(d) => d.to_string(),
            None => text.get(self.prefix_text.len()..).unwrap_or_default().to_string(),
        };
        self.advance(text)?;
        Ok(delta)
    }

    /// Everything up to the end is emitted: the next window starts at the first new token that
    /// produces text (or stays put if none does), and its decode becomes the cached prefix.
    fn advance(&mut self, window_text: String) -> Result<()> {
        let end = self.ids.len();
        match (self.read_offset..end).find(|&i| self.produces_text(self.ids[i])) {
            Some(p) => {
                self.prefix_text = self.tokenizer.decode(&self.ids[p..end], self.skip_special_tokens)?;
                self.prefix_offset = p;
            }
            None => self.prefix_text = window_text,
        }
        self.read_offset = end;
        // Ids before the window are never decoded again: drop them so the buffer stays short.
        self.ids.drain(..self.prefix_offset);
        self.read_offset -= self.prefix_offset;
        self.prefix_offset = 0;
        Ok(())
    }

    fn produces_text(&self, id: u32) -> bool {
        !(self.skip_special_tokens && self.tokenizer.is_special(id)) && self.tokenizer.id_to_token(id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stories() -> Arc<Tokenizer> {
        Arc::new(Tokenizer::from_bytes(crate::embedded::TOKENIZER_JSON).expect("embedded tokenizer parses"))
    }

    fn stream(tok: &Arc<Tokenizer>, ids: &[u32], skip: bool) -> Vec<String> {
        let mut dec = IncrementalDecoder::new(tok.clone(), skip);
        let mut out: Vec<String> = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
        out.push(dec.finish().unwrap());
        out
    }

    #[test]
    fn concatenated_deltas_equal_full_decode() {
        let tok = stories();
        for text in ["Once upon a time, there was a girl.", "  spaced   out ", "中文 and emoji 🦀🦀 mixed", "a\nb\n\nc"]
        {
            let ids = tok.encode(text, true).unwrap();
            for skip in [true, false] {
                let deltas = stream(&tok, &ids, skip);
                assert_eq!(deltas.concat(), tok.decode(&ids, skip).unwrap(), "text {text:?} skip {skip}");
            }
        }
    }

    #[test]
    fn multibyte_chars_are_emitted_whole_when_their_last_byte_arrives() {
        let tok = stories();
        let ids = tok.encode("🦀中", false).unwrap();
        // Both characters are outside the 512-piece vocabulary: 4 + 3 byte tokens (after ▁).
        assert!(ids.len() >= 7, "{ids:?}");
        let deltas = stream(&tok, &ids, true);
        assert!(deltas.iter().all(|d| !d.contains(REPLACEMENT)), "{deltas:?}");
        let non_empty: Vec<&str> = deltas.iter().map(String::as_str).filter(|d| !d.is_empty()).collect();
        assert_eq!(non_empty, vec!["🦀", "中"]);
    }

    #[test]
    fn sentencepiece_spaces_survive_token_by_token_streaming() {
        let tok = stories();
        let ids = tok.encode("Once upon", false).unwrap();
        let deltas = stream(&tok, &ids, true);
        assert_eq!(deltas.concat(), "Once upon");
        assert!(deltas.iter().any(|d| d.starts_with(' ')), "the second word keeps its space: {deltas:?}");
    }

    #[test]
    fn skipped_special_token_does_not_eat_the_next_space() {
        let tok = stories();
        let hi = tok.encode("Hi", false).unwrap();
        let there = tok.encode("there", false).unwrap();
        let ids: Vec<u32> = hi.iter().chain([2u32].iter()).chain(there.iter()).copied().collect();
        let deltas = stream(&tok, &ids, true);
        assert_eq!(deltas.concat(), "Hi there");
        assert_eq!(deltas.concat(), tok.decode(&ids, true).unwrap());
        let shown = stream(&tok, &ids, false).concat();
        assert_eq!(shown, tok.decode(&ids, false).unwrap());
        assert!(shown.contains("</s>"));
    }

    #[test]
    fn incomplete_character_at_the_end_is_flushed_by_finish() {
        let tok = stories();
        let ids = tok.encode("ok 🦀", false).unwrap();
        let cut = &ids[..ids.len() - 1];
        let mut dec = IncrementalDecoder::new(tok.clone(), true);
        let pushed: String = cut.iter().map(|&id| dec.push(id).unwrap()).collect();
        assert!(!pushed.contains(REPLACEMENT));
        let rest = dec.finish().unwrap();
        assert!(rest.ends_with(REPLACEMENT), "{rest:?}");
        assert_eq!(pushed + &rest, tok.decode(cut, true).unwrap());
    }

    #[test]
    fn context_keeps_the_first_generated_tokens_space() {
        let tok = stories();
        let prompt = tok.encode("Once upon a", true).unwrap();
        let full = tok.encode("Once upon a time", true).unwrap();
        assert_eq!(&full[..prompt.len()], &prompt[..]);
        let mut dec = IncrementalDecoder::with_context(tok.clone(), true, &prompt).unwrap();
        let generated: String = full[prompt.len()..].iter().map(|&id| dec.push(id).unwrap()).collect();
        assert_eq!(generated + &dec.finish().unwrap(), " time");
    }
}
