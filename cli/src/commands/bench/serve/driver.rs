//! Offering the load: open loop (requests sent at scheduled times, optionally through a
//! concurrency cap that holds them in the client) or closed loop (N clients, each sending its
//! next request as soon as its previous one ends). Returns what each request observed, in
//! dataset order, and the benchmark duration (first dispatch to last completion).
//!
//! Must not know: request bodies or metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use indicatif::ProgressBar;
use tokio::sync::Semaphore;

use super::client::Api;
use super::dataset::SampledRequest;
use super::timeline::Observed;

pub enum Load {
    /// Send request i at `offsets[i]` seconds; at most `max_concurrency` in flight.
    Open { offsets: Vec<f64>, max_concurrency: Option<usize> },
    Closed { clients: usize },
}

pub async fn run(api: Api, requests: Vec<SampledRequest>, load: Load, bar: ProgressBar) -> Result<(Vec<Observed>, f64)> {
    let requests = Arc::new(requests);
    let start = Instant::now();
    let observed = match load {
        Load::Open { offsets, max_concurrency } => open_loop(api, requests, offsets, max_concurrency, start, &bar).await?,
        Load::Closed { clients } => closed_loop(api, requests, clients, start, &bar).await?,
    };
    let duration = start.elapsed().as_secs_f64();
    bar.finish();
    Ok((observed, duration))
}

async fn open_loop(
    api: Api,
    requests: Arc<Vec<SampledRequest>>,
    offsets: Vec<f64>,
    max_concurrency: Option<usize>,
    start: Instant,
    bar: &ProgressBar,
) -> Result<Vec<Observed>> {
    let slots = max_concurrency.map(|c| Arc::new(Semaphore::new(c)));
    let mut tasks = Vec::with_capacity(requests.len());
    for (i, offset) in offsets.into_iter().enumerate() {
        let due = Duration::try_from_secs_f64(offset).map_err(|e| anyhow!("send time {offset} s: {e}"))?;
        tokio::time::sleep_until((start + due).into()).await;
        let (api, requests, slots, bar) = (api.clone(), requests.clone(), slots.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let arrival = Instant::now();
            let _slot = match &slots {
                Some(s) => Some(s.clone().acquire_owned().await.map_err(|e| anyhow!("concurrency limiter: {e}"))?),
                None => None,
            };
            let o = api.send(&requests[i], start, arrival.elapsed().as_secs_f64()).await;
            bar.inc(1);
            Ok::<Observed, anyhow::Error>(o)
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| anyhow!("request task failed: {e}"))??);
    }
    Ok(out)
}

async fn closed_loop(api: Api, requests: Arc<Vec<SampledRequest>>, clients: usize, start: Instant, bar: &ProgressBar) -> Result<Vec<Observed>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients.min(requests.len()) {
        let (api, requests, next, bar) = (api.clone(), requests.clone(), next.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests.len() {
                    return done;
                }
                done.push((i, api.send(&requests[i], start, 0.0).await));
                bar.inc(1);
            }
        }));
    }
    let mut slots: Vec<Option<Observed>> = vec![None; requests.len()];
    for t in tasks {
        for (i, o) in t.await.map_err(|e| anyhow!("client task failed: {e}"))? {
            slots[i] = Some(o);
        }
    }
    slots.into_iter().enumerate().map(|(i, o)| o.ok_or_else(|| anyhow!("request {i} was never sent"))).collect()
}
