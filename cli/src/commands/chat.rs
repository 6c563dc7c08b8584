//! `kvault chat`: an interactive multi-turn conversation through the model's chat template.
//! Each turn re-renders the whole conversation; the prefix cache makes earlier turns free.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use kvault_engine::events::RequestEvent;
use kvault_engine::handle::EngineHandle;
use kvault_engine::request::NewRequest;
use kvault_models::chat_template::ChatMessage;

use crate::args::{EngineArgs, ModelArgs, SamplingArgs};
use crate::kv::{self, KvArgs};
use crate::prompt;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub kv: KvArgs,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Chat template file overriding the model's.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let kv_policy = args.kv.resolve()?;
    let loaded = args.model.load()?;
    let engine = EngineHandle::start(loaded, args.engine.config(0))?;
    let info = engine.info().clone();
    let template = args.chat_template.as_deref().map(|p| prompt::load_template_file(p, &info)).transpose()?;
    // Fail before the first prompt, not after the user typed something.
    prompt::encode_chat(&info, template.as_ref(), &[prompt::message("user", "hi")])?;

    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("kvault chat with {} — /reset clears the conversation, /exit or Ctrl-D quits", args.model.display_name());
    }
    let mut history: Vec<ChatMessage> = args.system.iter().map(|s| prompt::message("system", s)).collect();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                continue;
            }
            _ => {}
        }
        history.push(prompt::message("user", text));
        let ids = prompt::encode_chat(&info, template.as_ref(), &history)?;
        let mut request = NewRequest::new(ids, args.sampling.params());
        request.kv = kv_policy;
        let reply = match engine.submit(request) {
            Ok(mut stream) => stream_reply(&mut stream)?,
            Err(e) => {
                // A conversation that outgrew the context is not fatal: say so and let the user reset.
                eprintln!("error: {:#}", kv::submit_error(e));
                history.pop();
                continue;
            }
        };
        history.push(prompt::message("assistant", &reply));
    }
    Ok(())
}

fn stream_reply(stream: &mut kvault_engine::handle::RequestStream) -> Result<String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut reply = String::new();
    loop {
        match stream.blocking_next() {
            Some(RequestEvent::Tokens(d)) => {
                reply.push_str(&d.text);
                out.write_all(d.text.as_bytes())?;
                out.flush()?;
            }
            Some(RequestEvent::Finished(done)) => {
                reply.push_str(&done.trailing_text);
                writeln!(out, "{}", done.trailing_text)?;
                return Ok(reply);
            }
            Some(RequestEvent::PromptScores(_)) => {} // never asked for here
            Some(RequestEvent::Failed(e)) => anyhow::bail!("generation failed: {e}"),
            None => anyhow::bail!("the engine stopped"),
        }
    }
}
