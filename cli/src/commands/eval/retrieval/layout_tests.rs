//! The task generators end to end, with the real tokenizers: generated samples laid out into
//! prompts. Same seed → same prompt ids; every needle once, the asked one at its depth (±1
//! sentence); the prompt plus the answer fits the context length and nearly fills it; the
//! context/question boundary is where `--two-turn` must break; pieces tokenize as the whole
//! text would.

use std::path::PathBuf;

use kvault_models::tokenizer::Tokenizer;

use super::haystack::Haystack;
use super::layout::{assemble, PieceEncoder, Prompt};
use super::tasks::{generate, Sample, SampleId, Task};

fn shared() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared"));
    assert!(dir.join("models").is_dir(), "shared test assets missing: expected {}", dir.display());
    dir
}

fn smollm2() -> Tokenizer {
    Tokenizer::from_file(&shared().join("models/smollm2-135m-instruct/tokenizer.json")).unwrap()
}

/// stories260K: a SentencePiece-style tokenizer (word-start marker, BOS).
fn stories() -> Tokenizer {
    Tokenizer::from_bytes(kvault_models::embedded::TOKENIZER_JSON).unwrap()
}

fn book() -> Haystack {
    Haystack::from_file(&shared().join("data/texts/alice_in_wonderland.txt")).unwrap()
}

fn sample_and_prompt(tok: &Tokenizer, haystack: &Haystack, seed: u64, id: SampleId) -> (Sample, Prompt) {
    let sample = generate(seed, id);
    let prompt = assemble(&sample, haystack, &mut PieceEncoder::new(tok).unwrap(), id.context_len, id.task.max_tokens()).unwrap();
    (sample, prompt)
}

fn id(task: Task, context_len: usize, depth: f64, index: usize) -> SampleId {
    SampleId { task, context_len, depth, index }
}

/// The longest haystack sentence in tokens, as it reads mid-text.
fn longest_sentence(tok: &Tokenizer, haystack: &Haystack) -> usize {
    let mut enc = PieceEncoder::new(tok).unwrap();
    (0..haystack.len()).map(|i| enc.continuation(&format!(" {}", haystack.sentence(i))).unwrap().len()).max().unwrap()
}

#[test]
fn the_same_seed_gives_the_same_prompt_ids() {
    let tok = smollm2();
    for haystack in [Haystack::filler(), book()] {
        for task in Task::ALL {
            let (_, a) = sample_and_prompt(&tok, &haystack, 11, id(task, 1024, 0.3, 1));
            let (_, b) = sample_and_prompt(&tok, &haystack, 11, id(task, 1024, 0.3, 1));
            let (_, other) = sample_and_prompt(&tok, &haystack, 12, id(task, 1024, 0.3, 1));
            assert_eq!(a, b, "{task}");
            assert_ne!(a.ids, other.ids, "{task}: another seed, another prompt");
        }
    }
}

#[test]
fn every_needle_appears_once_and_the_asked_one_at_its_depth() {
    let tok = smollm2();
    for haystack in [Haystack::filler(), book()] {
        let sentence = longest_sentence(&tok, &haystack);
        for task in Task::ALL {
            for depth in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0] {
                for context_len in [512, 2048] {
                    let (sample, prompt) = sample_and_prompt(&tok, &haystack, 3, id(task, context_len, depth, 0));
                    let text = tok.decode(&prompt.ids, false).unwrap();
                    let what = format!("{task} {} at {depth} in {context_len}", haystack.name);
                    for (needle, &pos) in sample.needles.iter().zip(&prompt.needle_positions) {
                        assert_eq!(text.matches(needle.text.as_str()).count(), 1, "{what}: {:?}", needle.text);
                        let from_here = tok.decode(&prompt.ids[pos..], false).unwrap();
                        assert!(from_here.trim_start().starts_with(&needle.text), "{what}: position of {:?}", needle.text);
                        assert!(prompt.haystack.contains(&pos), "{what}");
                    }
                    // The asked needle's depth in haystack-sentence tokens (other needles not counted).
                    let needle_len = |i: usize| PieceEncoder::new(&tok).unwrap().continuation(&format!(" {}", sample.needles[i].text)).unwrap().len();
                    let asked = prompt.needle_positions[0];
                    let needles_before: usize = (1..sample.needles.len()).filter(|&i| prompt.needle_positions[i] < asked).map(needle_len).sum();
                    let all_needles: usize = (0..sample.needles.len()).map(needle_len).sum();
                    let before = (asked - prompt.haystack.start - needles_before) as f64;
                    let sentences_total = (prompt.haystack.len() - all_needles) as f64;
                    let off = (before - depth * sentences_total).abs();
                    assert!(off <= sentence as f64 + 1.0, "{what}: {before} of {sentences_total} tokens before the needle");
                    assert!((prompt.needle_depth - depth).abs() * sentences_total <= sentence as f64 + 1.0, "{what}: reported depth {}", prompt.needle_depth);
                }
            }
        }
    }
}

