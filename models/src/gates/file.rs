//! The gate file: safetensors with, per layer `l`,
//! `model.layers.{l}.self_attn.retention_gate.{linear1.weight, linear1.bias, linear2.weight, bias}`
//! (the names of the official TRIM-KV checkpoints once converted from `.pth`, so those load too),
//! f16 or f32 or bf16, plus string metadata (provenance: command, data, steps, losses).
//!
//! The loader matches names loosely on purpose: any prefix before `layers.{l}.` and any module
//! path before the four parameter names, because converted checkpoints differ in their prefix
//! (`model.`, `base_model.model.`, none).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;

use super::gate::{LayerGate, RetentionGates};

/// The documented name of a model's gates: `trimkv_gates.safetensors` in the model's folder
/// (for a GGUF file, the folder that holds it).
pub const GATES_FILE_NAME: &str = "trimkv_gates.safetensors";

/// Where `model`'s gates would be if they sit beside it.
pub fn gates_beside_model(model: &Path) -> PathBuf {
    crate::source::beside_model(model, GATES_FILE_NAME)
}

fn canonical(layer: usize, param: &str) -> String {
    format!("model.layers.{layer}.self_attn.retention_gate.{param}")
}

const PARAMS: [&str; 4] = ["linear1.weight", "linear1.bias", "linear2.weight", "bias"];

/// Which (layer, parameter) a tensor name holds, if it is a gate parameter.
fn parse_name(name: &str) -> Option<(usize, usize)> {
    let at = name.find("layers.")?;
    let rest = &name[at + "layers.".len()..];
    let digits = rest.find('.')?;
    let layer: usize = rest[..digits].parse().ok()?;
    let tail = &rest[digits..];
    // `linear1.bias` also ends with `bias`: test the longer names first.
    let param = PARAMS.iter().position(|p| tail.ends_with(&format!(".{p}")) && (*p != "bias" || !tail.ends_with("linear1.bias")))?;
    Some((layer, param))
}

/// Gates and the file's metadata.
pub struct GateFile {
    pub gates: RetentionGates,
    pub metadata: BTreeMap<String, String>,
}

/// Reads gates from safetensors bytes; `origin` names the file in errors.
pub fn read_gates(bytes: &[u8], origin: &str, device: &Device) -> Result<GateFile> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("{origin}: not a valid safetensors file ({e})"))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("{origin}: not a valid safetensors file ({e})"))?;
    let mut found: BTreeMap<usize, [Option<Tensor>; 4]> = BTreeMap::new();
    for (name, view) in st.tensors() {
        if name.starts_with(OPTIMIZER_PREFIX) {
            continue;
        }
        let Some((layer, param)) = parse_name(&name) else { continue };
        let t = to_tensor(&view, device).with_context(|| format!("{origin}: tensor {name}"))?;
        found.entry(layer).or_default()[param] = Some(t);
    }
    if found.is_empty() {
        bail!("{origin}: holds no retention-gate tensors (expected names like {})", canonical(0, PARAMS[0]));
    }
    let num_layers = found.keys().max().map_or(0, |l| l + 1);
    let mut layers = Vec::with_capacity(num_layers);
    for l in 0..num_layers {
        let Some(params) = found.remove(&l) else { bail!("{origin}: no gate for layer {l}") };
        let [w1, b1, w2, bias] = params;
        let missing = |i: usize| anyhow::anyhow!("{origin}: layer {l} has no {}", PARAMS[i]);
        layers.push(LayerGate {
            w1: w1.ok_or_else(|| missing(0))?,
            b1: b1.ok_or_else(|| missing(1))?,
            w2: w2.ok_or_else(|| missing(2))?,
            bias: bias.ok_or_else(|| missing(3))?,
        });
    }
    let gates = RetentionGates { layers };
    // Shapes must agree among themselves (the model check comes later, against its config).
    let g0 = &gates.layers[0];
    let (hidden, d_model, heads) = (g0.hidden(), g0.w1.dim(1).unwrap_or(0), g0.bias.dim(0).unwrap_or(0));
    gates.check_fits(num_layers, d_model, heads).with_context(|| format!("{origin}: inconsistent gate shapes (hidden {hidden})"))?;
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok(GateFile { gates, metadata })
}

/// Reads a gate file from disk.
pub fn load_gates(path: &Path, device: &Device) -> Result<GateFile> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the gate file", path.display()))?;
    read_gates(&bytes, &path.display().to_string(), device)
}

fn to_tensor(view: &TensorView<'_>, device: &Device) -> Result<Tensor> {
    let dtype = match view.dtype() {
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        other => bail!("dtype {other:?} (expected f32, f16 or bf16)"),
    };
    let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)?;
    Ok(t.to_dtype(DType::F32)?)
}

