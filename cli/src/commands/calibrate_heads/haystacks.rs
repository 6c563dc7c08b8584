//! The calibration data: multi-passkey haystacks from `kvault eval retrieval`'s generator
//! (RULER's multikey task: four "special magic number" needles, one of them asked), with every
//! needle moved into depths 5–95%, the question and its answer prefix at the end, and the asked
//! number as the answer under teacher forcing.
//!
//! Haystack text: the `--data` files (the last 10% of their sentences held out for the
//! comparison) or the built-in RULER noise filler. Training example `i` and held-out example `i`
//! come from disjoint sample indices, so their keys, numbers and depths never repeat.
//!
//! Must not know: models (beyond the tokenizer), losses or roles.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kvault_models::tokenizer::Tokenizer;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::commands::eval::retrieval::haystack::{split_sentences, Haystack};
use crate::commands::eval::retrieval::layout::{assemble, PieceEncoder};
use crate::commands::eval::retrieval::tasks::{generate, SampleId, Task};
use crate::commands::train_gates::data::text_files;

/// Needle depths are mapped into this range (the paper's 5%–95%).
const DEPTHS: (f64, f64) = (0.05, 0.95);
/// Held-out samples are drawn from indices this far above the training ones.
const HELDOUT_BASE: usize = 1 << 40;
/// Share of the --data sentences kept for held-out haystacks.
const HOLDOUT: f64 = 0.1;

/// One teacher-forced example: the prompt's cache is `prefix`; `rows` (the prompt's last token,
/// then the answer but its last token) are decoded; `answer[i]` is what row `i` should predict.
pub struct Example {
    pub prefix: Vec<u32>,
    pub rows: Vec<u32>,
    pub answer: Vec<u32>,
}

impl Example {
    pub fn tokens(&self) -> usize {
        self.prefix.len() + self.rows.len()
    }
}

pub struct Haystacks {
    train: Haystack,
    heldout: Haystack,
    /// For provenance.
    pub description: String,
    context_len: usize,
    seed: u64,
}

impl Haystacks {
    pub fn load(data: &[PathBuf], context_len: usize, seed: u64) -> Result<Self> {
        if data.is_empty() {
            let f = Haystack::filler();
            let description = "built-in filler (RULER noise sentences); held-out haystacks differ in keys, numbers and depths only".into();
            return Ok(Self { train: f.clone(), heldout: f, description, context_len, seed });
        }
        let mut sentences = Vec::new();
        let files = text_files(data)?;
        for f in &files {
            let text = std::fs::read_to_string(f).with_context(|| format!("--data {}: cannot read as UTF-8 text", f.display()))?;
            sentences.extend(split_sentences(&text));
        }
        if sentences.len() < 20 {
            bail!("--data: {} sentences in all; give at least 20 (10% are held out)", sentences.len());
        }
        let cut = sentences.len() - (sentences.len() as f64 * HOLDOUT).ceil() as usize;
        let names: Vec<String> = files.iter().map(|f| f.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string()).collect();
        let description = format!("{} ({} sentences; the last {} held out)", names.join(", "), sentences.len(), sentences.len() - cut);
        Ok(Self {
            train: Haystack::from_text("--data", &sentences[..cut].join(" "))?,
            heldout: Haystack::from_text("--data (held out)", &sentences[cut..].join(" "))?,
            description,
            context_len,
            seed,
        })
    }

    pub fn train(&self, tokenizer: &Tokenizer, index: usize) -> Result<Example> {
        self.example(tokenizer, &self.train, index)
    }

    pub fn heldout(&self, tokenizer: &Tokenizer, index: usize) -> Result<Example> {
        self.example(tokenizer, &self.heldout, HELDOUT_BASE + index)
    }

    fn example(&self, tokenizer: &Tokenizer, haystack: &Haystack, index: usize) -> Result<Example> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let to_range = |d: f64| DEPTHS.0 + (DEPTHS.1 - DEPTHS.0) * d;
        let depth = to_range(rng.random::<f64>());
        let mut sample = generate(self.seed, SampleId { task: Task::Multikey, context_len: self.context_len, depth, index });
        for n in sample.needles.iter_mut().skip(1) {
            n.depth = to_range(n.depth);
        }
        let mut enc = PieceEncoder::new(tokenizer)?;
        let answer = enc.continuation(&format!(" {}.", sample.answer.expected()))?.to_vec();
        // The layout names the eval's flag (--context-lens); this command's is --context-len.
        let prompt = assemble(&sample, haystack, &mut enc, self.context_len, answer.len())
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().replacen("--context-lens", "--context-len", 1)))?;
        let (last, prefix) = prompt.ids.split_last().expect("a prompt has tokens");
        let mut rows = vec![*last];
        rows.extend_from_slice(&answer[..answer.len() - 1]);
        Ok(Example { prefix: prefix.to_vec(), rows, answer })
    }
}
