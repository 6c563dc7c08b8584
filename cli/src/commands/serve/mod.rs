//! `kvault serve`: the OpenAI-compatible HTTP server (axum + tokio).
//!
//! Start-up order matters to clients and orchestrators: the listener is bound first (so the
//! port is taken and `/health` answers 503 while loading), then the model loads on a blocking
//! thread, then `/health` turns 200. SIGINT/SIGTERM stop accepting, give in-flight requests
//! `--shutdown-timeout` seconds, abort the rest, stop the engine and exit 0.
//!
//! The engine thread is reached only through `EngineHandle`; a request's `RequestStream` lives
//! in its handler future or response body, so a client that goes away aborts its request.
//! Must not know: engine internals, tensors, scheduling.

mod chat;
mod completions;
mod error;
mod generation;
mod kv_state;
mod logprobs;
mod metrics;
mod metrics_offload;
mod model_name;
mod openapi;
mod params;
mod routes;
mod sse;
mod state;
mod tokenize;
mod web;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::lychee::NO_ROLES_HINT;
use kvault_engine::kv_policy::trimkv::NO_GATES_HINT;
use kvault_engine::kv_policy::{KvPolicy, KvPolicyKind};
use kvault_models::chat_template::ChatTemplate;
use kvault_scheduler::sla::SlaConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::args::{EngineArgs, ModelArgs};
use crate::kv::KvArgs;
use crate::offload::OffloadArgs;
use metrics::Metrics;
use state::AppState;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    // The KV policy of requests that set no `kv_*` field; a request's own fields overlay it.
    #[command(flatten)]
    pub kv: KvArgs,
    #[command(flatten)]
    pub offload: OffloadArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stderr).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model name clients send and `/v1/models` lists. Default: the --model argument.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* endpoints.
    #[arg(long, env = "KVAULT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests allowed to wait beyond the running batch; more are refused with 503.
    #[arg(long, default_value_t = 1024)]
    pub max_queued_requests: usize,
    /// SLA for goodput (kvault:good_requests_total): time to first token, in ms.
    #[arg(long, default_value_t = SlaConfig::PAPER_7B.ttft_ms)]
    pub sla_ttft_ms: f64,
    /// SLA for goodput: the largest gap between two tokens of a request, in ms.
    #[arg(long, default_value_t = SlaConfig::PAPER_7B.max_itl_ms)]
    pub sla_max_itl_ms: f64,
    /// On SIGINT/SIGTERM, seconds in-flight requests may take to finish before they are aborted.
    #[arg(long, default_value_t = 10)]
    pub shutdown_timeout: u64,
    /// A Jinja chat template file to render chat requests with instead of the model's own (as
    /// vLLM's flag); lets a model without a template serve /v1/chat/completions.
    #[arg(long)]
    pub chat_template: Option<std::path::PathBuf>,
    /// Do not serve the web page (playground and KV dashboard) at `/`.
    #[arg(long)]
    pub no_web_ui: bool,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let sla = SlaConfig::new(args.sla_ttft_ms, args.sla_max_itl_ms).context("--sla-ttft-ms/--sla-max-itl-ms")?;
    // A request with no `kv_*` field gets exactly the defaults, so they must resolve alone.
    let kv_default = args.kv.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("kvault-http").build()?;
    let result = runtime.block_on(serve(args, sla, kv_default));
    // A model still loading when a signal came must not hold the exit.
    runtime.shutdown_background();
    result
}

