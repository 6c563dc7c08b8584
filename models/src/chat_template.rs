//! Chat templates: HF Jinja templates rendered with minijinja the way transformers'
//! `apply_chat_template` renders them, so a prompt built here tokenizes to the ids the model
//! was trained on.
//!
//! Environment parity with transformers' `_compile_jinja_template`: `trim_blocks` and
//! `lstrip_blocks` on, a single trailing newline of the source dropped (Jinja's default
//! `keep_trailing_newline=False`), Python string/dict methods (minijinja-contrib pycompat),
//! `raise_exception(msg)`, `strftime_now(fmt)` and a Python-style `tojson`. The template is
//! compiled when loaded, so a syntax error surfaces then, not at the first request.
//!
//! Owns: finding a model's template, and messages → prompt text.
//! Must not know: tokenization or which tokens stop generation.

mod pyjson;
mod strftime;

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

const TEMPLATE_NAME: &str = "chat_template";

/// One chat message, in OpenAI's shape. Optional fields the template may use are passed
/// through; absent ones are left undefined.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// `None` (e.g. an assistant turn that only calls tools) renders as an empty string: HF
    /// templates written as `'...' + message['content']` would otherwise fail, and templates
    /// that test `if message.content` treat both the same.
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: Some(content.into()), ..Default::default() }
    }

    fn to_template_value(&self) -> Json {
        let mut map = Map::new();
        map.insert("role".into(), Json::String(self.role.clone()));
        map.insert("content".into(), Json::String(self.content.clone().unwrap_or_default()));
        if let Some(calls) = &self.tool_calls {
            map.insert("tool_calls".into(), calls.clone());
        }
        if let Some(name) = &self.name {
            map.insert("name".into(), Json::String(name.clone()));
        }
        if let Some(id) = &self.tool_call_id {
            map.insert("tool_call_id".into(), Json::String(id.clone()));
        }
        Json::Object(map)
    }
}

/// A compiled chat template. Cheap to clone (the compiled form is shared).
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("bos_token", &self.bos_token).field("eos_token", &self.eos_token).finish()
    }
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("template raised an exception: {message}")))
}

