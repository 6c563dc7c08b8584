//! hf-hub resolution against a temporary folder laid out exactly like the Hugging Face cache
//! (`models--org--name/{refs,snapshots,blobs}`, snapshot entries symlinked to blobs) holding a
//! copy of stories260K. Nothing here touches the network: offline mode, or a loopback endpoint
//! that refuses connections.

mod tok_support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kvault_models::hub::{resolve, resolve_with, HubModelId, HubSettings};
use kvault_models::special_tokens::SpecialTokens;
use kvault_models::tokenizer::Tokenizer;
use tok_support::model_dir;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const FILES: &[&str] =
    &["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"];

/// Serializes the tests that set process-wide environment variables.
static ENV: Mutex<()> = Mutex::new(());

fn blob_name(bytes: &[u8]) -> String {
    // FNV-1a: a stable content address, standing in for the hub's sha256/etag.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

/// Adds `bytes` as `name` to the snapshot `commit` of `repo_dir`, through a blob + symlink.
fn add_file(repo_dir: &Path, commit: &str, name: &str, bytes: &[u8]) {
    let blobs = repo_dir.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = blob_name(bytes);
    std::fs::write(blobs.join(&blob), bytes).unwrap();
    let link = repo_dir.join("snapshots").join(commit).join(name);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    let depth = Path::new(name).components().count();
    let target = PathBuf::from("../".repeat(depth + 1)).join("blobs").join(blob);
    std::os::unix::fs::symlink(target, &link).unwrap();
}

/// A hub cache folder holding stories260K as `org/stories` with `refs/main` → COMMIT.
fn cache_with_stories(hub: &Path) -> PathBuf {
    let repo = hub.join("models--org--stories");
    for f in FILES {
        let bytes = std::fs::read(model_dir("stories260K").join(f)).unwrap();
        add_file(&repo, COMMIT, f, &bytes);
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    repo
}

fn offline(cache_dir: &Path) -> HubSettings {
    HubSettings { cache_dir: cache_dir.to_path_buf(), offline: true, token: None, endpoint: None, progress: false }
}

fn id(s: &str) -> HubModelId {
    s.parse().unwrap()
}

#[test]
fn complete_cached_model_resolves_offline_and_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = cache_with_stories(tmp.path());
    let snap = resolve_with(&id("org/stories"), &offline(tmp.path())).unwrap();
    assert_eq!(snap, repo.join("snapshots").join(COMMIT));
    let tok = Tokenizer::from_file(&snap.join("tokenizer.json")).unwrap();
    assert_eq!(tok.encode("Once upon a time", true).unwrap(), vec![1, 403, 407, 261, 378]);
    let st = SpecialTokens::from_model_dir(&snap, &tok).unwrap();
    assert_eq!((st.bos_token_id, st.eos_token_ids), (Some(1), vec![2]));
}

#[test]
fn complete_cache_is_used_without_trying_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    cache_with_stories(tmp.path());
    // Online, but the endpoint refuses connections: success proves no request was needed.
    let settings = HubSettings { offline: false, endpoint: Some("http://127.0.0.1:9".into()), ..offline(tmp.path()) };
    assert!(resolve_with(&id("org/stories@main"), &settings).is_ok());
}

#[test]
fn incomplete_cache_and_failed_download_say_both() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = cache_with_stories(tmp.path());
    std::fs::remove_file(repo.join("snapshots").join(COMMIT).join("model.safetensors")).unwrap();
    let settings = HubSettings { offline: false, endpoint: Some("http://127.0.0.1:9".into()), ..offline(tmp.path()) };
    let err = format!("{:#}", resolve_with(&id("org/stories"), &settings).unwrap_err());
    assert!(err.contains("incomplete (missing: model.safetensors)") && err.contains("downloading it failed"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    let err = format!("{:#}", resolve_with(&id("org/stories"), &offline(tmp.path())).unwrap_err());
    assert!(err.contains("missing: model.safetensors") && err.contains("HF_HUB_OFFLINE=1"), "{err}");
}

#[test]
fn sharded_index_needs_every_shard_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = cache_with_stories(tmp.path());
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::remove_file(snap.join("model.safetensors")).unwrap();
    let shard = "model-00001-of-00001.safetensors";
    let index = serde_json::json!({"metadata": {}, "weight_map": {"model.embed_tokens.weight": shard, "lm_head.weight": shard}});
    add_file(&repo, COMMIT, "model.safetensors.index.json", index.to_string().as_bytes());
    let err = format!("{:#}", resolve_with(&id("org/stories"), &offline(tmp.path())).unwrap_err());
    assert!(err.contains(shard), "{err}");
    add_file(&repo, COMMIT, shard, &std::fs::read(model_dir("stories260K").join("model.safetensors")).unwrap());
    assert_eq!(resolve_with(&id("org/stories"), &offline(tmp.path())).unwrap(), snap);
}