async fn serve(args: ServeArgs, sla: SlaConfig, kv_default: KvPolicy) -> Result<()> {
    let template_source = match &args.chat_template {
        Some(path) => {
            let source = std::fs::read_to_string(path).with_context(|| format!("--chat-template: cannot read {}", path.display()))?;
            // Compiled again once the model's special tokens are known; a syntax error stops here,
            // before anything listens or loads.
            ChatTemplate::new(&source, None, None).with_context(|| format!("--chat-template {}", path.display()))?;
            Some(source)
        }
        None => None,
    };
    // Checked before listening: a missing tier directory is a start-up error naming it.
    let offload = args.offload.config(&args.model)?;
    let address = format!("{}:{}", args.host, args.port);
    let listener = TcpListener::bind(&address).await.with_context(|| format!("--host/--port: cannot listen on {address}"))?;
    let local = listener.local_addr()?;
    // Tests and scripts parse this line (with --port 0 it is the only way to learn the port).
    eprintln!("kvault: listening on http://{local}");

    let name = args.served_model_name.clone().unwrap_or_else(|| args.model.display_name());
    let metrics = Arc::new(Metrics::new(sla).context("metrics registry")?);
    let mut state = AppState::new(name.clone(), args.api_key.clone(), args.kv.config(), metrics);
    // As the engine counts what it holds: the running batch plus the queue.
    state.max_choices = args.max_queued_requests.saturating_add(args.engine.max_num_seqs);
    state.web_ui = !args.no_web_ui;
    let state = Arc::new(state);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut server = tokio::spawn(
        axum::serve(listener, routes::router(state.clone())).with_graceful_shutdown(stopped(stop_rx.clone())).into_future(),
    );

    let (model, mut config) = (args.model.clone(), args.engine.config(args.max_queued_requests));
    config.offload = offload;
    let loading = tokio::task::spawn_blocking(move || -> Result<EngineHandle> { EngineHandle::start(model.load()?, config) });
    let engine = tokio::select! {
        loaded = loading => Arc::new(loaded.context("model loading thread")??),
        _ = stopped(stop_rx.clone()) => {
            eprintln!("kvault: interrupted while loading the model");
            return finish_server(&mut server, Duration::from_secs(2)).await;
        }
    };
    if kv_default.kind() == KvPolicyKind::TrimKv && !engine.info().retention_gates {
        // The process exits with this error; the listener goes with it.
        anyhow::bail!("--kv-policy trimkv: no retention gates for this model; {NO_GATES_HINT}");
    }
    if kv_default.kind() == KvPolicyKind::Lychee && !engine.info().head_roles {
        anyhow::bail!("--kv-policy lychee: no head roles for this model; {NO_ROLES_HINT}");
    }
    let info = engine.info();
    if let Some(source) = template_source {
        let special = &info.special_tokens;
        let template = ChatTemplate::new(&source, special.bos_token.clone(), special.eos_token.clone()).context("--chat-template")?;
        state.set_chat_template(template);
    }
    eprintln!(
        "kvault: ready: model {name}, max_model_len {}, {} KV blocks of {} tokens, default KV policy {}",
        info.max_model_len,
        info.num_blocks,
        info.block_size,
        kv_default.describe()
    );
    if let Some(tier) = &info.offload {
        eprintln!("kvault: {tier}");
    }
    state.set_engine(engine.clone());

    // Biased: a stop signal also ends the server (graceful shutdown); when both are ready the
    // stop must win, so the shutdown is reported and the engine drained.
    tokio::select! {
        biased;
        _ = stopped(stop_rx) => {}
        result = &mut server => return result.context("HTTP server task")?.context("HTTP server"),
    }
    eprintln!("kvault: shutting down: no new connections; waiting up to {} s for in-flight requests", args.shutdown_timeout);
    let result = match tokio::time::timeout(Duration::from_secs(args.shutdown_timeout), &mut server).await {
        Ok(joined) => joined.context("HTTP server task")?.context("HTTP server"),
        Err(_) => {
            eprintln!("kvault: aborting the requests still running");
            // Aborted requests end their streams, which lets their connections close.
            stop_engine(&engine).await;
            finish_server(&mut server, Duration::from_secs(5)).await
        }
    };
    stop_engine(&engine).await;
    eprintln!("kvault: stopped");
    result
}

/// Resolves once a stop was signalled.
async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender (the signal task) is gone, which only happens after sending.
    let _ = rx.wait_for(|&stop| stop).await;
}

async fn finish_server(server: &mut tokio::task::JoinHandle<std::io::Result<()>>, grace: Duration) -> Result<()> {
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined.context("HTTP server task")?.context("HTTP server"),
        // Connections that outlive the engine (idle clients) are cut when the process exits.
        Err(_) => Ok(()),
    }
}

/// Aborts everything in the engine and joins its thread (off the async workers: it blocks).
async fn stop_engine(engine: &Arc<EngineHandle>) {
    let engine = engine.clone();
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
