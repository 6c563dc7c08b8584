//! `kvault bench serve`: load-tests any OpenAI-compatible server and reports `vllm bench serve`'s
//! metrics, with its definitions and printed labels, so numbers compare across engines.
//!
//! Flow: ask the server for its model name if none was given → load a tokenizer (no weights)
//! → sample prompts → one test request (retried while the server starts) → the timed run under
//! the chosen load → per-request records → metrics → the result block on stdout, progress and
//! notes on stderr, and optionally the result JSON.
//!
//! The pieces: [`args`] (flags), [`dataset`] (prompts, shared with `bench throughput` and
//! `bench latency`), [`arrivals`] (send times), [`driver`] (open/closed loop), [`client`] (HTTP +
//! SSE via [`sse`]), [`timeline`] (chunks → tokens, TTFT, ITL), [`metrics`] and [`stats`]
//! (aggregates), [`report`] (text and JSON).

mod args;
mod arrivals;
mod client;
pub(super) mod dataset;
mod driver;
mod metrics;
mod report;
mod sse;
pub(super) mod stats;
mod timeline;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kvault_models::source::ModelSource;
use kvault_models::tokenizer::Tokenizer;
use kvault_models::weights::GgufFile;
use rand::rngs::StdRng;
use rand::SeedableRng;

pub use args::ServeBenchArgs;
use client::{Api, EndpointKind};
use driver::Load;
use report::RunInfo;

pub fn run(args: ServeBenchArgs) -> Result<()> {
    let kind = EndpointKind::from_path(&args.endpoint)?;
    let base_url = args.base_url.trim_end_matches('/').to_string();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        bail!("--base-url {base_url}: expected http://HOST:PORT");
    }
    // A tokenizer named on the command line is checked before the server is contacted.
    let tokenizer = args.tokenizer.as_deref().map(|t| load_tokenizer(Some(t))).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(benchmark(args, kind, base_url, tokenizer))
}

async fn benchmark(
    args: ServeBenchArgs,
    kind: EndpointKind,
    base_url: String,
    tokenizer: Option<Tokenizer>,
) -> Result<()> {
    let client = client::http_client()?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => wait_for(args.ready_check_timeout_sec, || client::first_model(&client, &base_url))
            .await
            .context("cannot get the model name from the server (or pass --model)")?,
    };
    let tokenizer = match tokenizer {
        Some(t) => t,
        None => {
            let spec = tokenizer_for_model(&model);
            eprintln!("Tokenizer: {} (choose one with --tokenizer)", spec.unwrap_or(kvault_models::embedded::NAME));
            load_tokenizer(spec)?
        }
    };
    let requests = args.dataset.sample(&tokenizer)?;
    let api = Api {
        client,
        url: format!("{base_url}{}", args.endpoint),
        kind,
        model: model.clone(),
        ignore_eos: !args.no_ignore_eos,
        temperature: args.temperature,
    };

    eprintln!("Starting initial single prompt test run...");
    let first = requests[0].clone();
    wait_for(args.ready_check_timeout_sec, || api.probe(&first))
        .await
        .context("initial test run failed; check --base-url, --endpoint and --model")?;
    eprintln!("Initial test run completed. Starting main benchmark run...");

    let load = match args.closed_loop_clients {
        Some(clients) => {
            eprintln!("Closed loop: {clients} clients");
            Load::Closed { clients }
        }
        None => {
            let mut rng = StdRng::seed_from_u64(args.dataset.seed.wrapping_add(0x5eed));
            let offsets = arrivals::send_offsets(requests.len(), args.request_rate, args.burstiness, &mut rng)?;
            let distribution = if args.burstiness == 1.0 { "Poisson process" } else { "Gamma distribution" };
            eprintln!("Traffic request rate: {}", py_float(args.request_rate));
            eprintln!("Burstiness factor: {} ({distribution})", py_float(args.burstiness));
            eprintln!("Maximum request concurrency: {}", args.max_concurrency.map_or("None".into(), |c| c.to_string()));
            Load::Open { offsets, max_concurrency: args.max_concurrency }
        }
    };
    let bar = ProgressBar::new(requests.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests [{elapsed_precise}<{eta_precise}]")
            .expect("static progress template is valid"),
    );
    let num_prompts = requests.len();
    let (observed, duration) = driver::run(api, requests, load, bar).await?;

    let records: Vec<timeline::RequestRecord> = observed.into_iter().map(|o| timeline::record(o, &tokenizer)).collect();
    let failures: Vec<&str> = records.iter().filter_map(|r| r.error.as_deref()).collect();
    if !failures.is_empty() {
        eprintln!("Failed requests during benchmark run detected (capping to 10):");
        for (i, e) in failures.iter().take(10).enumerate() {
            eprintln!("Error {i}: {e}");
        }
    }
    let m = metrics::compute(&records, duration, &args.slo(), &args.metric_percentiles.0);
    let info = RunInfo {
        model,
        endpoint: args.endpoint.clone(),
        request_rate: args.request_rate,
        burstiness: args.burstiness,
        max_concurrency: args.max_concurrency,
        closed_loop_clients: args.closed_loop_clients,
        num_prompts,
    };
    print!("{}", report::render(&m, &info, &args.percentile_metrics.0));
    if let Some(path) = &args.result_file {
        let json = report::result_json(&m, &info, &records);
        let text = serde_json::to_string_pretty(&json)?;
        std::fs::write(path, text).with_context(|| format!("{}: cannot write the result file", path.display()))?;
    }
    Ok(())
}