#[test]
fn revision_pinned_by_commit_hash_needs_no_ref() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = cache_with_stories(tmp.path());
    std::fs::remove_file(repo.join("refs/main")).unwrap();
    let pinned = id(&format!("org/stories@{COMMIT}"));
    assert_eq!(resolve_with(&pinned, &offline(tmp.path())).unwrap(), repo.join("snapshots").join(COMMIT));
    // Without refs/main the branch cannot be resolved offline.
    assert!(resolve_with(&id("org/stories"), &offline(tmp.path())).is_err());
}

#[test]
fn gguf_file_in_a_repo_resolves_to_its_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models--org--tiny-GGUF");
    add_file(&repo, COMMIT, "tiny-Q8_0.gguf", b"GGUF not really");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), format!("{COMMIT}\n")).unwrap();
    let gguf = id("org/tiny-GGUF:tiny-Q8_0.gguf");
    let snap = resolve_with(&gguf, &offline(tmp.path())).unwrap();
    assert!(snap.join("tiny-Q8_0.gguf").is_file());
    let err = format!("{:#}", resolve_with(&id("org/tiny-GGUF:other.gguf"), &offline(tmp.path())).unwrap_err());
    assert!(err.contains("other.gguf"), "{err}");
}

#[test]
fn missing_model_error_names_the_model_the_cache_and_offline_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let err = format!("{:#}", resolve_with(&id("org/absent@v2"), &offline(tmp.path())).unwrap_err());
    assert!(err.contains("org/absent@v2"), "{err}");
    assert!(err.contains(&format!("not in the Hugging Face cache at {}", tmp.path().display())), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE=1"), "{err}");
}

fn with_env<T>(vars: &[(&str, Option<&Path>)], f: impl FnOnce() -> T) -> T {
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let keys = ["HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT"];
    let saved: Vec<(&str, Option<std::ffi::OsString>)> = keys.iter().map(|k| (*k, std::env::var_os(k))).collect();
    // SAFETY: every test that reads or writes these variables holds ENV.
    unsafe {
        for k in keys {
            std::env::remove_var(k);
        }
        std::env::set_var("HF_HUB_OFFLINE", "1");
        for (k, v) in vars {
            if let Some(v) = v {
                std::env::set_var(k, v);
            }
        }
    }
    let out = f();
    unsafe {
        for (k, v) in saved {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
    out
}

#[test]
fn hf_hub_cache_beats_hf_home_and_hf_home_reads_its_hub_folder() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    cache_with_stories(elsewhere.path());
    let model = id("org/stories");
    // HF_HOME/hub is empty; HF_HUB_CACHE has the model and must win.
    let found =
        with_env(&[("HF_HOME", Some(home.path())), ("HF_HUB_CACHE", Some(elsewhere.path()))], || resolve(&model));
    assert!(found.unwrap().starts_with(elsewhere.path()));
    let err = with_env(&[("HF_HOME", Some(home.path()))], || resolve(&model)).unwrap_err().to_string();
    assert!(err.contains(&home.path().join("hub").display().to_string()), "{err}");
    // And HF_HOME alone finds a model under HF_HOME/hub.
    let home2 = tempfile::tempdir().unwrap();
    cache_with_stories(&home2.path().join("hub"));
    assert!(with_env(&[("HF_HOME", Some(home2.path()))], || resolve(&model)).is_ok());
}

#[test]
fn token_comes_from_hf_token_else_the_token_file_under_hf_home() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_fromfile\n").unwrap();
    let s = with_env(&[("HF_HOME", Some(home.path()))], HubSettings::from_env).unwrap();
    assert_eq!(s.token.as_deref(), Some("hf_fromfile"));
    assert!(s.offline);
    assert_eq!(s.cache_dir, home.path().join("hub"));
    let s = with_env(&[("HF_HOME", Some(home.path())), ("HF_TOKEN", Some(Path::new("hf_env")))], HubSettings::from_env)
        .unwrap();
    assert_eq!(s.token.as_deref(), Some("hf_env"));
}
