//! The roles file: round trip of every field, and every bad input as a one-line error.

use super::*;

fn roles() -> HeadRolesFile {
    // 3 layers × 2 KV heads: layer 0 retrieval, one more retrieval head in layer 2.
    let mut f = HeadRolesFile::new(3, 2, vec![true, true, false, false, false, true]).unwrap();
    let t = |v: f32| Tensor::full(v, (3, 2), &Device::Cpu).unwrap();
    f.kuma = Some((t(0.5), t(2.0)));
    f.score = Some(t(0.25));
    f.metadata.insert("method".into(), "hardkuma".into());
    f
}

fn one_line(e: anyhow::Error) -> String {
    let s = format!("{e:#}");
    assert!(!s.contains('\n'), "not one line: {s}");
    s
}

#[test]
fn save_then_load_round_trips_roles_tensors_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.safetensors");
    save_head_roles(&roles(), &path).unwrap();
    let back = load_head_roles(&path).unwrap();
    assert_eq!((back.num_layers, back.num_kv_heads), (3, 2));
    assert_eq!(back.retrieval, roles().retrieval);
    assert_eq!(back.roles_parts(), (3, 2, roles().retrieval));
    assert!(back.is_retrieval(2, 1) && !back.is_retrieval(1, 0));
    assert_eq!(back.layer(2), &[false, true]);
    assert_eq!((back.num_retrieval(), back.density()), (3, 0.25));
    let (a, b) = back.kuma.clone().unwrap();
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.5; 6]);
    assert_eq!(b.dims(), &[3, 2]);
    assert_eq!(back.score.clone().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.25; 6]);
    assert_eq!(back.metadata.get("method").map(String::as_str), Some("hardkuma"));
    assert_eq!(back.metadata.get("format").map(String::as_str), Some(FORMAT));
    back.check_fits(3, 2).unwrap();
    assert_eq!(head_roles_beside_model(Path::new("/m/model.gguf")), Path::new("/m").join(HEAD_ROLES_FILE_NAME));
}

#[test]
fn roles_of_another_model_name_what_differs() {
    let err = one_line(roles().check_fits(30, 3).unwrap_err());
    assert!(err.contains("3 layers × 2 KV heads") && err.contains("30 layers × 3 KV heads") && err.contains("another model"), "{err}");
}

#[test]
fn a_sparse_head_in_layer_0_is_refused_on_construction_load_and_save() {
    let err = one_line(HeadRolesFile::new(2, 2, vec![true, false, true, true]).unwrap_err());
    assert!(err.contains("layer 0 must be all retrieval") && err.contains("KV head(s) 1"), "{err}");
    let mut bad = roles();
    bad.retrieval[0] = false;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    assert!(one_line(save_head_roles(&bad, &path).unwrap_err()).contains("layer 0 must be all retrieval"));
    // Written by hand (bypassing the checks), then loaded.
    let bytes = raw(&[("retrieval", StDtype::U8, vec![2, 2], vec![0, 1, 1, 1])]);
    let err = one_line(read_head_roles(&bytes, "x.safetensors").unwrap_err());
    assert!(err.starts_with("x.safetensors: layer 0 must be all retrieval"), "{err}");
}

/// A safetensors file with arbitrary tensors.
fn raw(tensors: &[(&str, StDtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = tensors.iter().map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn corrupt_files_and_wrong_shapes_are_one_line_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":".to_vec(), "not a valid safetensors file"),
        (raw(&[("weights", StDtype::F32, vec![1], vec![0; 4])]), "no `retrieval` tensor"),
        (raw(&[("retrieval", StDtype::F32, vec![1, 1], vec![0; 4])]), "expected U8 [layers, kv_heads]"),
        (raw(&[("retrieval", StDtype::U8, vec![4], vec![1; 4])]), "expected U8 [layers, kv_heads]"),
        (raw(&[("retrieval", StDtype::U8, vec![2, 2], vec![1, 1, 3, 0])]), "holds 3"),
        (raw(&[("retrieval", StDtype::U8, vec![2, 2], vec![1; 4]), ("kuma_a", StDtype::F32, vec![2, 2], vec![0; 16])]), "only one of"),
        (raw(&[("retrieval", StDtype::U8, vec![2, 2], vec![1; 4]), ("score", StDtype::F32, vec![1, 4], vec![0; 16])]), "`score` has shape [1, 4]"),
        (raw(&[("retrieval", StDtype::U8, vec![2, 2], vec![1; 4]), ("score", StDtype::F16, vec![2, 2], vec![0; 8])]), "expected F32"),
    ];
    for (bytes, want) in cases {
        let err = one_line(read_head_roles(&bytes, "r.safetensors").unwrap_err());
        assert!(err.starts_with("r.safetensors: ") && err.contains(want), "{err} (wanted {want})");
    }
    let err = one_line(load_head_roles(Path::new("/definitely/not/here.safetensors")).unwrap_err());
    assert!(err.contains("cannot read the head roles file"), "{err}");
}
