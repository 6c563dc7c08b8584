//! SentencePiece-BPE (GGUF `tokenizer.ggml.model = "llama"`) as an HF BPE tokenizer.
//!
//! SentencePiece's BPE merges the adjacent pair whose *merged piece* scores highest. An HF BPE
//! applies merges by rank instead, so the ranks are derived from the scores: every way of
//! writing a vocabulary piece as two vocabulary pieces is a merge, ranked by the merged piece's
//! score (highest first). HF's SentencePiece→BPE converter does the same, so ids match its
//! `tokenizer.json`. Text is normalized the SentencePiece way (optional whitespace cleanup, a
//! `▁` prefix, spaces as `▁`); unknown characters fall back to `<0xNN>` byte pieces.
//!
//! Must not know: GGUF value types (the caller hands plain vectors) or special-token policy.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, NormalizerWrapper};

/// SentencePiece's whitespace symbol.
pub(super) const SPACE: &str = "\u{2581}";

/// Merge ranks from the vocabulary and its scores (`scores[i]` belongs to `pieces[i]`).
///
/// Ties keep vocabulary order, and the several splits of one piece are ordered by the ids of
/// their halves, which is what HF's converter produces.
pub(super) fn merges_from_scores(pieces: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(pieces.len());
    for (i, p) in pieces.iter().enumerate() {
        ids.entry(p).or_insert(i);
    }
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if ids.get(piece) != Some(&i) {
            continue; // a duplicate string is only reachable through its first id
        }
        let mut local: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((*ids.get(&piece[..at])?, *ids.get(&piece[at..])?)))
            .collect();
        local.sort_unstable();
        ranked.extend(local.into_iter().map(|(l, r)| (scores[i], l, r)));
    }
    // Stable: equal scores keep the order built above.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked.into_iter().map(|(_, l, r)| (pieces[l].to_string(), pieces[r].to_string())).collect()
}

fn replace(pattern: ReplacePattern, content: &str) -> Result<NormalizerWrapper> {
    Replace::new(pattern, content).map(NormalizerWrapper::Replace).map_err(|e| anyhow!("SentencePiece normalizer: {e}"))
}

/// `remove_extra_whitespaces`: SentencePiece drops leading/trailing spaces and collapses runs.
/// `add_space_prefix`: a `▁` in front so the first word looks like every other word.
pub(super) fn normalizer(remove_extra_whitespaces: bool, add_space_prefix: bool) -> Result<NormalizerWrapper> {
    let mut steps = Vec::new();
    if remove_extra_whitespaces {
        steps.push(replace(ReplacePattern::Regex(r"\A +| +\z".into()), "")?);
        steps.push(replace(ReplacePattern::Regex(" {2,}".into()), " ")?);
    }
    if add_space_prefix {
        steps.push(NormalizerWrapper::Prepend(Prepend::new(SPACE.into())));
    }
    steps.push(replace(ReplacePattern::String(" ".into()), SPACE)?);
    Ok(NormalizerWrapper::Sequence(NormalizerSequence::new(steps)))
}

/// `▁` back to spaces, byte pieces back to UTF-8, and the prefix space taken off again.
pub(super) fn decoder(add_space_prefix: bool) -> Result<DecoderWrapper> {
    let to_space =
        tokenizers::normalizers::Replace::new(SPACE, " ").map_err(|e| anyhow!("SentencePiece decoder: {e}"))?;
    let mut steps = vec![
        DecoderWrapper::Replace(to_space),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        steps.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    Ok(DecoderWrapper::Sequence(DecoderSequence::new(steps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_rank_follows_the_merged_pieces_score() {
        // "ab" scores above "bc", so in "abc" the pair (a,b) must merge first.
        let pieces = ["a", "b", "c", "bc", "ab", "abc"];
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let merges = merges_from_scores(&pieces, &scores);
        let pos = |l: &str, r: &str| merges.iter().position(|m| m.0 == l && m.1 == r).unwrap();
        assert!(pos("a", "b") < pos("b", "c"));
        assert!(pos("b", "c") < pos("ab", "c"));
        // "abc" is reachable both as ab+c and a+bc; both are merges.
        assert!(merges.contains(&("a".into(), "bc".into())));
        assert_eq!(merges.len(), 4);
    }

    #[test]
    fn splits_respect_char_boundaries() {
        let pieces = ["é", "x", "éx"];
        let merges = merges_from_scores(&pieces, &[0.0, 0.0, -1.0]);
        assert_eq!(merges, vec![("é".to_string(), "x".to_string())]);
    }
}
