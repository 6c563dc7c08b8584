//! Chat templates render exactly what transformers' `apply_chat_template` renders. Expected
//! strings for the small Llama-2/Llama-3/Qwen-style templates in tok_templates/ were produced
//! by Jinja2 with transformers' environment (trim_blocks, lstrip_blocks, its tojson).

mod tok_support;

use kvault_models::chat_template::{ChatMessage, ChatTemplate};
use kvault_models::tokenizer::Tokenizer;
use tok_support::*;

fn template(name: &str) -> ChatTemplate {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tok_templates/").to_string() + name;
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    ChatTemplate::new(&src, Some("<s>".into()), Some("</s>".into())).unwrap()
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", " Hi there "),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Weather?"),
    ]
}

#[test]
fn smollm_template_renders_reference_chat_prompt_and_its_ids() {
    let dir = model_dir("smollm2-135m-instruct");
    let reference = reference("smollm2-135m-instruct");
    let p = reference["prompts"].as_array().unwrap().iter().find(|p| p["name"] == "chat_2plus2").expect("chat_2plus2");
    let messages: Vec<ChatMessage> = serde_json::from_value(p["messages"].clone()).unwrap();
    let add_generation_prompt = p["add_generation_prompt"].as_bool().unwrap();
    let tmpl = ChatTemplate::from_model_dir(&dir).unwrap().expect("SmolLM ships a template");
    let prompt = tmpl.render(&messages, add_generation_prompt).unwrap();
    assert_eq!(prompt, p["prompt"].as_str().unwrap());
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.encode(&prompt, false).unwrap(), ids(&p["input_ids"]));

    // The GGUF's embedded template is the same one.
    let md = smollm_gguf_metadata();
    let Some(candle_core::quantized::gguf_file::Value::String(src)) = md.get("tokenizer.chat_template") else {
        panic!("the SmolLM GGUF has a tokenizer.chat_template")
    };
    let from_gguf = ChatTemplate::new(src, None, Some("<|im_end|>".into())).unwrap();
    assert_eq!(from_gguf.render(&messages, add_generation_prompt).unwrap(), prompt);
}

#[test]
fn smollm_template_adds_default_system_prompt_without_one() {
    let tmpl = ChatTemplate::from_model_dir(&model_dir("smollm2-135m-instruct")).unwrap().unwrap();
    let out = tmpl.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn llama2_style_template_merges_system_and_enforces_alternation() {
    let t = template("llama2.jinja");
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi there [/INST] Hello! </s><s>[INST] Weather? [/INST]"
    );
    let bad = vec![ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    let err = t.render(&bad, true).unwrap_err().to_string();
    assert!(err.contains("Conversation roles must alternate"), "{err}");
}

#[test]
fn llama3_style_template_trims_content_and_opens_assistant_header() {
    assert_eq!(
        template("llama3.jinja").render(&conversation(), true).unwrap(),
        "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn qwen_style_template_renders_plain_chat() {
    assert_eq!(
        template("qwen.jinja").render(&conversation(), true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi there <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen_style_template_renders_tools_tool_calls_and_tool_results() {
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let messages = vec![
        ChatMessage::new("user", "Weather in Paris?"),
        ChatMessage {
            role: "assistant".into(),
            content: None,
            tool_calls: Some(
                serde_json::json!([{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]),
            ),
            ..Default::default()
        },
        ChatMessage { tool_call_id: Some("c1".into()), ..ChatMessage::new("tool", "{\"temp\": 21}") },
        ChatMessage::new("tool", "sunny"),
    ];
    let out = template("qwen.jinja").render_with(&messages, true, Some(&tools), None).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather in a city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response>\n<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    );
}
