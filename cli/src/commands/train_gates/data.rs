//! Training text: every `.txt` file under the `--data` paths, tokenized, with the last
//! `holdout` fraction of each file set aside and never trained on (it scores the held-out loss).
//! Windows are drawn by a generator seeded from (seed, step), so a resumed run sees exactly the
//! windows an uninterrupted one would.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kvault_models::tokenizer::Tokenizer;
use rand::{rngs::StdRng, Rng, SeedableRng};

pub struct Corpus {
    /// Per file: (path, training tokens, held-out tokens).
    pub files: Vec<(PathBuf, Vec<u32>, Vec<u32>)>,
}

pub(crate) fn text_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_file() {
            out.push(p.clone());
        } else if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("--data {}: cannot list", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "txt") && !is_license(f))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("--data {}: no .txt files in this folder", p.display());
            }
            out.extend(found);
        } else {
            bail!("--data {}: no such file or directory", p.display());
        }
    }
    Ok(out)
}

fn is_license(f: &Path) -> bool {
    f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("LICENSE"))
}

impl Corpus {
    pub fn load(paths: &[PathBuf], tokenizer: &Tokenizer, holdout: f64, window: usize) -> Result<Self> {
        let mut files = Vec::new();
        for f in text_files(paths)? {
            let text = std::fs::read_to_string(&f).with_context(|| format!("--data {}: cannot read as UTF-8 text", f.display()))?;
            let ids = tokenizer.encode(&text, false)?;
            let cut = ids.len() - ((ids.len() as f64 * holdout).ceil() as usize).min(ids.len());
            let (train, held) = ids.split_at(cut);
            files.push((f, train.to_vec(), held.to_vec()));
        }
        if files.iter().all(|(_, t, _)| t.len() < window) {
            bail!("--data: no file has {window} training tokens (--seq-len + 1); give more text or a shorter --seq-len");
        }
        Ok(Self { files })
    }

    pub fn train_tokens(&self) -> usize {
        self.files.iter().map(|f| f.1.len()).sum()
    }

    pub fn heldout_tokens(&self) -> usize {
        self.files.iter().map(|f| f.2.len()).sum()
    }

    /// The training window of `len` tokens for `step` (files weighted by their length).
    pub fn window(&self, seed: u64, step: usize, len: usize) -> &[u32] {
        let mut rng = StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let usable: Vec<&[u32]> = self.files.iter().map(|f| f.1.as_slice()).filter(|t| t.len() >= len).collect();
        let total: usize = usable.iter().map(|t| t.len() - len + 1).sum();
        let mut pick = rng.random_range(0..total);
        for t in usable {
            let n = t.len() - len + 1;
            if pick < n {
                return &t[pick..pick + len];
            }
            pick -= n;
        }
        unreachable!("pick < total")
    }

    /// Up to `count` non-overlapping held-out windows of `len` tokens.
    pub fn heldout_windows(&self, len: usize, count: usize) -> Vec<&[u32]> {
        self.files.iter().flat_map(|f| f.2.chunks_exact(len)).take(count).collect()
    }
}
