//! A simulated model for load tests at cluster scale (`llmd worker --sim`): the engine's
//! real scheduler, block pool, prefix cache, KV events and KV export/import, with the
//! forward pass replaced by a sleep from a latency model. Everything a scheduler,
//! cache-manager or client can observe is produced by the same code as on a real worker;
//! only the tokens and the time they take are made up.

use std::path::Path;
use std::time::Duration;

use candle_core::Device;
use llmd_models::{ModelFormat, ResolvedModel};
use llmd_tokenizer::Tokenizer;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kv::KvLayout;

/// What one engine step costs: a fixed part, plus each prompt token computed and each
/// sequence decoded in it. Calibrated from `llmd bench engine` (see docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimCost {
    pub step: Duration,
    pub prefill_token: Duration,
    pub decode_seq: Duration,
}

impl Default for SimCost {
    /// The default model on this project's 2-vCPU machines: ~950 prompt tok/s, ~250 tok/s
    /// for one stream and ~800 tok/s for 16 (`llmd bench engine --concurrency 1,16`).
    fn default() -> Self {
        Self {
            step: Duration::from_micros(3000),
            prefill_token: Duration::from_micros(1050),
            decode_seq: Duration::from_micros(1000),
        }
    }
}

impl SimCost {
    pub fn step_time(&self, prefill_tokens: usize, decode_seqs: usize) -> Duration {
        self.step
            + self.prefill_token * prefill_tokens as u32
            + self.decode_seq * decode_seqs as u32
    }
}

/// English text the simulated model "generates", so that streams read like text and
/// detokenize as the real tokenizer would.
const SIM_TEXT: &str = "The scheduler routes each request to the worker that already holds \
most of its prompt in its cache, and weighs that against how busy every worker is. A long \
prompt is split: one worker computes it and hands its cache over, another generates the \
answer. Operators deploy the four parts with Juju, relate them to their observability \
stack and swap models with a configuration change. ";

/// The latency model and the tokens it emits.
#[derive(Clone)]
pub struct SimModel {
    config: ModelConfig,
    cost: SimCost,
    text: Vec<u32>,
    eos: Option<u32>,
    output_len: usize,
    device: Device,
}

impl SimModel {
    /// `output_len`: tokens generated before the end-of-sequence token (a real model stops
    /// by itself; `max_tokens` still ends a request earlier).
    pub fn new(
        config: ModelConfig,
        tokenizer: &Tokenizer,
        cost: SimCost,
        output_len: usize,
    ) -> Result<Self> {
        let text = tokenizer
            .encode(SIM_TEXT, false)
            .map_err(|e| EngineError::InvalidRequest(format!("cannot tokenize: {e}")))?;
        if text.is_empty() {
            return Err(EngineError::InvalidRequest(
                "the tokenizer gives no tokens for the simulated text".into(),
            ));
        }
        Ok(Self {
            config,
            cost,
            text,
            eos: tokenizer.eos_token_ids().first().copied(),
            output_len: output_len.max(1),
            device: Device::Cpu,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn cost(&self) -> SimCost {
        self.cost
    }

    /// The pool holds as many blocks as the real model's would in the same memory budget,
    /// but each block stores almost nothing: a simulated worker must not need the memory
    /// of a real one, or a hundred of them would not fit on one machine.
    pub(crate) fn layout(real: KvLayout) -> KvLayout {
        KvLayout {
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 1,
            ..real
        }
    }

    /// Sleeps for the step's modelled time and returns the next token of each sequence:
    /// `(position of the new token, tokens generated before it)`. Tokens depend only on the
    /// position, so every path (cached, batched, disaggregated) gives the same ones.
    pub(crate) fn step(
        &self,
        prefill_tokens: usize,
        decode_seqs: usize,
        seqs: &[(usize, usize)],
    ) -> Vec<u32> {
        std::thread::sleep(self.cost.step_time(prefill_tokens, decode_seqs));
        seqs.iter()
            .map(|&(pos, generated)| match self.eos {
                Some(eos) if generated + 1 >= self.output_len => eos,
                _ => self.text[pos % self.text.len()],
            })
            .collect()
    }
}

/// Reads a model's configuration and tokenizer, not its weights.
pub fn load_sim(
    resolved: &ResolvedModel,
    cost: SimCost,
    output_len: usize,
) -> Result<(SimModel, Tokenizer)> {
    let (config, tok) = match &resolved.format {
        ModelFormat::Gguf { file } => read_gguf_header(file)?,
        ModelFormat::Safetensors {
            config,
            tokenizer,
            tokenizer_config,
            generation_config,
            ..
        } => (
            ModelConfig::from_config_json(config)?,
            Tokenizer::from_files(
                tokenizer,
                tokenizer_config.as_deref(),
                generation_config.as_deref(),
            )?,
        ),
    };
    let sim = SimModel::new(config, &tok, cost, output_len)?;
    Ok((sim, tok))
}

fn read_gguf_header(path: &Path) -> Result<(ModelConfig, Tokenizer)> {
    let mut f = std::fs::File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).map_err(|e| {
        EngineError::BadModel {
            path: path.to_path_buf(),
            reason: format!(
                "corrupt or truncated GGUF header ({})",
                crate::error::candle_text(&e)
            ),
        }
    })?;
    let cfg = ModelConfig::from_gguf(&content.metadata, path)?;
    let tok = Tokenizer::from_gguf(crate::engine::gguf_vocab(&content.metadata))?;
    Ok((cfg, tok))
}
