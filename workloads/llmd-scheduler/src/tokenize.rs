//! Tokenizing and hashing a request exactly as the worker will, from the description the
//! worker serves at `GET /v1/llmd/tokenizer` — so the prefix the scheduler scores is the
//! prefix the worker caches. The rules mirror the worker's: chat requests render the
//! template (generation prompt on unless turned off) and encode without adding special
//! tokens; completions encode text with them, or take token ids as given.

use llmd_protocol::openai::{ChatCompletionRequest, CompletionRequest, Message, PromptInput};
use llmd_protocol::{block_hashes, root_hash, BlockHash};
use llmd_tokenizer::{CachedEncoder, ChatMessage, Tokenizer};
use serde_json::Value;

use crate::SchedulerError;

/// Token ids of recently seen text pieces kept per model (system prompts, chat history):
/// about 16 MB.
const PIECE_CACHE_TOKENS: usize = 4 << 20;

pub struct ModelTokenizer {
    /// The model name the worker's KV events carry: index keys are rooted in it.
    pub model: String,
    tok: CachedEncoder,
    /// Whether adding special tokens adds none (then text can go through the cache).
    plain_specials: bool,
    pub block_size: usize,
    root: BlockHash,
}

impl ModelTokenizer {
    pub fn from_info(info: &Value) -> Result<Self, SchedulerError> {
        let bad = |what: &str| SchedulerError::Tokenizer(format!("tokenizer description: {what}"));
        let model = info["model"].as_str().ok_or_else(|| bad("no model"))?;
        let json = info["tokenizer_json"]
            .as_str()
            .ok_or_else(|| bad("no tokenizer_json"))?;
        let block_size = info["block_size"]
            .as_u64()
            .filter(|&b| b > 0)
            .ok_or_else(|| bad("no block_size"))? as usize;
        let tok = Tokenizer::from_json(json).map_err(|e| bad(&e.to_string()))?;
        let plain_specials = tok.encode("", true).is_ok_and(|v| v.is_empty());
        Ok(Self {
            model: model.to_string(),
            tok: CachedEncoder::new(tok, PIECE_CACHE_TOKENS),
            plain_specials,
            block_size,
            root: root_hash(model, None),
        })
    }

    pub fn chat_tokens(&self, req: &ChatCompletionRequest) -> Result<Vec<u32>, SchedulerError> {
        self.chat(
            &req.messages,
            req.add_generation_prompt.unwrap_or(true),
            false,
        )
    }

    /// Messages rendered with the template, then encoded.
    pub fn chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, SchedulerError> {
        let messages: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(m.role.clone(), m.text()))
            .collect();
        let text = self
            .tok
            .tokenizer()
            .apply_chat_template(&messages, add_generation_prompt)
            .map_err(|e| SchedulerError::Tokenizer(e.to_string()))?;
        self.encode(&text, add_special_tokens)
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, SchedulerError> {
        let r = if add_special_tokens && !self.plain_specials {
            self.tok.tokenizer().encode(text, true)
        } else {
            self.tok.encode(text)
        };
        r.map_err(|e| SchedulerError::Tokenizer(e.to_string()))
    }

    pub fn completion_tokens(&self, req: &CompletionRequest) -> Result<Vec<u32>, SchedulerError> {
        match req
            .prompt_input()
            .map_err(|e| SchedulerError::Tokenizer(e.error.message))?
        {
            PromptInput::Text(t) => self.encode(&t, true),
            PromptInput::Tokens(ids) => Ok(ids),
        }
    }

    /// The index keys of the prompt's full blocks (llmd-protocol's chained hash).
    pub fn keys(&self, tokens: &[u32]) -> Vec<BlockHash> {
        block_hashes(self.root, tokens, self.block_size)
    }
}
