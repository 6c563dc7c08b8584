//! Building prompt token ids: raw text (the tokenizer adds BOS if the model wants it) or chat
//! messages through the model's template (the template writes every special token itself).

use std::path::Path;

use anyhow::{Context, Result};
use kvault_engine::engine::EngineInfo;
use kvault_models::chat_template::{ChatMessage, ChatTemplate};

pub fn encode_text(info: &EngineInfo, text: &str) -> Result<Vec<u32>> {
    info.tokenizer.encode(text, true)
}

/// Renders `messages` with the model's template (or `override_template`) and tokenizes it.
pub fn encode_chat(info: &EngineInfo, template: Option<&ChatTemplate>, messages: &[ChatMessage]) -> Result<Vec<u32>> {
    let template = template.or(info.chat_template.as_ref()).context(
        "this model has no chat template (none in tokenizer_config.json, chat_template.jinja or the GGUF); \
         pass one with --chat-template FILE",
    )?;
    let text = template.render(messages, true)?;
    info.tokenizer.encode(&text, false)
}

/// Loads a template file given with `--chat-template`.
pub fn load_template_file(path: &Path, info: &EngineInfo) -> Result<ChatTemplate> {
    let source = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read chat template", path.display()))?;
    ChatTemplate::new(&source, info.special_tokens.bos_token.clone(), info.special_tokens.eos_token.clone())
        .with_context(|| format!("{}: invalid chat template", path.display()))
}

pub fn message(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.to_string(), content: Some(content.to_string()), ..Default::default() }
}