#[test]
fn prompt_and_answer_fill_the_context_length_to_within_a_sentence() {
    let tok = smollm2();
    for haystack in [Haystack::filler(), book()] {
        let sentence = longest_sentence(&tok, &haystack);
        for task in Task::ALL {
            for context_len in [512, 1000, 1024, 4096] {
                let (_, p) = sample_and_prompt(&tok, &haystack, 5, id(task, context_len, 0.5, 2));
                let used = p.ids.len() + task.max_tokens();
                assert!(used <= context_len && used + sentence + 1 >= context_len, "{task} {context_len}: {used}");
            }
        }
    }
}

#[test]
fn the_context_ends_where_the_question_begins() {
    let tok = smollm2();
    for (task, question) in [(Task::Passkey, "\nWhat is the special magic number for "), (Task::Vartrack, "\nQuestion: Find all variables")] {
        let (sample, p) = sample_and_prompt(&tok, &Haystack::filler(), 1, id(task, 512, 0.5, 0));
        let after = tok.decode(&p.ids[p.context_tokens..], false).unwrap();
        assert!(after.starts_with(question), "{after:?}");
        assert!(after.ends_with(&sample.answer_prefix), "{after:?}");
        let before = tok.decode(&p.ids[..p.context_tokens], false).unwrap();
        assert!(before.starts_with(&sample.header) && before.ends_with('.'), "{before:?}");
        assert_eq!(&before[sample.header.len()..sample.header.len() + sample.context_opening.len()], sample.context_opening);
    }
}

#[test]
fn for_a_byte_level_bpe_the_pieces_are_the_whole_texts_tokens() {
    let tok = smollm2();
    for haystack in [Haystack::filler(), book()] {
        for task in Task::ALL {
            let (_, p) = sample_and_prompt(&tok, &haystack, 9, id(task, 1024, 0.4, 0));
            let text = tok.decode(&p.ids, false).unwrap();
            assert_eq!(tok.encode(&text, true).unwrap(), p.ids, "{task} {}", haystack.name);
        }
    }
}

#[test]
fn a_sentencepiece_tokenizer_gets_bos_and_no_doubled_word_starts() {
    let tok = stories();
    let (sample, p) = sample_and_prompt(&tok, &Haystack::filler(), 2, id(Task::Passkey, 400, 0.5, 0));
    assert_eq!(p.ids[0], 1, "BOS first");
    let text = tok.decode(&p.ids, true).unwrap();
    assert!(!text.contains("  "), "a piece's leading space doubled: {text:?}");
    assert_eq!(text.matches(sample.needles[0].text.as_str()).count(), 1, "{text}");
    assert!(p.ids.len() + Task::Passkey.max_tokens() <= 400);
}

#[test]
fn a_context_too_short_for_the_task_is_an_error_naming_the_flag() {
    let tok = smollm2();
    let sample = generate(0, id(Task::Vartrack, 64, 0.5, 0));
    let err = assemble(&sample, &Haystack::filler(), &mut PieceEncoder::new(&tok).unwrap(), 64, 30).unwrap_err().to_string();
    assert!(err.starts_with("--context-lens 64: too short for vartrack: its instructions, question and needles take "), "{err}");
}
