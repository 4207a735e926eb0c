//! Loading a model with its tokenizer, and generating one sequence at a time over the
//! paged KV cache (the batching scheduler builds on the same pieces).

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use llmd_models::{ModelFormat, ResolvedModel};
use llmd_tokenizer::{GgufVocab, Tokenizer};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kv::{BlockAllocator, KvCache, KvCacheSize, KvLayout};
use crate::model::{BatchSeq, LoadOptions, Model};
use crate::sampling::{Sampler, SamplingParams};

/// Tokens per KV block unless configured otherwise (llm-d and vLLM use 16 too).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Prompt tokens run per forward pass, which bounds attention scratch memory.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub block_size: usize,
    /// `None`: room for one sequence at the model's full context.
    pub kv_cache: Option<KvCacheSize>,
    /// Where [`Engine::load`] puts the model (the KV pool always sits with the model).
    pub device: Device,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            kv_cache: None,
            device: Device::Cpu,
        }
    }
}

/// Why generation ended, with OpenAI's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generated {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generated {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode speed over the tokens after the first (the first comes from the prefill).
    pub fn decode_tok_s(&self) -> f64 {
        self.token_ids.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

pub struct Engine {
    pub name: String,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub cache: KvCache,
    blocks: Mutex<BlockAllocator>,
}

pub(crate) fn gguf_vocab(md: &std::collections::HashMap<String, gguf_file::Value>) -> GgufVocab {
    let s = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
    let u = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
    let b = |k: &str| md.get(k).and_then(|v| v.to_bool().ok());
    let strings = |k: &str| -> Option<Vec<String>> {
        md.get(k).and_then(|v| v.to_vec().ok()).map(|v| {
            v.iter()
                .filter_map(|x| x.to_string().ok().cloned())
                .collect()
        })
    };
    GgufVocab {
        model: s("tokenizer.ggml.model").unwrap_or_default(),
        pre: s("tokenizer.ggml.pre"),
        tokens: strings("tokenizer.ggml.tokens").unwrap_or_default(),
        token_types: md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().filter_map(|x| x.to_i32().ok()).collect()),
        scores: md
            .get("tokenizer.ggml.scores")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().filter_map(|x| x.to_f32().ok()).collect()),
        merges: strings("tokenizer.ggml.merges"),
        bos_token_id: u("tokenizer.ggml.bos_token_id"),
        eos_token_id: u("tokenizer.ggml.eos_token_id"),
        unknown_token_id: u("tokenizer.ggml.unknown_token_id"),
        padding_token_id: u("tokenizer.ggml.padding_token_id"),
        add_bos_token: b("tokenizer.ggml.add_bos_token"),
        add_eos_token: b("tokenizer.ggml.add_eos_token"),
        add_space_prefix: b("tokenizer.ggml.add_space_prefix"),
        chat_template: s("tokenizer.chat_template"),
    }
}

/// Identifies the exact weights, so that KV is only exchanged between workers serving the
/// same model: the file's sha256 where known (the default model), otherwise the name, shape
/// and weight file sizes (hashing many GB at every start would be too slow).
pub fn model_fingerprint(resolved: &ResolvedModel, cfg: &ModelConfig) -> String {
    if let Some(sha) = &resolved.sha256 {
        return format!("sha256:{sha}");
    }
    let files: Vec<&Path> = match &resolved.format {
        ModelFormat::Gguf { file } => vec![file.as_path()],
        ModelFormat::Safetensors { shards, .. } => shards.iter().map(|p| p.as_path()).collect(),
    };
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    format!(
        "{}:{:?}:{}x{}x{}x{}:{bytes}",
        resolved.name,
        cfg.architecture,
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_kv_heads,
        cfg.head_dim
    )
}

/// Reads a model and its tokenizer from a resolved source.
pub fn load_model(resolved: &ResolvedModel, device: &Device) -> Result<(Model, Tokenizer)> {
    load_model_with(resolved, device, &LoadOptions::default())
}

