//! Hugging Face hub ids (`org/name[@revision][:file.gguf]`) resolved to a local snapshot folder,
//! through the standard HF cache so that files downloaded by Python tools are reused and the
//! other way round.
//!
//! The cache is read first and trusted: a model whose snapshot is complete loads with no
//! network access at all (a pinned commit is looked up directly; a branch through
//! `refs/<branch>`). Only a missing or incomplete snapshot is downloaded, with hf-hub and a
//! progress bar. Environment, as in `huggingface_hub`: `HF_HUB_CACHE` (else `HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`), `HF_HUB_OFFLINE=1`
//! (cache only), `HF_TOKEN` (else the `token` file under `HF_HOME`), `HF_ENDPOINT`.
//!
//! File syntax: `org/name:model-Q4_K_M.gguf` (or `org/name@rev:file.gguf`) picks one GGUF file of
//! a repository. A colon cannot occur in a repository name or a git revision, so the split is
//! unambiguous; the part after it must name a `.gguf` file.
//!
//! Must not know: how a snapshot is loaded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};

const DEFAULT_REVISION: &str = "main";
const OPTIONAL_FILES: &[&str] =
    &["generation_config.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"];
const SAFETENSORS: &str = "model.safetensors";
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubModelId {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit hash; `main` unless given.
    pub revision: String,
    /// One `.gguf` file in the repository, if the model is a GGUF.
    pub file: Option<String>,
}

impl std::fmt::Display for HubModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)?;
        if let Some(file) = &self.file {
            write!(f, ":{file}")?;
        }
        Ok(())
    }
}

fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

impl FromStr for HubModelId {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let syntax = "expected org/name, org/name@revision, or either followed by :file.gguf";
        let (rest, file) = match s.split_once(':') {
            Some((rest, file)) => {
                if !file.ends_with(".gguf")
                    || file.starts_with('/')
                    || file.split('/').any(|p| p.is_empty() || p == "..")
                {
                    bail!("`{s}`: `{file}` after ':' must be the path of a .gguf file in the repository ({syntax})");
                }
                (rest, Some(file.to_string()))
            }
            None => (s, None),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (rest, DEFAULT_REVISION),
        };
        let mut parts = repo.split('/');
        let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            bail!("`{s}` is not a Hugging Face model id ({syntax})");
        };
        if !valid_name_part(org) || !valid_name_part(name) {
            bail!("`{s}`: `{repo}` is not a valid Hugging Face repository name ({syntax})");
        }
        if revision.is_empty() || revision.contains("..") || revision.chars().any(|c| c.is_whitespace() || c == '\\') {
            bail!("`{s}`: `{revision}` is not a valid revision ({syntax})");
        }
        Ok(Self { repo: repo.to_string(), revision: revision.to_string(), file })
    }
}

/// `org/name` (optionally with `@rev` / `:file.gguf`) that is not an existing local path.
pub fn looks_like_hub_id(s: &str) -> bool {
    !Path::new(s).exists() && s.parse::<HubModelId>().is_ok()
}

/// Where and how to reach the hub; read from the environment by [`resolve`].
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// The `hub` cache folder (holding `models--org--name/`).
    pub cache_dir: PathBuf,
    pub offline: bool,
    pub token: Option<String>,
    pub endpoint: Option<String>,
    pub progress: bool,
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

