//! What `--model` names: the embedded default model, a local HF folder, a local GGUF file, or
//! an hf-hub repository (resolved to a local snapshot folder first).
//!
//! Owns: deciding which of those a string means, with errors that say what was tried.
//! Must not know: how any of them is loaded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::hub;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// stories260K, compiled into the binary: works offline on a fresh machine.
    Embedded,
    /// An HF-style folder: config.json, safetensors weights, tokenizer files.
    Folder(PathBuf),
    /// A GGUF file; tokenizer.json / tokenizer_config.json / chat_template.jinja beside it are
    /// used when present, otherwise everything comes from the GGUF metadata.
    Gguf(PathBuf),
}

impl ModelSource {
    /// Interprets `--model`. `None` is the embedded default.
    pub fn parse(spec: Option<&str>) -> Result<Self> {
        let Some(spec) = spec else { return Ok(ModelSource::Embedded) };
        if spec.is_empty() {
            bail!("--model: empty model name");
        }
        if spec == crate::embedded::NAME {
            return Ok(ModelSource::Embedded);
        }
        let path = Path::new(spec);
        if path.exists() {
            return Self::from_local(path);
        }
        if hub::looks_like_hub_id(spec) {
            let id: hub::HubModelId = spec.parse()?;
            let dir = hub::resolve(&id)?;
            return match &id.file {
                Some(file) => Ok(ModelSource::Gguf(dir.join(file))),
                None => Self::from_local(&dir),
            };
        }
        bail!("--model {spec}: no such file or directory (and not a Hugging Face id of the form org/name)")
    }

    fn from_local(path: &Path) -> Result<Self> {
        if path.is_file() {
            if path.extension().is_some_and(|e| e == "gguf") {
                return Ok(ModelSource::Gguf(path.to_path_buf()));
            }
            bail!("{}: not a model (expected a .gguf file or a model folder)", path.display());
        }
        // A folder with safetensors weights is an HF folder; one holding a GGUF (possibly with
        // config.json and tokenizer files beside it) is a GGUF model with side files.
        let has_safetensors =
            path.join("model.safetensors").is_file() || path.join("model.safetensors.index.json").is_file();
        if has_safetensors {
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        let ggufs = gguf_files_in(path)?;
        if ggufs.is_empty() && path.join("config.json").is_file() {
            // Lets the loader say which weight file is missing.
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        match ggufs.as_slice() {
            [one] => Ok(ModelSource::Gguf(one.clone())),
            [] => bail!("{}: no model here (no config.json with safetensors weights, no .gguf file)", path.display()),
            many => bail!(
                "{}: {} .gguf files in this folder; name one of them with --model",
                path.display(),
                many.len()
            ),
        }
    }

    /// The folder holding tokenizer/config side files, if any.
    pub fn side_files_dir(&self) -> Option<&Path> {
        match self {
            ModelSource::Embedded => None,
            ModelSource::Folder(dir) => Some(dir),
            ModelSource::Gguf(file) => file.parent(),
        }
    }
}

fn gguf_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list folder", dir.display()))? {
        let p = entry?.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "gguf") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// `name` in `model`'s folder (for a GGUF file, the folder that holds it): where the side files a
/// model's KV policies learn (retention gates, head roles) are looked for.
pub fn beside_model(model: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dir = if model.is_dir() {
        model
    } else {
        model.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."))
    };
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_model_means_the_embedded_default() {
        assert_eq!(ModelSource::parse(None).unwrap(), ModelSource::Embedded);
    }

    #[test]
    fn missing_path_that_is_not_a_hub_id_is_a_clear_error() {
        let err = ModelSource::parse(Some("/definitely/not/here")).unwrap_err().to_string();
        assert!(err.contains("/definitely/not/here") && err.contains("no such file"), "{err}");
    }

    #[test]
    fn folder_with_one_gguf_resolves_to_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.gguf"), b"x").unwrap();
        assert_eq!(
            ModelSource::parse(Some(dir.path().to_str().unwrap())).unwrap(),
            ModelSource::Gguf(dir.path().join("m.gguf"))
        );
    }

    #[test]
    fn folder_with_config_and_a_gguf_but_no_safetensors_is_a_gguf_model() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("m.gguf"), b"x").unwrap();
        assert_eq!(
            ModelSource::parse(Some(dir.path().to_str().unwrap())).unwrap(),
            ModelSource::Gguf(dir.path().join("m.gguf"))
        );
    }

    #[test]
    fn folder_without_model_files_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelSource::parse(Some(dir.path().to_str().unwrap())).unwrap_err().to_string();
        assert!(err.contains("no model here"), "{err}");
    }
}

