//! The discrete-event serving simulator (`kvault bench simulate`).
//!
//! Owns: the grid of runs (hardware × workload × clients × policy) and the record each run
//! produces. Each event is one engine step: the real [`crate::Scheduler`] with the real policy
//! decides, a fake block pool executes the decision (checking the contract), and the roofline
//! cost model advances virtual time. Must not know: tensors, models, the CLI (which prints and
//! plots the records).

pub mod cost;
pub mod report;
pub mod serving;
pub mod workload;

use serde::Serialize;

pub use cost::{Hardware, HardwareKind, LocalMeasurement, ModelSpec, LOCAL_KV_CACHE_BYTES};
pub use report::{clients_table, goodput_table, markdown_table};
pub use serving::{simulate_one, RunConfig};
pub use workload::{PromptSpec, Workload};

use crate::error::Result;
use crate::past_future::PastFutureConfig;
use crate::choice::{PolicyConfig, PolicyKind};
use crate::sla::SlaConfig;

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimRecord {
    pub hardware: String,
    pub workload: String,
    pub clients: usize,
    pub policy: String,
    /// Requests that met the SLA per second of virtual time.
    pub goodput_rps: f64,
    /// Output tokens per second, including work on requests that later failed.
    pub throughput_tok_s: f64,
    pub preemptions: u64,
    pub p99_ttft_ms: f64,
    pub p99_max_itl_ms: f64,
    pub good: u64,
    /// SLA misses (each re-sent), including waiting requests aborted at the TTFT deadline.
    pub failed: u64,
    pub sim_time_s: f64,
    pub steps: u64,
    pub timed_out: bool,
}

/// A simulation grid; every combination is one run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub hardware: Vec<Hardware>,
    pub workloads: Vec<Workload>,
    pub clients: Vec<usize>,
    pub policies: Vec<PolicyKind>,
    /// Prompts per run (the paper uses 500 for the synthetic sets).
    pub num_prompts: usize,
    pub seed: u64,
    pub sla: SlaConfig,
    pub reserve: f64,
    /// Window, futures and samples for past-future; its `seed_output_len` is replaced by each
    /// workload's `max_tokens` (the largest output that server would allow).
    pub past_future: PastFutureConfig,
    pub max_sim_time_s: f64,
    /// See [`RunConfig::abort_margin_s`].
    pub abort_margin_s: f64,
    /// See [`RunConfig::server_max_tokens`]; past-future's seed then becomes `max_model_len`.
    pub server_max_tokens: bool,
    /// See [`RunConfig::kv_budget`].
    pub kv_budget: Option<usize>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            hardware: vec![Hardware::profile(HardwareKind::A100)],
            workloads: Workload::UNIFORM.to_vec(),
            clients: vec![10, 20, 30, 40, 60, 80, 100],
            policies: PolicyKind::ALL.to_vec(),
            num_prompts: 500,
            seed: 0,
            sla: SlaConfig::PAPER_7B,
            reserve: 0.05,
            past_future: PastFutureConfig::default(),
            max_sim_time_s: 6.0 * 3600.0,
            abort_margin_s: 2.0,
            server_max_tokens: false,
            kv_budget: None,
        }
    }
}

impl SimConfig {
    /// The runs of the grid, in hardware → workload → clients → policy order.
    pub fn runs(&self) -> Vec<RunConfig> {
        let mut out = Vec::new();
        for hw in &self.hardware {
            for &workload in &self.workloads {
                for &clients in &self.clients {
                    for &kind in &self.policies {
                        let past_future = PastFutureConfig {
                            seed_output_len: if self.server_max_tokens {
                                hw.max_model_len
                            } else {
                                workload.max_tokens()
                            },
                            seed: self.seed ^ 0x9e37_79b9_7f4a_7c15,
                            ..self.past_future.clone()
                        };
                        out.push(RunConfig {
                            hardware: hw.clone(),
                            workload,
                            clients,
                            policy: PolicyConfig { kind, reserve: self.reserve, past_future },
                            num_prompts: self.num_prompts,
                            seed: self.seed,
                            sla: self.sla,
                            max_sim_time_s: self.max_sim_time_s,
                            abort_margin_s: self.abort_margin_s,
                            server_max_tokens: self.server_max_tokens,
                            kv_budget: self.kv_budget,
                        });
                    }
                }
            }
        }
        out
    }
}

/// Runs the whole grid (sequentially: deterministic and kind to a shared machine).
pub fn simulate(cfg: &SimConfig) -> Result<Vec<SimRecord>> {
    cfg.runs().iter().map(simulate_one).collect()
}
