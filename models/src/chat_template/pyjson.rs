//! The `tojson` filter as HF's chat templates see it: Python's `json.dumps` layout (`", "` and
//! `": "` separators, `indent=` for pretty output, `sort_keys=`), non-ASCII kept as is, and no
//! HTML escaping. minijinja's built-in `tojson` is HTML-safe and compact, which changes the
//! prompt text (and so the ids) whenever a template serializes tool schemas.
//!
//! Must not know: anything about chat messages.

use std::io;

use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind};
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

/// `json.dumps(x)` without indent: like compact JSON, but with a space after `,` and `:`.
struct PythonCompact;

impl Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

fn serialize_with<F: Formatter>(value: &impl Serialize, formatter: F) -> Result<String, Error> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut ser)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: cannot serialize: {e}")))?;
    String::from_utf8(out).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))
}

/// Recursively sorts map keys (Python's `sort_keys=True`).
fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

pub(super) fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    // Python's default; accepted so templates written for HF do not fail on it.
    let _ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v.clone()).map_err(|_| {
            Error::new(ErrorKind::InvalidOperation, format!("tojson: indent must be an integer, got {v}"))
        })?),
    };
    let text = if sort_keys {
        let json = serde_json::to_value(value)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: cannot serialize: {e}")))?;
        render(&sorted(json), indent)?
    } else {
        render(value, indent)?
    };
    Ok(Value::from_safe_string(text))
}

fn render(value: &impl Serialize, indent: Option<usize>) -> Result<String, Error> {
    match indent {
        None => serialize_with(value, PythonCompact),
        Some(n) => {
            let pad = " ".repeat(n);
            serialize_with(value, PrettyFormatter::with_indent(pad.as_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_template(src: &str, ctx: serde_json::Value) -> String {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson);
        env.render_str(src, ctx).unwrap()
    }

    #[test]
    fn matches_python_json_dumps_layout() {
        let ctx = serde_json::json!({"x": {"a": [1, 2.5, "<é>"], "b": null}});
        assert_eq!(render_template("{{ x | tojson }}", ctx.clone()), r#"{"a": [1, 2.5, "<é>"], "b": null}"#);
        assert_eq!(
            render_template("{{ x | tojson(indent=2) }}", ctx),
            "{\n  \"a\": [\n    1,\n    2.5,\n    \"<é>\"\n  ],\n  \"b\": null\n}"
        );
    }

    #[test]
    fn sort_keys_orders_nested_maps() {
        let ctx = serde_json::json!({"x": [{"b": 1, "a": {"d": 1, "c": 2}}]});
        assert_eq!(render_template("{{ x | tojson(sort_keys=true) }}", ctx), r#"[{"a": {"c": 2, "d": 1}, "b": 1}]"#);
    }
}