/// [`load_model`] with a weight dtype or the device-generic ops chosen.
pub fn load_model_with(
    resolved: &ResolvedModel,
    device: &Device,
    opts: &LoadOptions,
) -> Result<(Model, Tokenizer)> {
    match &resolved.format {
        ModelFormat::Gguf { file } => load_gguf_with(file, device, opts),
        ModelFormat::Safetensors {
            config,
            tokenizer,
            tokenizer_config,
            generation_config,
            shards,
            ..
        } => {
            let cfg = ModelConfig::from_config_json(config)?;
            let tok = Tokenizer::from_files(
                tokenizer,
                tokenizer_config.as_deref(),
                generation_config.as_deref(),
            )?;
            let model = Model::from_safetensors(cfg, shards, device, opts)?;
            Ok((model, tok))
        }
    }
}

pub fn load_gguf(path: &Path, device: &Device) -> Result<(Model, Tokenizer)> {
    load_gguf_with(path, device, &LoadOptions::default())
}

pub fn load_gguf_with(
    path: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<(Model, Tokenizer)> {
    let mut f = File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| EngineError::BadModel {
        path: path.to_path_buf(),
        reason: format!(
            "corrupt or truncated GGUF header ({})",
            crate::error::candle_text(&e)
        ),
    })?;
    // Architecture first, so that an unsupported model is named before anything else fails.
    let cfg = ModelConfig::from_gguf(&content.metadata, path)?;
    let tok = Tokenizer::from_gguf(gguf_vocab(&content.metadata))?;
    if tok.vocab_size() > cfg.vocab_size + 1024 {
        tracing::warn!(
            tokenizer = tok.vocab_size(),
            model = cfg.vocab_size,
            "tokenizer larger than the model's vocabulary"
        );
    }
    let model = Model::from_gguf(&content, path, device, opts)?;
    Ok((model, tok))
}

impl Engine {
    pub fn load(resolved: &ResolvedModel, opts: &EngineOptions) -> Result<Self> {
        let (model, tokenizer) = load_model(resolved, &opts.device)?;
        Self::new(resolved.name.clone(), model, tokenizer, opts)
    }

