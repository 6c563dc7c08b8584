//! Where prompts get answered: the in-process engine or a running server. Both take the same
//! jobs (token ids, answer length, KV policy, optional context break) and return the greedy
//! answers in job order; the first failure stops the run.
//!
//! Must not know: tasks, scoring or reports.

use std::sync::Arc;

use anyhow::Result;
use indicatif::ProgressBar;
use kvault_engine::kv_policy::KvPolicy;

use super::engine_backend::EngineBackend;
use super::http_backend::HttpBackend;

/// One prompt under one KV policy.
#[derive(Clone, Debug)]
pub struct Job {
    pub prompt: Arc<[u32]>,
    pub max_tokens: usize,
    pub policy: KvPolicy,
    /// `--two-turn`: the tokens before this position are computed (and compressed) before the
    /// question is read.
    pub chunk_break: Option<usize>,
}

/// The longest request (prompt + answer) each kind of policy may run, when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A full-cache request must fit the KV cache.
    pub full: Option<usize>,
    /// A budgeted request is bounded by the model's context only.
    pub budgeted: Option<usize>,
}

impl Limits {
    pub fn for_policy(&self, policy: &KvPolicy) -> Option<usize> {
        match policy {
            KvPolicy::Full => self.full,
            _ => self.budgeted,
        }
    }
}

pub enum Backend {
    Engine(EngineBackend),
    Http(HttpBackend),
}

impl Backend {
    pub fn limits(&self) -> Limits {
        match self {
            Backend::Engine(e) => e.limits(),
            Backend::Http(h) => h.limits(),
        }
    }

    /// "in-process" or the server's URL, for reports.
    pub fn describe(&self) -> String {
        match self {
            Backend::Engine(_) => "in-process".into(),
            Backend::Http(h) => h.base_url().to_string(),
        }
    }

    /// Greedy answers to `jobs`, in order; `bar` advances as each finishes.
    pub fn answer(&self, jobs: &[Job], bar: &ProgressBar) -> Result<Vec<String>> {
        match self {
            Backend::Engine(e) => e.answer(jobs, bar),
            Backend::Http(h) => h.answer(jobs, bar),
        }
    }
}
