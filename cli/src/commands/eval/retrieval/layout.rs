//! From a sample's text to its prompt's token ids, at the requested length: the header, then
//! haystack sentences with the needles among them, then the question and the answer prefix.
//!
//! The prompt is built from pieces tokenized one by one, each as it reads after the end of a
//! sentence, so the length is exact (prompt + answer tokens ≤ the context length, as RULER
//! counts it, short of it by less than one sentence), the needle's token position is known,
//! and so is the context/question boundary that `--two-turn` breaks at. For byte-level BPE
//! tokenizers (SmolLM2, Llama 3, Qwen) the pieces' ids are exactly the ids of the whole text.
//!
//! A needle at depth d goes between the two haystack sentences where d of the haystack's
//! tokens lie before it (to the nearest sentence boundary).
//!
//! Owns: tokenizing pieces, fitting the haystack, placing needles. Must not know: how needles
//! are worded or answers judged (`tasks`, `answer`), models or backends.

use std::collections::HashMap;
use std::ops::Range;

use anyhow::Result;
use kvault_models::tokenizer::Tokenizer;

use super::haystack::Haystack;
use super::tasks::Sample;

/// Encodes prompt pieces with the model's tokenizer, each as a continuation of a sentence.
pub struct PieceEncoder<'t> {
    tokenizer: &'t Tokenizer,
    /// The ids of ".": a piece is encoded after it and its ids are cut off again.
    anchor: Vec<u32>,
    /// Sentences repeat (the filler has five): each distinct piece is tokenized once.
    cache: HashMap<String, Vec<u32>>,
}

/// What every piece is encoded after (and then cut from): the end of a sentence.
const ANCHOR: &str = ".";

impl<'t> PieceEncoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Result<Self> {
        let anchor = tokenizer.encode(ANCHOR, false)?;
        Ok(Self { tokenizer, anchor, cache: HashMap::new() })
    }

    /// The first piece of a prompt, with whatever the tokenizer puts first (BOS).
    pub fn opening(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }

    /// `piece`'s ids as they are after the end of a sentence: a leading space stays a space
    /// (not SentencePiece's word-start marker twice) and a leading newline a newline. When the
    /// tokenizer merges the anchor with what follows (there is then no clean cut), the piece
    /// is tokenized alone.
    pub fn continuation(&mut self, piece: &str) -> Result<&[u32]> {
        if !self.cache.contains_key(piece) {
            let joined = self.tokenizer.encode(&format!("{ANCHOR}{piece}"), false)?;
            let ids = match joined.strip_prefix(self.anchor.as_slice()) {
                Some(rest) => rest.to_vec(),
                None => self.tokenizer.encode(piece, false)?,
            };
            self.cache.insert(piece.to_string(), ids);
        }
        Ok(&self.cache[piece])
    }
}

/// A sample's prompt as token ids, and where its parts are.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// Tokens before the question: what a second turn would have compressed (`chunk_break`).
    pub context_tokens: usize,
    /// The haystack (needles included) between the header and the question.
    pub haystack: Range<usize>,
    /// Where each needle starts, in `Sample::needles` order.
    pub needle_positions: Vec<usize>,
    /// The asked needle's depth as placed: the fraction of the haystack sentences' tokens
    /// before it (other needles not counted).
    pub needle_depth: f64,
}