impl HubSettings {
    pub fn from_env() -> Result<Self> {
        let hf_home = match env_nonempty("HF_HOME") {
            Some(h) => PathBuf::from(h),
            None => match env_nonempty("XDG_CACHE_HOME") {
                Some(x) => PathBuf::from(x).join("huggingface"),
                None => PathBuf::from(env_nonempty("HOME").context(
                    "cannot locate the Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, HOME is set",
                )?)
                .join(".cache/huggingface"),
            },
        };
        let cache_dir = env_nonempty("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let offline = env_nonempty("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let token = env_nonempty("HF_TOKEN").or_else(|| {
            let path = env_nonempty("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        Ok(Self { cache_dir, offline, token, endpoint: env_nonempty("HF_ENDPOINT"), progress: true })
    }
}

/// Resolves `id` with settings from the environment; returns the snapshot folder.
pub fn resolve(id: &HubModelId) -> Result<PathBuf> {
    resolve_with(id, &HubSettings::from_env()?)
}

/// The cache's folder for one model repository.
fn repo_dir(cache_dir: &Path, repo: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", repo.replace('/', "--")))
}

fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot folder the cache has for `id`'s revision, if any (complete or not).
fn cached_snapshot(cache_dir: &Path, id: &HubModelId) -> Option<PathBuf> {
    let dir = repo_dir(cache_dir, &id.repo);
    if is_commit_hash(&id.revision) {
        let snap = dir.join("snapshots").join(&id.revision);
        if snap.is_dir() {
            return Some(snap);
        }
    }
    let commit = std::fs::read_to_string(dir.join("refs").join(&id.revision)).ok()?;
    let snap = dir.join("snapshots").join(commit.trim());
    snap.is_dir().then_some(snap)
}

/// The files a snapshot must hold to be loadable, given what it already holds (the shard list
/// comes from the index file). `Err` if the index exists but is unreadable.
fn required_files(snapshot: &Path, id: &HubModelId) -> Result<Vec<String>> {
    if let Some(file) = &id.file {
        return Ok(vec![file.clone()]);
    }
    let mut files = vec!["config.json".to_string(), "tokenizer.json".to_string()];
    let index = snapshot.join(SAFETENSORS_INDEX);
    if index.exists() {
        files.push(SAFETENSORS_INDEX.to_string());
        files.extend(shards_in_index(&index)?);
    } else {
        files.push(SAFETENSORS.to_string());
    }
    Ok(files)
}

fn shards_in_index(index: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("{}: cannot read", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no weight_map object", index.display()))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file =
            file.as_str().with_context(|| format!("{}: weight_map[{tensor}] is not a file name", index.display()))?;
        if file.is_empty() || file.starts_with('/') || file.split('/').any(|p| p == "..") {
            bail!("{}: weight_map[{tensor}] names `{file}`, which is outside the repository", index.display());
        }
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        bail!("{}: weight_map is empty", index.display());
    }
    Ok(shards)
}

fn missing_in(snapshot: &Path, id: &HubModelId) -> Result<Vec<String>> {
    // `exists` follows the blob symlink, so a dangling link counts as missing.
    Ok(required_files(snapshot, id)?.into_iter().filter(|f| !snapshot.join(f).exists()).collect())
}

/// As [`resolve`], with explicit settings (what the tests use: the environment is global).
pub fn resolve_with(id: &HubModelId, settings: &HubSettings) -> Result<PathBuf> {
    let cache = &settings.cache_dir;
    let cached = cached_snapshot(cache, id);
    let cache_state = match &cached {
        Some(snap) => {
            let missing = missing_in(snap, id)?;
            if missing.is_empty() {
                tracing::debug!("{id}: using cached snapshot {}", snap.display());
                return Ok(snap.clone());
            }
            format!("the cached snapshot {} is incomplete (missing: {})", snap.display(), missing.join(", "))
        }
        None => format!("it is not in the Hugging Face cache at {}", cache.display()),
    };
    if settings.offline {
        bail!("model {id}: {cache_state}, and HF_HUB_OFFLINE=1 forbids downloading it");
    }
    download(id, settings).map_err(|e| anyhow!("model {id}: {cache_state}, and downloading it failed: {e:#}"))
}

/// An hf-hub progress sink drawing one indicatif bar per file.
struct Bar(Option<indicatif::ProgressBar>);

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        let bar = indicatif::ProgressBar::new(size as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(filename.to_string());
        self.0 = Some(bar);
    }

    fn update(&mut self, size: usize) {
        if let Some(bar) = &self.0 {
            bar.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish();
        }
    }
}

fn download(id: &HubModelId, settings: &HubSettings) -> Result<PathBuf> {
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(settings.cache_dir.clone()))
        .with_token(settings.token.clone())
        .with_progress(false)
        .with_retries(2);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().context("cannot set up the hub client")?;
    let repo = api.repo(hf_hub::Repo::with_revision(id.repo.clone(), hf_hub::RepoType::Model, id.revision.clone()));
    let fetch = |file: &str| -> Result<PathBuf> {
        let progress = Bar(None);
        let path = if settings.progress {
            repo.download_with_progress(file, progress)
        } else {
            repo.download_with_progress(file, ())
        };
        path.with_context(|| format!("{file} from {}", repo.url(file)))
    };

    if let Some(file) = &id.file {
        let path = fetch(file)?;
        return snapshot_of(&path, file);
    }
    let config = fetch("config.json")?;
    let snapshot = snapshot_of(&config, "config.json")?;
    fetch("tokenizer.json")?;
    match fetch(SAFETENSORS_INDEX) {
        Ok(index) => {
            for shard in shards_in_index(&index)? {
                fetch(&shard)?;
            }
        }
        Err(index_err) => {
            fetch(SAFETENSORS).map_err(|e| anyhow!("neither {SAFETENSORS_INDEX} ({index_err:#}) nor {e:#}"))?;
        }
    }
    for file in OPTIONAL_FILES {
        if let Err(e) = fetch(file) {
            tracing::debug!("{id}: optional {file} not downloaded: {e:#}");
        }
    }
    let missing = missing_in(&snapshot, id)?;
    if !missing.is_empty() {
        bail!("the downloaded snapshot {} still lacks {}", snapshot.display(), missing.join(", "));
    }
    Ok(snapshot)
}

/// `.../snapshots/<commit>/<file>` → `.../snapshots/<commit>`.
fn snapshot_of(path: &Path, file: &str) -> Result<PathBuf> {
    let mut dir = path.to_path_buf();
    for _ in Path::new(file).components() {
        dir = dir
            .parent()
            .map(Path::to_path_buf)
            .with_context(|| format!("{}: not inside a snapshot", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_revision_and_file() {
        let id: HubModelId = "org/name".parse().unwrap();
        assert_eq!(id, HubModelId { repo: "org/name".into(), revision: "main".into(), file: None });
        let id: HubModelId = "Qwen/Qwen2.5-0.5B-Instruct-GGUF@v1.0:qwen2.5-0.5b-instruct-q4_k_m.gguf".parse().unwrap();
        assert_eq!(id.repo, "Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        assert_eq!(id.revision, "v1.0");
        assert_eq!(id.file.as_deref(), Some("qwen2.5-0.5b-instruct-q4_k_m.gguf"));
        assert_eq!(id.to_string(), "Qwen/Qwen2.5-0.5B-Instruct-GGUF@v1.0:qwen2.5-0.5b-instruct-q4_k_m.gguf");
        let id: HubModelId = "a/b:sub/dir/x.gguf".parse().unwrap();
        assert_eq!((id.revision.as_str(), id.file.as_deref()), ("main", Some("sub/dir/x.gguf")));
    }

    #[test]
    fn rejects_what_is_not_a_hub_id() {
        for bad in
            ["name", "a/b/c", "/abs/path", "./a/b", "a/b@", "a/b:weights.bin", "a/b:../x.gguf", "a--b/c", "a/ b", ""]
        {
            assert!(bad.parse::<HubModelId>().is_err(), "{bad:?} parsed");
            assert!(!looks_like_hub_id(bad), "{bad:?}");
        }
        assert!(looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
    }

    #[test]
    fn existing_local_path_is_not_a_hub_id() {
        // Unit tests run in the crate folder, where `src/tokenizer` exists and is also
        // spelled like `org/name`.
        assert!(Path::new("src/tokenizer").is_dir());
        assert!("src/tokenizer".parse::<HubModelId>().is_ok());
        assert!(!looks_like_hub_id("src/tokenizer"));
    }

    #[test]
    fn snapshot_of_strips_nested_file_paths() {
        let p = Path::new("/c/models--a--b/snapshots/abc/sub/x.gguf");
        assert_eq!(snapshot_of(p, "sub/x.gguf").unwrap(), Path::new("/c/models--a--b/snapshots/abc"));
    }
}
