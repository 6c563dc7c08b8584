//! The haystack: the text needles hide in, as a cycle of sentences. Either RULER's "noise"
//! filler (five short sentences repeated) or a user's text file split into sentences (RULER's
//! "essay" haystack, with any text). A sample takes consecutive sentences from some starting
//! point, wrapping around at the end, as RULER repeats a haystack that is too short.
//!
//! Owns: reading and splitting the text. Must not know: tokens, needles or tasks.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// RULER's noise haystack (`type_haystack: noise`), one sentence per unit.
pub const FILLER: [&str; 5] = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."];

/// Longest unit, in words: a "sentence" without end punctuation (a table of contents, a code
/// listing) is cut into pieces this long, so a needle's depth is never coarser than this.
pub const MAX_SENTENCE_WORDS: usize = 40;

#[derive(Clone, Debug)]
pub struct Haystack {
    /// "filler" or the file's path, for reports.
    pub name: String,
    sentences: Vec<String>,
}

impl Haystack {
    pub fn filler() -> Self {
        Self { name: "filler".into(), sentences: FILLER.iter().map(|s| s.to_string()).collect() }
    }

    /// A `--haystack` file: UTF-8 text, at least one sentence.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("--haystack {}: cannot read", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("--haystack {}: not UTF-8 text", path.display()))?;
        Self::from_text(&path.display().to_string(), &text).with_context(|| format!("--haystack {}", path.display()))
    }

    pub fn from_text(name: &str, text: &str) -> Result<Self> {
        let sentences = split_sentences(text);
        if sentences.is_empty() {
            bail!("the text has no words");
        }
        Ok(Self { name: name.to_string(), sentences })
    }

    pub fn len(&self) -> usize {
        self.sentences.len()
    }

    /// Sentence `i` of the endless cycle.
    pub fn sentence(&self, i: usize) -> &str {
        &self.sentences[i % self.sentences.len()]
    }
}

/// Whitespace runs become one space (hard-wrapped lines join, as RULER's `\s+` → " "); a
/// sentence ends after `.`, `!` or `?` (and any closing quotes or brackets) followed by a
/// space. Abbreviations ("Mr.") split too: harmless for a haystack.
pub fn split_sentences(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut sentences = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for word in words {
        current.push(word);
        let core = word.trim_end_matches(['"', '\'', ')', ']', '”', '’', '»']);
        if core.ends_with(['.', '!', '?']) || current.len() == MAX_SENTENCE_WORDS {
            sentences.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        sentences.push(current.join(" "));
    }
    sentences
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_end_punctuation_and_closing_quotes() {
        let s = split_sentences("  He said “Stop!” and left.\nThen,\n  silence?   (Yes.) And a tail");
        assert_eq!(s, ["He said “Stop!”", "and left.", "Then, silence?", "(Yes.)", "And a tail"]);
    }

    #[test]
    fn long_runs_without_punctuation_are_cut() {
        let text = vec!["word"; MAX_SENTENCE_WORDS * 2 + 3].join(" ");
        let s = split_sentences(&text);
        assert_eq!(s.iter().map(|x| x.split(' ').count()).collect::<Vec<_>>(), [MAX_SENTENCE_WORDS, MAX_SENTENCE_WORDS, 3]);
    }

    #[test]
    fn the_cycle_wraps_and_empty_or_missing_texts_are_errors() {
        let h = Haystack::from_text("t", "One. Two.").unwrap();
        assert_eq!((h.len(), h.sentence(0), h.sentence(3)), (2, "One.", "Two."));
        assert!(Haystack::from_text("t", " \n\t ").is_err());
        let err = format!("{:#}", Haystack::from_file(Path::new("/definitely/not/here.txt")).unwrap_err());
        assert!(err.starts_with("--haystack /definitely/not/here.txt: cannot read"), "{err}");
        assert_eq!(Haystack::filler().sentence(7), "The sun is yellow.");
    }
}
