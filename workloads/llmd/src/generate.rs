//! `llmd generate`: one prompt, no server, text streamed to stdout and speeds to stderr.

use std::io::Write;

use clap::Args;
use llmd_engine::SamplingParams;
use llmd_tokenizer::ChatMessage;

use crate::EngineArgs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 is greedy (the default here, so that runs repeat); OpenAI's default is 1.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop strings (repeatable); not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let engine = args.engine.load()?;
    let tok = &engine.tokenizer;
    let ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        let text = tok.apply_chat_template(&messages, true)?;
        // The template already carries any BOS it wants.
        tok.encode(&text, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        stop_token_ids: Vec::new(),
        ignore_eos: args.ignore_eos,
    };
    let mut stdout = std::io::stdout().lock();
    let out = engine.generate(&ids, &params, |piece| {
        // A closed stdout (`| head`) ends generation instead of failing it.
        stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush())
            .is_ok()
    })?;
    let _ = writeln!(stdout);
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s | finish: {}",
        out.prompt_tokens,
        out.prefill_tok_s(),
        out.token_ids.len(),
        out.decode_tok_s(),
        out.finish_reason.as_str()
    );
    Ok(())
}