    pub fn new(
        name: String,
        model: Model,
        tokenizer: Tokenizer,
        opts: &EngineOptions,
    ) -> Result<Self> {
        let cfg = model.config();
        let size = opts.kv_cache.unwrap_or(KvCacheSize::Blocks(
            cfg.max_position_embeddings.div_ceil(opts.block_size.max(1)),
        ));
        let layout = KvLayout::new(cfg, opts.block_size, size, DType::F32)?;
        let cache = KvCache::new(layout, model.device())?;
        tracing::info!(
            blocks = layout.num_blocks,
            block_size = layout.block_size,
            mib = layout.total_bytes() / (1 << 20),
            "KV cache allocated"
        );
        Ok(Self {
            name,
            blocks: Mutex::new(BlockAllocator::new(layout.num_blocks)),
            model,
            tokenizer,
            cache,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// Checks that a prompt plus its completion fit the model's context.
    pub fn check_length(&self, prompt_tokens: usize, max_tokens: usize) -> Result<()> {
        let ctx = self.config().max_position_embeddings;
        if prompt_tokens == 0 {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if prompt_tokens + max_tokens > ctx {
            return Err(EngineError::InvalidRequest(format!(
                "this model's maximum context length is {ctx} tokens, but {} were requested ({prompt_tokens} in the prompt, {max_tokens} to generate)",
                prompt_tokens + max_tokens
            )));
        }
        Ok(())
    }

    /// Generates from `prompt` token ids; `on_text` receives text as it becomes final and
    /// returns `false` to stop early.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generated> {
        params.validate()?;
        self.check_length(prompt.len(), params.max_tokens)?;
        let mut seq = SeqBlocks::new(self);
        let mut sampler = Sampler::new(params.clone());
        let mut decoder = self.tokenizer.decoder();
        let mut stops = llmd_tokenizer::StopMatcher::new(params.stop.clone());
        let eos: Vec<u32> = if params.ignore_eos {
            Vec::new()
        } else {
            self.tokenizer.eos_token_ids().to_vec()
        };

        let t0 = Instant::now();
        let mut logits = None;
        for (i, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
            let start = i * PREFILL_CHUNK;
            seq.ensure(start + chunk.len())?;
            logits = Some(self.step(chunk, start, &seq.blocks)?);
        }
        let prefill_time = t0.elapsed();
        let t1 = Instant::now();
        let mut out = Vec::new();
        let mut text = String::new();
        let mut finish = FinishReason::Length;
        let mut pos = prompt.len();
        let mut stopped_by_text = false;
        while let Some(l) = logits.take() {
            let id = sampler.sample(&l);
            out.push(id);
            if eos.contains(&id) || params.stop_token_ids.contains(&id) {
                finish = FinishReason::Stop;
                break;
            }
            let piece = decoder.push(id)?;
            let r = stops.push(&piece);
            text.push_str(&r.emit);
            if !r.emit.is_empty() && !on_text(&r.emit) {
                finish = FinishReason::Abort;
                break;
            }
            if r.stopped {
                stopped_by_text = true;
                finish = FinishReason::Stop;
                break;
            }
            if out.len() >= params.max_tokens {
                break;
            }
            seq.ensure(pos + 1)?;
            logits = Some(self.step(&[id], pos, &seq.blocks)?);
            pos += 1;
        }
        if finish != FinishReason::Abort && !stopped_by_text {
            // Release what the decoder and the stop matcher held back.
            let rest = stops.push(&decoder.flush());
            let mut tail = rest.emit;
            if rest.stopped {
                finish = FinishReason::Stop;
            } else {
                tail.push_str(&stops.finish());
            }
            if !tail.is_empty() {
                text.push_str(&tail);
                on_text(&tail);
            }
        }
        Ok(Generated {
            token_ids: out,
            text,
            finish_reason: finish,
            prompt_tokens: prompt.len(),
            prefill_time,
            decode_time: t1.elapsed(),
        })
    }

    /// One forward pass for one sequence; returns the last token's logits.
    pub fn step(&self, tokens: &[u32], start_pos: usize, blocks: &[u32]) -> Result<Vec<f32>> {
        let logits = self.model.forward(
            &self.cache,
            &[BatchSeq {
                tokens,
                start_pos,
                block_table: blocks,
            }],
        )?;
        Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
    }

    pub fn blocks_free(&self) -> usize {
        self.blocks.lock().map(|b| b.num_free()).unwrap_or(0)
    }

    /// Takes `n` blocks from the pool.
    pub fn allocate_blocks(&self, n: usize) -> Result<Vec<u32>> {
        let mut b = self
            .blocks
            .lock()
            .map_err(|_| EngineError::KvCacheFull("block allocator poisoned".into()))?;
        let total = b.num_total();
        b.allocate(n).ok_or_else(|| {
            EngineError::KvCacheFull(format!(
                "needs {n} more blocks of {} tokens, {} of {total} free",
                self.cache.layout.block_size,
                b.num_free()
            ))
        })
    }

    pub fn release_blocks(&self, blocks: &[u32]) {
        if let Ok(mut b) = self.blocks.lock() {
            b.release(blocks);
        }
    }
}

/// A sequence's block table; gives its blocks back to the pool when dropped, so no path
/// (error, early stop) can leak them.
pub struct SeqBlocks<'a> {
    engine: &'a Engine,
    pub blocks: Vec<u32>,
}

impl<'a> SeqBlocks<'a> {
    pub fn new(engine: &'a Engine) -> Self {
        Self {
            engine,
            blocks: Vec::new(),
        }
    }

    /// Makes room for `tokens` tokens in total.
    pub fn ensure(&mut self, tokens: usize) -> Result<()> {
        let need = tokens.div_ceil(self.engine.cache.layout.block_size);
        if need > self.blocks.len() {
            let more = self.engine.allocate_blocks(need - self.blocks.len())?;
            self.blocks.extend(more);
        }
        Ok(())
    }
}

impl Drop for SeqBlocks<'_> {
    fn drop(&mut self) {
        self.engine.release_blocks(&self.blocks);
    }
}
