//! `GET /v1/kv/state`: where the KV memory is right now, as JSON for the dashboard (and any
//! other observer): the block pool's occupancy, every request the engine holds with its policy,
//! budget, length and blocks, the engine's counters (preemptions, prefix-cache hits, tokens) and
//! the offload tiers. Guarded by `--api-key` like `/v1/*`.
//!
//! The engine refreshes its picture after every step; this only copies and shapes it, so
//! polling it several times a second costs the engine nothing. Rates (throughput) are left to
//! the reader: `time` is monotonic seconds since the server started, next to the counters.
//! Must not know: the page, HTML, how the engine gathers the picture.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use kvault_engine::kv_state::{KvState, RequestKvState};
use kvault_engine::stats::StatsSnapshot;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::AppState;
use crate::kv::policy_json;

pub async fn handle(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let engine = state.engine()?;
    let info = engine.info();
    let time = state.started.elapsed().as_secs_f64();
    let mut kv = engine.kv_state();
    if kv.total_blocks == 0 {
        // No step has run yet, so no picture was published: the pool is whole and empty.
        kv = KvState { block_size: info.block_size, total_blocks: info.num_blocks, free_blocks: info.num_blocks, ..KvState::default() };
    }
    Ok(Json(shape(&kv, &engine.stats(), info.max_model_len, &state.served_model_name, time)))
}

fn request(r: &RequestKvState) -> Value {
    json!({
        "id": r.id,
        "phase": r.phase.as_str(),
        "policy": policy_json(&r.policy),
        "budget": r.policy.budget(),
        "prompt_tokens": r.prompt_tokens,
        "output_tokens": r.output_tokens,
        "length": r.prompt_tokens + r.output_tokens,
        "computed_tokens": r.computed_tokens,
        "tokens_held": r.tokens_held,
        "blocks_held": r.blocks_held,
        "cached_tokens": r.cached_tokens,
        "tokens_evicted": r.tokens_evicted,
    })
}

pub fn shape(kv: &KvState, stats: &StatsSnapshot, max_model_len: usize, model: &str, time: f64) -> Value {
    let used = kv.used_blocks();
    let usage = if kv.total_blocks == 0 { 0.0 } else { used as f64 / kv.total_blocks as f64 };
    let policies: Vec<Value> = stats
        .kv_policies
        .iter()
        .map(|c| json!({"policy": c.policy.as_str(), "requests": c.requests, "evicted_tokens": c.evicted_tokens}))
        .collect();
    json!({
        "object": "kv.state",
        "time": time,
        "model": model,
        "max_model_len": max_model_len,
        "block_size": kv.block_size,
        "pool": {
            "total_blocks": kv.total_blocks,
            "used_blocks": used,
            "free_blocks": kv.free_blocks,
            "free_cached_blocks": kv.free_cached_blocks,
            "free_empty_blocks": kv.free_blocks.saturating_sub(kv.free_cached_blocks),
            "usage": usage,
        },
        "queue": {"running": stats.running, "waiting": stats.waiting},
        "requests": kv.requests.iter().map(request).collect::<Vec<_>>(),
        "counters": {
            "prefix_cache_queries": stats.prefix_cache_queries,
            "prefix_cache_hits": stats.prefix_cache_hits,
            "preemptions": stats.preemptions,
            "prompt_tokens": stats.prompt_tokens,
            "generation_tokens": stats.generation_tokens,
            "finished_requests": stats.finished_requests,
            "steps": stats.steps,
            "kv_tokens_held": stats.kv_tokens_held,
            "policies": policies,
        },
        // No offload tier exists yet; the shape is there so dashboards need not change.
        "offload": {"configured": false, "tiers": []},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvault_engine::kv_policy::KvPolicy;
    use kvault_engine::kv_state::RequestPhase;

    #[test]
    fn the_pool_splits_into_used_cached_and_empty_and_requests_show_their_policy() {
        let kv = KvState {
            block_size: 16,
            total_blocks: 100,
            free_blocks: 70,
            free_cached_blocks: 20,
            requests: vec![RequestKvState {
                id: 7,
                phase: RequestPhase::Running,
                policy: KvPolicy::H2o { budget: 64, recent_window: 32 },
                prompt_tokens: 100,
                output_tokens: 20,
                computed_tokens: 119,
                tokens_held: 66,
                blocks_held: 5,
                cached_tokens: 32,
                tokens_evicted: 53,
            }],
        };
        let v = shape(&kv, &StatsSnapshot::default(), 512, "m", 1.5);
        assert_eq!(v["pool"]["used_blocks"], 30);
        assert_eq!(v["pool"]["free_empty_blocks"], 50);
        assert_eq!(v["pool"]["usage"], 0.3);
        let r = &v["requests"][0];
        assert_eq!((r["phase"].as_str(), r["policy"]["policy"].as_str(), r["budget"].as_u64()), (Some("running"), Some("h2o"), Some(64)));
        assert_eq!((r["length"].as_u64(), r["tokens_held"].as_u64(), r["blocks_held"].as_u64()), (Some(120), Some(66), Some(5)));
        assert_eq!(v["offload"]["configured"], false);
    }
}
