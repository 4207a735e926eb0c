//! Model hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The decoder families we run. All share the llama block layout; they differ in
/// biases and in how RoPE pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

pub const SUPPORTED_ARCHITECTURES: &str = "llama, llama3, mistral, qwen2, smollm";

impl Architecture {
    /// Maps a GGUF `general.architecture` or a config.json `model_type` to a family.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "llama3" | "smollm" | "smollm2" => Ok(Self::Llama),
            "mistral" => Ok(Self::Mistral),
            "qwen2" => Ok(Self::Qwen2),
            _ => Err(EngineError::UnsupportedArchitecture {
                found: name.to_string(),
                supported: SUPPORTED_ARCHITECTURES.to_string(),
            }),
        }
    }

    pub fn has_qkv_bias(self) -> bool {
        matches!(self, Self::Qwen2)
    }
}

/// How RoPE rotates a head: GGUF llama weights are permuted so that pairs are adjacent
/// (`Interleaved`); Hugging Face weights and GGUF qwen2 rotate the two halves (`Halves`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Interleaved,
    Halves,
}

/// Llama 3's frequency-dependent RoPE scaling.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    #[serde(default = "one")]
    pub low_freq_factor: f32,
    #[serde(default = "four")]
    pub high_freq_factor: f32,
    #[serde(default = "default_orig_ctx")]
    pub original_max_position_embeddings: usize,
}

fn one() -> f32 {
    1.0
}
fn four() -> f32 {
    4.0
}
fn default_orig_ctx() -> usize {
    8192
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Reads the hyper-parameters GGUF stores under `<arch>.*`.
    pub fn from_gguf(metadata: &HashMap<String, Value>, path: &Path) -> Result<Self> {
        let arch_name = get_str(metadata, "general.architecture", path)?;
        let architecture = Architecture::parse(&arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let u = |k: &str| -> Result<usize> { get_usize(metadata, &key(k), path) };
        let hidden_size = u("embedding_length")?;
        let num_heads = u("attention.head_count")?;
        let num_kv_heads =
            get_usize(metadata, &key("attention.head_count_kv"), path).unwrap_or(num_heads);
        let head_dim = match get_usize(metadata, &key("attention.key_length"), path) {
            Ok(d) => d,
            Err(_) => hidden_size / num_heads.max(1),
        };
        let vocab_size = match get_usize(metadata, &key("vocab_size"), path) {
            Ok(v) => v,
            Err(_) => metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| bad(path, "no vocab size and no tokenizer.ggml.tokens"))?,
        };
        let rope_theta = metadata
            .get(&key("rope.freq_base"))
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10_000.0);
        let rms_norm_eps = metadata
            .get(&key("attention.layer_norm_rms_epsilon"))
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(1e-5) as f64;
        let cfg = Self {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_layers: u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta,
            rope_style: match architecture {
                Architecture::Qwen2 => RopeStyle::Halves,
                _ => RopeStyle::Interleaved,
            },
            // Llama 3 GGUFs carry their scaling as a `rope_freqs.weight` tensor instead.
            rope_scaling: None,
            rms_norm_eps,
            max_position_embeddings: u("context_length").unwrap_or(4096),
            tie_word_embeddings: false,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_config_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|e| bad(path, &e.to_string()))?;
        let architecture = Architecture::parse(&raw.model_type)?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let rope_scaling = match raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                match kind {
                    "llama3" => Some(
                        serde_json::from_value(v.clone())
                            .map_err(|e| bad(path, &format!("rope_scaling: {e}")))?,
                    ),
                    "default" | "" => None,
                    other => {
                        return Err(bad(
                            path,
                            &format!("unsupported rope_scaling type `{other}`"),
                        ))
                    }
                }
            }
        };
        let cfg = Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_style: RopeStyle::Halves,
            rope_scaling,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return Err(bad(
                path,
                &format!(
                    "{} attention heads do not split into {} KV heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                path,
                &format!("head dim {} must be even", self.head_dim),
            ));
        }
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return Err(bad(path, "zero layers, hidden size or vocabulary"));
        }
        Ok(())
    }

    /// Bytes of K and V one token occupies across all layers, at `dtype_bytes` per value.
    pub fn kv_bytes_per_token(&self, dtype_bytes: usize) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f32>,
    rope_scaling: Option<serde_json::Value>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
}

fn bad(path: &Path, reason: &str) -> EngineError {
    EngineError::BadModel {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

pub(crate) fn get_str(md: &HashMap<String, Value>, key: &str, path: &Path) -> Result<String> {
    md.get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| bad(path, &format!("GGUF metadata lacks `{key}`")))
}

pub(crate) fn get_usize(md: &HashMap<String, Value>, key: &str, path: &Path) -> Result<usize> {
    let v = md
        .get(key)
        .ok_or_else(|| bad(path, &format!("GGUF metadata lacks `{key}`")))?;
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) if *x >= 0 => *x as u64,
        Value::I16(x) if *x >= 0 => *x as u64,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        _ => return Err(bad(path, &format!("GGUF metadata `{key}` is not a count"))),
    };
    usize::try_from(n).map_err(|_| bad(path, &format!("GGUF metadata `{key}` is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_architecture_is_named() {
        let err = Architecture::parse("gpt-neox").unwrap_err().to_string();
        assert!(err.contains("gpt-neox"), "{err}");
        assert!(err.contains("llama"), "{err}");
    }

    #[test]
    fn families() {
        assert_eq!(Architecture::parse("smollm").unwrap(), Architecture::Llama);
        assert!(Architecture::parse("qwen2").unwrap().has_qkv_bias());
        assert!(!Architecture::parse("mistral").unwrap().has_qkv_bias());
    }
}