/// Retries `attempt` once a second while it fails in a way retrying can fix (the server is
/// still starting) and `timeout_s` has not passed (0: one try); otherwise returns the error.
async fn wait_for<T, F, Fut>(timeout_s: u64, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if !client::is_retryable(&e) || Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Python's `str(float)`, so the header lines read as vLLM's do ("inf", "1.0", "2.5").
fn py_float(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Without `--tokenizer`, the served model's own when its name is a local model path (as
/// `kvault serve --model PATH` reports it) or the embedded model; otherwise the embedded one.
/// Hub ids are not tried: that could mean a download just to guess.
fn tokenizer_for_model(model: &str) -> Option<&str> {
    (model == kvault_models::embedded::NAME || std::path::Path::new(model).exists()).then_some(model)
}

/// The tokenizer of `--tokenizer` (same forms as `--model`), without loading any weights.
pub(crate) fn load_tokenizer(spec: Option<&str>) -> Result<Tokenizer> {
    let what = spec.unwrap_or(kvault_models::embedded::NAME);
    let source = ModelSource::parse(spec).with_context(|| format!("--tokenizer {what}"))?;
    let side = source.side_files_dir().map(|d| d.join("tokenizer.json")).filter(|p| p.is_file());
    match (&source, side) {
        (ModelSource::Embedded, _) => Tokenizer::from_bytes(kvault_models::embedded::TOKENIZER_JSON),
        (_, Some(path)) => Tokenizer::from_file(&path),
        (ModelSource::Gguf(path), None) => {
            let file = GgufFile::open(path)?;
            Tokenizer::from_gguf(file.metadata()).with_context(|| format!("{}: tokenizer metadata", path.display()))
        }
        (ModelSource::Folder(dir), None) => bail!("--tokenizer {what}: no tokenizer.json in {}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_models() -> std::path::PathBuf {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models"));
        assert!(dir.is_dir(), "shared test models missing: expected {}", dir.display());
        dir
    }

    #[test]
    fn tokenizers_load_from_a_folder_a_bare_gguf_or_the_embedded_model() {
        let smol = shared_models().join("smollm2-135m-instruct");
        let from_folder = load_tokenizer(Some(smol.to_str().unwrap())).unwrap();
        assert_eq!(from_folder.vocab_size(), 49152);
        // A GGUF alone in a folder: the tokenizer is rebuilt from its metadata.
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("m.gguf");
        std::os::unix::fs::symlink(smol.join("SmolLM2-135M-Instruct.Q4_1.gguf"), &gguf).unwrap();
        let from_gguf = load_tokenizer(Some(gguf.to_str().unwrap())).unwrap();
        let text = "Hello, world! 123";
        assert_eq!(from_gguf.encode(text, true).unwrap(), from_folder.encode(text, true).unwrap());
        assert_eq!(load_tokenizer(None).unwrap().vocab_size(), 512);
    }

    #[test]
    fn a_missing_tokenizer_is_an_error_naming_the_flag() {
        let err = format!("{:#}", load_tokenizer(Some("/definitely/not/here")).unwrap_err());
        assert!(err.contains("--tokenizer") && err.contains("/definitely/not/here"), "{err}");
    }

    #[test]
    fn without_tokenizer_flag_a_local_model_path_names_the_tokenizer() {
        let smol = shared_models().join("smollm2-135m-instruct");
        assert_eq!(tokenizer_for_model(smol.to_str().unwrap()), smol.to_str());
        assert_eq!(tokenizer_for_model("stories260K"), Some("stories260K"));
        assert_eq!(tokenizer_for_model("org/some-model"), None);
    }

    #[test]
    fn python_float_spelling_matches_vllm_header_lines() {
        assert_eq!((py_float(f64::INFINITY), py_float(1.0), py_float(2.5)), ("inf".into(), "1.0".into(), "2.5".into()));
    }
}