/// Builds `sample`'s prompt so that it plus `max_tokens` answer tokens fill at most
/// `context_len` tokens, with as much haystack as fits.
pub fn assemble(sample: &Sample, haystack: &Haystack, enc: &mut PieceEncoder, context_len: usize, max_tokens: usize) -> Result<Prompt> {
    let head = enc.opening(&sample.header)?;
    let mut tail = enc.continuation(&sample.question)?.to_vec();
    tail.extend_from_slice(enc.continuation(&sample.answer_prefix)?);
    let mut needles: Vec<Vec<u32>> = Vec::with_capacity(sample.needles.len());
    for n in &sample.needles {
        needles.push(enc.continuation(&format!(" {}", n.text))?.to_vec());
    }
    let fixed = head.len() + tail.len() + needles.iter().map(Vec::len).sum::<usize>() + max_tokens;
    let too_short = |fixed: usize| {
        anyhow::anyhow!(
            "--context-lens {context_len}: too short for {}: its instructions, question and needles take {} tokens and \
             its answer up to {max_tokens}, leaving no room for a haystack",
            sample.id.task,
            fixed - max_tokens
        )
    };
    if fixed >= context_len {
        return Err(too_short(fixed));
    }

    // As many sentences as fit, each counted as it reads mid-text (after a space).
    let start = (sample.haystack_start % haystack.len() as u64) as usize;
    let mut sentences: Vec<Sentence> = Vec::new();
    let mut filled = 0;
    loop {
        let text = haystack.sentence(start + sentences.len());
        let ids = enc.continuation(&format!(" {text}"))?;
        if fixed + filled + ids.len() > context_len {
            break;
        }
        filled += ids.len();
        sentences.push(Sentence { text, ids: ids.to_vec() });
    }
    // The first unit opens the context ("\n" rather than " "), which may change its length by
    // a token: drop sentences from the end until the whole prompt fits.
    loop {
        if sentences.is_empty() {
            return Err(too_short(fixed));
        }
        let prompt = build(sample, enc, &head, &tail, &needles, &sentences)?;
        if prompt.ids.len() + max_tokens <= context_len {
            return Ok(prompt);
        }
        sentences.pop();
    }
}

/// A haystack sentence and its ids mid-text.
struct Sentence<'h> {
    text: &'h str,
    ids: Vec<u32>,
}

/// The prompt with the needles at their depths among `sentences`.
fn build(sample: &Sample, enc: &mut PieceEncoder, head: &[u32], tail: &[u32], needles: &[Vec<u32>], sentences: &[Sentence]) -> Result<Prompt> {
    let haystack_tokens: usize = sentences.iter().map(|s| s.ids.len()).sum();
    // Token count before each sentence boundary (0..=n).
    let mut boundary_at = Vec::with_capacity(sentences.len() + 1);
    let mut acc = 0;
    boundary_at.push(0);
    for s in sentences {
        acc += s.ids.len();
        boundary_at.push(acc);
    }
    // Each needle's boundary: the one nearest its depth (the earlier one on a tie). Needles
    // at one boundary keep their order, so the asked needle comes first and a chain reads
    // forward.
    let mut order: Vec<(usize, usize)> = sample
        .needles
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let target = n.depth.clamp(0.0, 1.0) * haystack_tokens as f64;
            let nearest = (0..boundary_at.len())
                .min_by(|&a, &b| (boundary_at[a] as f64 - target).abs().total_cmp(&(boundary_at[b] as f64 - target).abs()))
                .expect("there is always boundary 0");
            (nearest, i)
        })
        .collect();
    order.sort_unstable();

    let mut ids = head.to_vec();
    let haystack_start = ids.len();
    let mut needle_positions = vec![0; needles.len()];
    let mut next_needle = order.iter().peekable();
    let mut first_unit = true;
    for boundary in 0..=sentences.len() {
        while let Some(&&(_, i)) = next_needle.peek().filter(|(b, _)| *b == boundary) {
            next_needle.next();
            needle_positions[i] = ids.len();
            if std::mem::take(&mut first_unit) {
                let text = format!("{}{}", sample.context_opening, sample.needles[i].text);
                ids.extend_from_slice(enc.continuation(&text)?);
            } else {
                ids.extend_from_slice(&needles[i]);
            }
        }
        if let Some(s) = sentences.get(boundary) {
            if std::mem::take(&mut first_unit) {
                ids.extend_from_slice(enc.continuation(&format!("{}{}", sample.context_opening, s.text))?);
            } else {
                ids.extend_from_slice(&s.ids);
            }
        }
    }
    let context_tokens = ids.len();
    ids.extend_from_slice(tail);
    let asked_boundary = order.iter().find(|(_, i)| *i == 0).map_or(0, |(b, _)| *b);
    let needle_depth = boundary_at[asked_boundary] as f64 / haystack_tokens as f64;
    Ok(Prompt { ids, context_tokens, haystack: haystack_start..context_tokens, needle_positions, needle_depth })
}
