//! Typed reads of GGUF metadata values, tolerant of the integer width a converter chose (the
//! same key is u32 in one file and i32 or u64 in another) and strict about everything else.
//!
//! Owns: turning `gguf_file::Value`s into Rust values with errors that name the key.
//! Must not know: what any key means.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::quantized::gguf_file::Value;

pub(crate) type Metadata = HashMap<String, Value>;

fn int_of(v: &Value) -> Option<i128> {
    Some(match v {
        Value::U8(x) => *x as i128,
        Value::I8(x) => *x as i128,
        Value::U16(x) => *x as i128,
        Value::I16(x) => *x as i128,
        Value::U32(x) => *x as i128,
        Value::I32(x) => *x as i128,
        Value::U64(x) => *x as i128,
        Value::I64(x) => *x as i128,
        _ => return None,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Bool(_) => "a bool",
        Value::F32(_) | Value::F64(_) => "a float",
        _ => "an integer",
    }
}

pub(crate) fn opt_str<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a str>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!("GGUF metadata {key}: expected a string, found {}", kind(v)),
    }
}

pub(crate) fn req_str<'a>(md: &'a Metadata, key: &str) -> Result<&'a str> {
    opt_str(md, key)?.ok_or_else(|| anyhow::anyhow!("GGUF metadata has no {key}"))
}

pub(crate) fn opt_bool(md: &Metadata, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        // Some converters wrote flags as 0/1 integers.
        Some(v) => match int_of(v) {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => bail!("GGUF metadata {key}: expected a bool, found {}", kind(v)),
        },
    }
}

/// A token id: a non-negative integer below 2^32. Negative ids (some converters write -1 for
/// "none") read as absent.
pub(crate) fn opt_id(md: &Metadata, key: &str) -> Result<Option<u32>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => match int_of(v) {
            Some(x) if x < 0 => Ok(None),
            Some(x) => u32::try_from(x)
                .map(Some)
                .map_err(|_| anyhow::anyhow!("GGUF metadata {key}: id {x} does not fit in u32")),
            None => bail!("GGUF metadata {key}: expected an integer token id, found {}", kind(v)),
        },
    }
}

fn opt_array<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a [Value]>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => bail!("GGUF metadata {key}: expected an array, found {}", kind(v)),
    }
}

pub(crate) fn opt_str_array<'a>(md: &'a Metadata, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(arr) = opt_array(md, key)? else { return Ok(None) };
    arr.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            v => bail!("GGUF metadata {key}[{i}]: expected a string, found {}", kind(v)),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

pub(crate) fn opt_int_array(md: &Metadata, key: &str) -> Result<Option<Vec<i64>>> {
    let Some(arr) = opt_array(md, key)? else { return Ok(None) };
    arr.iter()
        .enumerate()
        .map(|(i, v)| match int_of(v).and_then(|x| i64::try_from(x).ok()) {
            Some(x) => Ok(x),
            None => bail!("GGUF metadata {key}[{i}]: expected an integer, found {}", kind(v)),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

pub(crate) fn opt_f32_array(md: &Metadata, key: &str) -> Result<Option<Vec<f32>>> {
    let Some(arr) = opt_array(md, key)? else { return Ok(None) };
    arr.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => bail!("GGUF metadata {key}[{i}]: expected a float, found {}", kind(v)),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_any_integer_width_and_treat_negative_as_absent() {
        let mut md = Metadata::new();
        md.insert("a".into(), Value::I32(7));
        md.insert("b".into(), Value::U64(9));
        md.insert("c".into(), Value::I32(-1));
        md.insert("d".into(), Value::String("x".into()));
        assert_eq!(opt_id(&md, "a").unwrap(), Some(7));
        assert_eq!(opt_id(&md, "b").unwrap(), Some(9));
        assert_eq!(opt_id(&md, "c").unwrap(), None);
        assert_eq!(opt_id(&md, "missing").unwrap(), None);
        let err = opt_id(&md, "d").unwrap_err().to_string();
        assert!(err.contains("GGUF metadata d") && err.contains("string"), "{err}");
    }

    #[test]
    fn array_errors_name_the_key_and_index() {
        let mut md = Metadata::new();
        md.insert("t".into(), Value::Array(vec![Value::String("a".into()), Value::U8(1)]));
        let err = opt_str_array(&md, "t").unwrap_err().to_string();
        assert!(err.contains("t[1]"), "{err}");
        assert!(req_str(&md, "nope").unwrap_err().to_string().contains("nope"));
    }
}