/// The gate tensors under their canonical names, layer by layer.
pub fn named_tensors(gates: &RetentionGates) -> Vec<(String, Tensor)> {
    gates
        .layers
        .iter()
        .enumerate()
        .flat_map(|(l, g)| PARAMS.iter().zip([&g.w1, &g.b1, &g.w2, &g.bias]).map(move |(p, t)| (canonical(l, p), t.clone())))
        .collect()
}

/// Writes `gates` as f16 with `metadata`.
pub fn save_gates(gates: &RetentionGates, metadata: &BTreeMap<String, String>, path: &Path) -> Result<()> {
    save_tensors(&named_tensors(gates), DType::F16, metadata, path)
}

/// Writes named tensors in `dtype` (f16 or f32) with string metadata; atomically (a temporary
/// file renamed into place), so a crash mid-write never leaves a truncated file under the final
/// name (checkpoints are rewritten while training runs).
pub fn save_tensors(named: &[(String, Tensor)], dtype: DType, metadata: &BTreeMap<String, String>, path: &Path) -> Result<()> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(named.len());
    for (name, t) in named {
        let flat = t.flatten_all()?;
        let bytes: Vec<u8> = match dtype {
            DType::F16 => flat.to_dtype(DType::F16)?.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::F32 => flat.to_dtype(DType::F32)?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
            other => bail!("cannot write gate tensors as {other:?} (f16 or f32)"),
        };
        buffers.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let st_dtype = if dtype == DType::F16 { StDtype::F16 } else { StDtype::F32 };
    let views = buffers
        .iter()
        .map(|(n, shape, b)| Ok((n.clone(), TensorView::new(st_dtype, shape.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let md: HashMap<String, String> = metadata.clone().into_iter().collect();
    let tmp = path.with_extension("tmp");
    safetensors::serialize_to_file(views, Some(md), &tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// Every tensor of a safetensors file by name (f32), with its metadata: for checkpoints, which
/// also hold optimizer state.
pub fn read_all(path: &Path, device: &Device) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("{origin}: cannot read"))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow::anyhow!("{origin}: not a valid safetensors file ({e})"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("{origin}: not a valid safetensors file ({e})"))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = to_tensor(&view, device).with_context(|| format!("{origin}: tensor {name}"))?;
        out.insert(name, t);
    }
    Ok((out, header.metadata().clone().unwrap_or_default().into_iter().collect()))
}

/// Prefix of a checkpoint's optimizer tensors, which the gate loader skips.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_and_prefixed_names_map_to_the_four_parameters() {
        assert_eq!(parse_name("model.layers.3.self_attn.retention_gate.linear1.weight"), Some((3, 0)));
        assert_eq!(parse_name("base_model.model.layers.12.self_attn.retention_gate.linear1.bias"), Some((12, 1)));
        assert_eq!(parse_name("layers.0.retention_gate.linear2.weight"), Some((0, 2)));
        assert_eq!(parse_name("model.layers.7.self_attn.retention_gate.bias"), Some((7, 3)));
        assert_eq!(parse_name("model.embed_tokens.weight"), None);
    }

    #[test]
    fn save_then_load_round_trips_shapes_values_and_metadata() {
        let dev = Device::Cpu;
        let mk = |shape: &[usize], v: f32| Tensor::full(v, shape, &dev).unwrap();
        let gates = RetentionGates {
            layers: (0..2).map(|l| LayerGate { w1: mk(&[4, 6], 0.5), b1: mk(&[4], -1.0), w2: mk(&[2, 4], 0.25), bias: mk(&[2], 18.0 + l as f32) }).collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.safetensors");
        let md = BTreeMap::from([("steps".to_string(), "20".to_string())]);
        save_gates(&gates, &md, &path).unwrap();
        let back = load_gates(&path, &dev).unwrap();
        assert_eq!(back.metadata.get("steps").map(String::as_str), Some("20"));
        assert_eq!(back.gates.num_layers(), 2);
        assert_eq!(back.gates.hidden(), 4);
        assert_eq!(back.gates.layers[1].bias.to_vec1::<f32>().unwrap(), vec![19.0, 19.0]);
        back.gates.check_fits(2, 6, 2).unwrap();
        let err = back.gates.check_fits(2, 8, 2).unwrap_err().to_string();
        assert!(err.contains("another model") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn a_truncated_file_is_a_one_line_error() {
        let err = read_gates(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "g.safetensors", &Device::Cpu).err().unwrap().to_string();
        assert!(err.starts_with("g.safetensors: not a valid safetensors file") && !err.contains('\n'), "{err}");
    }
}