fn strftime_now(format: String) -> Result<String, Error> {
    strftime::now(&format).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// minijinja's error text plus where it happened, on one line.
fn one_line(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg.replace('\n', " ")
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are the strings templates see as
    /// `bos_token`/`eos_token`.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", pyjson::tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| anyhow!("chat template does not compile: {}", one_line(&e)))?;
        Ok(Self { env: Arc::new(env), bos_token, eos_token })
    }

    /// The model's template: `chat_template.jinja`, else `chat_template.json`, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates of
    /// which `default` is used). `Ok(None)` when the model has none.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_if_present(&config_path)?;
        let token = |key: &str| config.as_ref().and_then(|c| token_string(c.get(key)?));
        let (bos, eos) = (token("bos_token"), token("eos_token"));

        let jinja_path = dir.join("chat_template.jinja");
        if jinja_path.is_file() {
            let source = std::fs::read_to_string(&jinja_path)
                .with_context(|| format!("{}: cannot read", jinja_path.display()))?;
            return Self::new(&source, bos, eos).with_context(|| jinja_path.display().to_string()).map(Some);
        }
        let json_path = dir.join("chat_template.json");
        if let Some(json) = read_json_if_present(&json_path)? {
            if let Some(source) = pick_template(json.get("chat_template"), &json_path)? {
                return Self::new(&source, bos, eos).with_context(|| json_path.display().to_string()).map(Some);
            }
        }
        match config.as_ref().map(|c| pick_template(c.get("chat_template"), &config_path)).transpose()?.flatten() {
            Some(source) => Self::new(&source, bos, eos).with_context(|| config_path.display().to_string()).map(Some),
            None => Ok(None),
        }
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages`; `add_generation_prompt` appends the opening of an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, None, None)
    }

    /// As [`render`](Self::render), with OpenAI-style `tools` (a JSON array) and `extra`
    /// template variables (a JSON object, e.g. `{"enable_thinking": false}`); `extra` may
    /// override `bos_token`/`eos_token` but not the messages.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&Json>,
        extra: Option<&Json>,
    ) -> Result<String> {
        let mut ctx = Map::new();
        ctx.insert("bos_token".into(), self.bos_token.clone().map_or(Json::Null, Json::String));
        ctx.insert("eos_token".into(), self.eos_token.clone().map_or(Json::Null, Json::String));
        match extra {
            None | Some(Json::Null) => {}
            Some(Json::Object(map)) => ctx.extend(map.iter().map(|(k, v)| (k.clone(), v.clone()))),
            Some(other) => bail!("chat template variables must be a JSON object, got {other}"),
        }
        ctx.insert("messages".into(), Json::Array(messages.iter().map(ChatMessage::to_template_value).collect()));
        ctx.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        // HF passes tools=None when there are none: defined, but none.
        ctx.insert("tools".into(), tools.cloned().unwrap_or(Json::Null));
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| anyhow!("chat template: {}", one_line(&e)))?;
        template.render(Json::Object(ctx)).map_err(|e| anyhow!("chat template cannot render: {}", one_line(&e)))
    }
}

fn read_json_if_present(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).map(Some).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// `"<s>"` or `{"content": "<s>", ...}` (a serialized AddedToken).
pub(crate) fn token_string(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(m) => m.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

fn pick_template(v: Option<&Json>, file: &Path) -> Result<Option<String>> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let named: Vec<(&str, &str)> =
                list.iter().filter_map(|t| Some((t.get("name")?.as_str()?, t.get("template")?.as_str()?))).collect();
            match named.iter().find(|(name, _)| *name == "default") {
                Some((_, src)) => Ok(Some(src.to_string())),
                None => {
                    let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
                    bail!(
                        "{}: chat_template lists no template named `default` (found: {})",
                        file.display(),
                        names.join(", ")
                    )
                }
            }
        }
        Some(_) => bail!("{}: chat_template must be a string or a list of {{name, template}}", file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn trim_and_lstrip_blocks_match_transformers() {
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src, None, None).unwrap();
        // Block lines vanish entirely; the template's final newline is dropped.
        assert_eq!(t.render(&[ChatMessage::new("user", "hi")], false).unwrap(), "U:hi\n");
    }

    #[test]
    fn assistant_message_without_content_renders() {
        let t = ChatTemplate::new(CHATML, None, None).unwrap();
        let msg = ChatMessage {
            role: "assistant".into(),
            tool_calls: Some(serde_json::json!([{"function": {"name": "f", "arguments": "{}"}}])),
            ..Default::default()
        };
        assert_eq!(t.render(&[msg], false).unwrap(), "<|im_start|>assistant\n<|im_end|>\n");
    }

    #[test]
    fn raise_exception_becomes_a_one_line_error_with_the_message() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let err = format!("{:#}", t.render(&[ChatMessage::new("system", "s")], false).unwrap_err());
        assert!(err.contains("Conversation must start with user"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(t.render(&[ChatMessage::new("user", "u")], false).unwrap(), "ok");
    }

    #[test]
    fn syntax_error_and_undefined_function_are_errors() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err().to_string();
        assert!(err.contains("does not compile") && !err.contains('\n'), "{err}");
        let t = ChatTemplate::new("{{ no_such_function() }}", None, None).unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("cannot render") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn python_string_methods_and_bos_token_are_available() {
        let src = "{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}{% endfor %}";
        let t = ChatTemplate::new(src, Some("<s>".into()), None).unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "  hi ")], false).unwrap(), "<s>HI");
    }

    #[test]
    fn extra_variables_and_tools_reach_the_template() {
        let src = "{% if tools %}{{ tools | tojson }}|{% endif %}{{ enable_thinking }}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let tools = serde_json::json!([{"type": "function"}]);
        let extra = serde_json::json!({"enable_thinking": false});
        // Booleans print the Python way, as they do under transformers.
        assert_eq!(t.render_with(&[], false, Some(&tools), Some(&extra)).unwrap(), r#"[{"type": "function"}]|False"#);
        assert_eq!(t.render_with(&[], false, None, Some(&extra)).unwrap(), "False");
        assert!(t.render_with(&[], false, None, Some(&serde_json::json!([1]))).is_err());
    }

    #[test]
    fn model_dir_prefers_jinja_file_and_reads_named_default() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::from_model_dir(dir.path()).unwrap().is_none());
        let config = serde_json::json!({
            "bos_token": {"content": "<s>"}, "eos_token": "</s>",
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ eos_token }}"}]
        });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "D</s>");
        assert_eq!(t.bos_token(), Some("<s>"));
        std::fs::write(dir.path().join("chat_template.jinja"), "J{{ bos_token }}\n").unwrap();
        let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "J<s>");
    }

    #[test]
    fn malformed_tokenizer_config_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), "{oops").unwrap();
        let err = format!("{:#}", ChatTemplate::from_model_dir(dir.path()).unwrap_err());
        assert!(err.contains("tokenizer_config.json") && err.contains("invalid JSON"), "{err}");
    }
}
