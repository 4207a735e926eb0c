//! The llama-family decoder (llama, llama3, mistral, qwen2, smollm) with its forward pass
//! over the paged KV cache: many sequences of different lengths in one batch.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use llmd_quant::{QMatrix, QType};

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::kv::KvCache;
use crate::ops::{AttnSeq, PagedAttentionOp, QMatMulOp, RopeFreqs, RopeOp, RopeTable, SiluMulOp};

/// How a model is loaded beyond its source and device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Dtype of float (non-quantized) weight matrices. `None`: f32 on CPU and for GGUF
    /// (whose float tensors are dequantized exactly); on CUDA, a safetensors checkpoint's own
    /// dtype (f16/bf16 halve the memory and use the tensor cores).
    pub dtype: Option<DType>,
    /// Runs the device-generic ops (candle's, as on CUDA) even on CPU, so that the GPU path's
    /// logic can be tested on a machine without a GPU. Slower than the CPU kernels.
    pub generic_ops: bool,
}

/// A weight matrix `[out, in]` and how it is multiplied.
#[derive(Clone)]
enum Linear {
    /// GGML Q4_0/Q4_1/Q8_0 on CPU: our SIMD kernels.
    Quant(Arc<QMatrix>),
    /// Other GGML formats (K-quants…), and every GGML format on CUDA: candle's quantized
    /// matmul.
    CandleQ(QMatMul),
    /// Float weights, `[out, in]`; f32 on CPU, possibly f16/bf16 on CUDA.
    Dense(Tensor),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Quant(w) => x.contiguous()?.apply_op1_no_bwd(&QMatMulOp(w.clone()))?,
            Self::CandleQ(m) => m.forward(x)?,
            Self::Dense(w) if w.dtype() == x.dtype() => x.matmul(&w.t()?)?,
            // Half-precision weights: the matmul runs in their dtype, activations (norms,
            // residual stream, attention, KV) stay f32.
            Self::Dense(w) => x
                .to_dtype(w.dtype())?
                .matmul(&w.t()?)?
                .to_dtype(x.dtype())?,
        })
    }
}

/// A projection whose output is split into parts (q|k|v, gate|up): one matmul instead of
/// several, since per-call overhead dominates single-token decode.
struct Fused {
    linear: Linear,
    bias: Option<Tensor>,
    splits: Vec<usize>,
}

impl Fused {
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut y = self.linear.forward(x)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut parts = Vec::with_capacity(self.splits.len());
        let mut at = 0;
        for &n in &self.splits {
            parts.push(y.narrow(D::Minus1, at, n)?);
            at += n;
        }
        Ok(parts)
    }
}

struct Layer {
    attn_norm: Tensor,
    qkv: Fused,
    o: Linear,
    ffn_norm: Tensor,
    gate_up: Fused,
    down: Linear,
}

enum Embedding {
    Quant(Arc<QMatrix>),
    Dense(Tensor),
}

/// One sequence's slice of a batch: new tokens, the position of the first, and the blocks
/// holding (and receiving) its K/V.
#[derive(Debug, Clone, Copy)]
pub struct BatchSeq<'a> {
    pub tokens: &'a [u32],
    pub start_pos: usize,
    pub block_table: &'a [u32],
}

pub struct Model {
    cfg: ModelConfig,
    device: Device,
    /// candle's device-generic ops instead of our CPU kernels (always on CUDA).
    generic: bool,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    rope: Arc<RopeFreqs>,
}

fn fast_qtype(d: GgmlDType) -> Option<QType> {
    match d {
        GgmlDType::Q4_0 => Some(QType::Q4_0),
        GgmlDType::Q4_1 => Some(QType::Q4_1),
        GgmlDType::Q8_0 => Some(QType::Q8_0),
        _ => None,
    }
}

/// Reads GGUF tensors, turning truncation and format errors into one clear message.
struct GgufReader<'a> {
    content: &'a gguf_file::Content,
    file: File,
    path: &'a Path,
    device: Device,
    generic: bool,
    /// Dtype of dense (float) matrices.
    dtype: DType,
}

impl GgufReader<'_> {
    fn corrupt(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::BadModel {
            path: self.path.to_path_buf(),
            reason: format!("corrupt or truncated GGUF ({what}: {e})"),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn info(&self, name: &str) -> Result<&gguf_file::TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::Weights(format!("GGUF has no tensor `{name}`")))
    }

    /// The raw GGML bytes of a tensor and its `[rows, cols]`.
    fn raw(&mut self, name: &str) -> Result<(GgmlDType, usize, usize, Vec<u8>)> {
        let info = self.info(name)?;
        let dims = info.shape.dims().to_vec();
        let (rows, cols) = match dims.as_slice() {
            [c] => (1, *c),
            [r, c] => (*r, *c),
            _ => return Err(EngineError::Weights(format!("`{name}` has shape {dims:?}"))),
        };
        let dtype = info.ggml_dtype;
        let bytes = (rows * cols) / dtype.block_size() * dtype.type_size();
        let start = self.content.tensor_data_offset.saturating_add(info.offset);
        let mut buf = vec![0u8; bytes];
        self.file
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|e| self.corrupt(name, e))?;
        Ok((dtype, rows, cols, buf))
    }

    fn qtensor(
        &mut self,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<QTensor> {
        let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &self.device, dtype)?;
        Ok(QTensor::new(storage, (rows, cols))?)
    }

    fn vector(&mut self, name: &str) -> Result<Tensor> {
        let (dtype, rows, cols, bytes) = self.raw(name)?;
        let q = self.qtensor(dtype, rows, cols, bytes)?;
        Ok(q.dequantize(&self.device)?.flatten_all()?)
    }

    fn linear_from(
        &mut self,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Linear> {
        match (fast_qtype(dtype), self.generic) {
            (Some(qt), false) => Ok(Linear::Quant(Arc::new(QMatrix::from_ggml_bytes(
                qt, rows, cols, bytes,
            )?))),
            _ if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) => {
                let q = self.qtensor(dtype, rows, cols, bytes)?;
                Ok(Linear::Dense(
                    q.dequantize(&self.device)?.to_dtype(self.dtype)?,
                ))
            }
            _ => {
                let q = self.qtensor(dtype, rows, cols, bytes)?;
                Ok(Linear::CandleQ(QMatMul::from_qtensor(q)?))
            }
        }
    }

    fn linear(&mut self, name: &str) -> Result<Linear> {
        let (dtype, rows, cols, bytes) = self.raw(name)?;
        self.linear_from(dtype, rows, cols, bytes)
    }

    /// Stacks the rows of same-typed matrices into one (GGML rows are independent blocks).
    fn fused(&mut self, names: &[String], biases: Option<&[String]>) -> Result<Fused> {
        let mut parts = Vec::new();
        for n in names {
            parts.push(self.raw(n)?);
        }
        let (dtype, _, cols, _) = parts[0];
        if parts.iter().any(|p| p.0 != dtype || p.2 != cols) {
            return Err(EngineError::Weights(format!(
                "{names:?} differ in type or width"
            )));
        }
        let splits: Vec<usize> = parts.iter().map(|p| p.1).collect();
        let rows = splits.iter().sum();
        let bytes = parts.into_iter().flat_map(|p| p.3).collect();
        let linear = self.linear_from(dtype, rows, cols, bytes)?;
        let bias = match biases {
            Some(bn) => {
                let mut bs = Vec::new();
                for n in bn {
                    bs.push(self.vector(n)?);
                }
                Some(Tensor::cat(&bs, 0)?)
            }
            None => None,
        };
        Ok(Fused {
            linear,
            bias,
            splits,
        })
    }
}

fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let mut f: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| 1.0 / cfg.rope_theta.powf(i as f32 / d as f32))
        .collect();
    if let Some(s) = &cfg.rope_scaling {
        let orig = s.original_max_position_embeddings as f32;
        let low_wavelen = orig / s.low_freq_factor;
        let high_wavelen = orig / s.high_freq_factor;
        for x in f.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *x;
            if wavelen > low_wavelen {
                *x /= s.factor;
            } else if wavelen >= high_wavelen {
                let smooth =
                    (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                *x = (1.0 - smooth) * *x / s.factor + smooth * *x;
            }
        }
    }
    f
}

/// Whether to run candle's generic ops, and the checked dtype of dense weights (`native`:
/// the checkpoint's own, the default on CUDA).
fn placement(device: &Device, opts: &LoadOptions, native: DType) -> Result<(bool, DType)> {
    let generic = opts.generic_ops || !device.is_cpu();
    let dtype = match opts.dtype {
        Some(d @ (DType::F32 | DType::F16 | DType::BF16)) => d,
        Some(d) => {
            return Err(EngineError::InvalidRequest(format!(
                "weight dtype {d:?} (choose f32, f16 or bf16)"
            )))
        }
        None if device.is_cpu() => DType::F32,
        None => native,
    };
    // Our CPU kernels are f32: half-precision weights would be widened anyway.
    if !generic && dtype != DType::F32 {
        return Err(EngineError::InvalidRequest(format!(
            "{dtype:?} weights run on CUDA only; the CPU computes in f32"
        )));
    }
    Ok((generic, dtype))
}

impl Model {
    /// Loads a GGUF file whose header has already been read.
    pub fn from_gguf(
        content: &gguf_file::Content,
        path: &Path,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(&content.metadata, path)?;
        // GGUF float tensors (norms, embeddings of quantized models) dequantize to f32
        // exactly, so f32 stays the default there on every device.
        let (generic, dtype) = placement(device, opts, DType::F32)?;
        let file = File::open(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut r = GgufReader {
            content,
            file,
            path,
            device: device.clone(),
            generic,
            dtype,
        };
        let (edt, erows, ecols, ebytes) = r.raw("token_embd.weight")?;
        if ecols != cfg.hidden_size || erows < cfg.vocab_size {
            return Err(EngineError::Weights(format!(
                "token_embd.weight is {erows}x{ecols}, expected {}x{}",
                cfg.vocab_size, cfg.hidden_size
            )));
        }
        let embed = match fast_qtype(edt) {
            Some(qt) if !generic => Embedding::Quant(Arc::new(QMatrix::from_ggml_bytes(
                qt,
                erows,
                ecols,
                ebytes.clone(),
            )?)),
            _ => {
                let q = r.qtensor(edt, erows, ecols, ebytes.clone())?;
                Embedding::Dense(q.dequantize(device)?.to_dtype(dtype)?)
            }
        };
        let lm_head = if r.has("output.weight") {
            r.linear("output.weight")?
        } else {
            match &embed {
                Embedding::Quant(m) => Linear::Quant(m.clone()),
                Embedding::Dense(_) => r.linear_from(edt, erows, ecols, ebytes)?,
            }
        };
        let bias = cfg.architecture.has_qkv_bias();
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let qkv_names = [p("attn_q.weight"), p("attn_k.weight"), p("attn_v.weight")];
            let qkv_bias = [p("attn_q.bias"), p("attn_k.bias"), p("attn_v.bias")];
            let has_bias = bias && qkv_bias.iter().all(|n| r.has(n));
            layers.push(Layer {
                attn_norm: r.vector(&p("attn_norm.weight"))?,
                qkv: r.fused(&qkv_names, has_bias.then_some(&qkv_bias[..]))?,
                o: r.linear(&p("attn_output.weight"))?,
                ffn_norm: r.vector(&p("ffn_norm.weight"))?,
                gate_up: r.fused(&[p("ffn_gate.weight"), p("ffn_up.weight")], None)?,
                down: r.linear(&p("ffn_down.weight"))?,
            });
        }
        let norm = r.vector("output_norm.weight")?;
        let mut freqs = inv_freq(&cfg);
        if r.has("rope_freqs.weight") {
            // Llama 3 GGUFs store the scaling as per-frequency divisors.
            let factors = r.vector("rope_freqs.weight")?.to_vec1::<f32>()?;
            if factors.len() == freqs.len() {
                for (f, s) in freqs.iter_mut().zip(factors) {
                    *f /= s;
                }
            }
        }
        let rope = Arc::new(RopeFreqs {
            inv_freq: freqs,
            style: cfg.rope_style,
        });
        let model = Self {
            cfg,
            device: device.clone(),
            generic,
            embed,
            layers,
            norm,
            lm_head,
            rope,
        };
        model.check_shapes()?;
        Ok(model)
    }

    /// Loads Hugging Face safetensors (sharded or not); weights become f32 on CPU, and keep
    /// their dtype on CUDA unless `opts.dtype` says otherwise.
    pub fn from_safetensors(
        cfg: ModelConfig,
        shards: &[std::path::PathBuf],
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<Self> {
        // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on
        // nobody truncating the model files while they are being read at load time.
        #[allow(unsafe_code)]
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(shards)? };
        let native = match st.get("model.embed_tokens.weight").map(|t| t.dtype()) {
            Ok(safetensors::Dtype::F16) => DType::F16,
            Ok(safetensors::Dtype::BF16) => DType::BF16,
            _ => DType::F32,
        };
        let (generic, dtype) = placement(device, opts, native)?;
        let vb = candle_nn::VarBuilder::from_backend(Box::new(st), dtype, device.clone());
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            vb.get(shape, name)
                .map_err(|e| EngineError::Weights(format!("`{name}`: {e}")))
        };
        // Norm weights and biases join f32 activations.
        let get32 = |name: &str, shape: &[usize]| -> Result<Tensor> {
            Ok(get(name, shape)?.to_dtype(DType::F32)?)
        };
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (qn, kvn, inter) = (
            cfg.num_heads * hd,
            cfg.num_kv_heads * hd,
            cfg.intermediate_size,
        );
        let embed_w = get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let lm_head = if cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            Linear::Dense(embed_w.clone())
        } else {
            Linear::Dense(get("lm_head.weight", &[cfg.vocab_size, h])?)
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let q = get(&p("self_attn.q_proj.weight"), &[qn, h])?;
            let k = get(&p("self_attn.k_proj.weight"), &[kvn, h])?;
            let v = get(&p("self_attn.v_proj.weight"), &[kvn, h])?;
            let bias = if cfg.architecture.has_qkv_bias() {
                Some(Tensor::cat(
                    &[
                        get32(&p("self_attn.q_proj.bias"), &[qn])?,
                        get32(&p("self_attn.k_proj.bias"), &[kvn])?,
                        get32(&p("self_attn.v_proj.bias"), &[kvn])?,
                    ],
                    0,
                )?)
            } else {
                None
            };
            let gate = get(&p("mlp.gate_proj.weight"), &[inter, h])?;
            let up = get(&p("mlp.up_proj.weight"), &[inter, h])?;
            layers.push(Layer {
                attn_norm: get32(&p("input_layernorm.weight"), &[h])?,
                qkv: Fused {
                    linear: Linear::Dense(Tensor::cat(&[q, k, v], 0)?),
                    bias,
                    splits: vec![qn, kvn, kvn],
                },
                o: Linear::Dense(get(&p("self_attn.o_proj.weight"), &[h, qn])?),
                ffn_norm: get32(&p("post_attention_layernorm.weight"), &[h])?,
                gate_up: Fused {
                    linear: Linear::Dense(Tensor::cat(&[gate, up], 0)?),
                    bias: None,
                    splits: vec![inter, inter],
                },
                down: Linear::Dense(get(&p("mlp.down_proj.weight"), &[h, inter])?),
            });
        }
        let rope = Arc::new(RopeFreqs {
            inv_freq: inv_freq(&cfg),
            style: RopeStyle::Halves,
        });
        let model = Self {
            norm: get32("model.norm.weight", &[h])?,
            cfg,
            device: device.clone(),
            generic,
            embed: Embedding::Dense(embed_w),
            layers,
            lm_head,
            rope,
        };
        model.check_shapes()?;
        Ok(model)
    }

    fn check_shapes(&self) -> Result<()> {
        let c = &self.cfg;
        let want_qkv = vec![
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        ];
        for (i, l) in self.layers.iter().enumerate() {
            if l.qkv.splits != want_qkv || l.gate_up.splits != vec![c.intermediate_size; 2] {
                return Err(EngineError::Weights(format!(
                    "layer {i}: projection sizes {:?}/{:?} do not match the config",
                    l.qkv.splits, l.gate_up.splits
                )));
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        match &self.embed {
            Embedding::Quant(m) => {
                let h = m.cols();
                let mut out = vec![0f32; ids.len() * h];
                for (row, &id) in out.chunks_exact_mut(h).zip(ids) {
                    m.dequantize_row(id as usize, row);
                }
                Ok(Tensor::from_vec(out, (ids.len(), h), &self.device)?)
            }
            Embedding::Dense(w) => {
                let ids = Tensor::new(ids, &self.device)?;
                Ok(w.index_select(&ids, 0)?.to_dtype(DType::F32)?)
            }
        }
    }

    /// Runs one step for a batch of sequences: writes their new tokens' K/V into the cache
    /// and returns the logits of each sequence's last token, `[seqs, vocab]`.
    pub fn forward(&self, cache: &KvCache, seqs: &[BatchSeq<'_>]) -> Result<Tensor> {
        // Run the whole pass on a pool thread: its ~200 parallel regions then start from a
        // worker that takes part itself, instead of each waking the pool from outside and
        // sleeping until it is done (measured: ~15% of single-stream decode time).
        rayon::scope(|_| self.forward_inner(cache, seqs))
    }

    fn forward_inner(&self, cache: &KvCache, seqs: &[BatchSeq<'_>]) -> Result<Tensor> {
        let c = &self.cfg;
        let bs = cache.layout.block_size;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut attn = Vec::with_capacity(seqs.len());
        let mut last_rows = Vec::with_capacity(seqs.len());
        for s in seqs {
            if s.tokens.is_empty() {
                return Err(EngineError::InvalidRequest(
                    "empty sequence in batch".into(),
                ));
            }
            let end = s.start_pos + s.tokens.len();
            if end > c.max_position_embeddings {
                return Err(EngineError::InvalidRequest(format!(
                    "sequence of {end} tokens exceeds the model's context of {}",
                    c.max_position_embeddings
                )));
            }
            if end.div_ceil(bs) > s.block_table.len() {
                return Err(EngineError::KvCacheFull(format!(
                    "{end} tokens need more blocks than the table has"
                )));
            }
            if let Some(bad) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(EngineError::InvalidRequest(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            attn.push(AttnSeq {
                q_start: ids.len(),
                q_len: s.tokens.len(),
                start_pos: s.start_pos,
                block_table: s.block_table.to_vec(),
            });
            ids.extend_from_slice(s.tokens);
            positions.extend((s.start_pos..end).map(|p| p as u32));
            last_rows.push((ids.len() - 1) as u32);
        }
        let t = ids.len();
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rope_table = Arc::new(RopeTable::new(&self.rope, &positions));
        let attn_op = PagedAttentionOp {
            seqs: Arc::new(attn),
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            block_size: bs,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        // The generic path takes cos/sin as tensors on the device, once per pass.
        let rope_cs = if self.generic {
            Some(rope_table.to_tensors(&self.device)?)
        } else {
            None
        };
        let rope = |x: Tensor| -> Result<Tensor> {
            let x = x.contiguous()?;
            match &rope_cs {
                None => Ok(x.apply_op1_no_bwd(&RopeOp {
                    style: self.rope.style,
                    table: rope_table.clone(),
                })?),
                Some((cos, sin)) => {
                    // candle's kernels take [batch, heads, seq, dim] with per-batch cos/sin:
                    // each token is its own batch entry at its own position.
                    let (t, h, d) = x.dims3()?;
                    let x = x.reshape((t, h, 1, d))?;
                    let y = match self.rope.style {
                        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
                        RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, cos, sin)?,
                    };
                    Ok(y.reshape((t, h, d))?)
                }
            }
        };
        let eps = c.rms_norm_eps as f32;
        let mut x = self.embed(&ids)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let mut qkv = layer.qkv.forward(&h)?.into_iter();
            let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
                return Err(EngineError::Weights("qkv split".into()));
            };
            let q = rope(q.reshape((t, nh, hd))?)?;
            let k = rope(k.reshape((t, nkv, hd))?)?;
            let v = v.contiguous()?.reshape((t, nkv, hd))?;
            for (s, a) in seqs.iter().zip(attn_op.seqs.iter()) {
                cache.write(
                    li,
                    &k.narrow(0, a.q_start, a.q_len)?,
                    &v.narrow(0, a.q_start, a.q_len)?,
                    s.start_pos,
                    s.block_table,
                )?;
            }
            let y = if self.generic {
                generic_attention(&q, &cache.k[li], &cache.v[li], &attn_op)?
            } else {
                q.apply_op3_no_bwd(&cache.k[li], &cache.v[li], &attn_op)?
            };
            x = (x + layer.o.forward(&y.reshape((t, nh * hd))?)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let act = if !self.generic && layer.gate_up.bias.is_none() {
                layer
                    .gate_up
                    .linear
                    .forward(&h)?
                    .apply_op1_no_bwd(&SiluMulOp)?
            } else {
                let mut gu = layer.gate_up.forward(&h)?.into_iter();
                let (Some(g), Some(u)) = (gu.next(), gu.next()) else {
                    return Err(EngineError::Weights("gate/up split".into()));
                };
                (g.silu()? * u)?
            };
            x = (x + layer.down.forward(&act)?)?;
        }
        let last = x.index_select(&Tensor::new(last_rows.as_slice(), &self.device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        let logits = self.lm_head.forward(&last)?;
        Ok(logits.narrow(1, 0, c.vocab_size)?)
    }
}

/// Slot of position `pos` in the pool, through a block table.
fn slot(table: &[u32], block_size: usize, pos: usize) -> u32 {
    table[pos / block_size] * block_size as u32 + (pos % block_size) as u32
}

/// Paged attention from candle's ops, for devices without our CPU kernel (CUDA): each
/// sequence's K/V rows are gathered from the pool by slot, then masked softmax attention runs
/// as batched matmuls. Decodes (one query each) go in one batch, keys padded to the longest
/// context and masked; prompt chunks go one sequence at a time. GQA needs no repeated K/V:
/// the query heads of a KV head are laid out as extra rows against it.
/// `q`: `[tokens, heads, head_dim]`; pools: `[slots, kv_heads, head_dim]`.
fn generic_attention(
    q: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    op: &PagedAttentionOp,
) -> Result<Tensor> {
    let (h, kvh, d, bs) = (op.num_heads, op.num_kv_heads, op.head_dim, op.block_size);
    let rep = h / kvh.max(1);
    let dev = q.device();
    let scale = op.scale as f64;
    // Out-of-range slots would read outside the pool on the device: check them here, as the
    // CPU kernel does.
    let pool_blocks = kc.dim(0)? / bs.max(1);
    for s in op.seqs.iter() {
        let blocks = (s.start_pos + s.q_len).div_ceil(bs.max(1));
        if blocks > s.block_table.len() {
            return Err(EngineError::KvCacheFull(
                "attention: block table too short for the sequence".into(),
            ));
        }
        if s.block_table[..blocks]
            .iter()
            .any(|&b| b as usize >= pool_blocks)
        {
            return Err(EngineError::KvCacheFull(
                "attention: block id beyond the pool".into(),
            ));
        }
    }
    let gather = |slots: Vec<u32>, rows: usize, ctx: usize| -> Result<(Tensor, Tensor)> {
        let idx = Tensor::from_vec(slots, rows * ctx, dev)?;
        // [rows, kv_heads, ctx, head_dim]
        let take = |pool: &Tensor| -> Result<Tensor> {
            Ok(pool
                .index_select(&idx, 0)?
                .reshape((rows, ctx, kvh, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        Ok((take(kc)?, take(vc)?))
    };
    let decodes: Vec<&AttnSeq> = op.seqs.iter().filter(|s| s.q_len == 1).collect();
    let decoded = if decodes.is_empty() {
        None
    } else {
        let n = decodes.len();
        let max_ctx = decodes.iter().map(|s| s.start_pos + 1).max().unwrap_or(1);
        let mut slots = Vec::with_capacity(n * max_ctx);
        let mut mask = Vec::with_capacity(n * max_ctx);
        let mut rows = Vec::with_capacity(n);
        for s in &decodes {
            rows.push(s.q_start as u32);
            for j in 0..max_ctx {
                let live = j <= s.start_pos;
                // Padding reads slot 0 and is masked out.
                slots.push(if live { slot(&s.block_table, bs, j) } else { 0 });
                mask.push(if live { 0f32 } else { f32::NEG_INFINITY });
            }
        }
        let (k, v) = gather(slots, n, max_ctx)?;
        let rows = Tensor::from_vec(rows, n, dev)?;
        let qd = q.index_select(&rows, 0)?.reshape((n, kvh, rep, d))?;
        let mask = Tensor::from_vec(mask, (n, 1, 1, max_ctx), dev)?;
        let scores = (qd.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        Some(p.matmul(&v)?.reshape((n, h, d))?)
    };
    let mut outs = Vec::with_capacity(op.seqs.len());
    let mut next_decode = 0;
    for s in op.seqs.iter() {
        if s.q_len == 1 {
            if let Some(y) = &decoded {
                outs.push(y.narrow(0, next_decode, 1)?);
                next_decode += 1;
            }
            continue;
        }
        let (ql, ctx) = (s.q_len, s.start_pos + s.q_len);
        let slots = (0..ctx).map(|j| slot(&s.block_table, bs, j)).collect();
        let (k, v) = gather(slots, 1, ctx)?;
        let (k, v) = (k.squeeze(0)?, v.squeeze(0)?);
        // [kv_heads, rep * q_len, head_dim]: row r * q_len + i is query i of head g * rep + r.
        let qs = q
            .narrow(0, s.q_start, ql)?
            .reshape((ql, kvh, rep, d))?
            .permute((1, 2, 0, 3))?
            .contiguous()?
            .reshape((kvh, rep * ql, d))?;
        let mut mask = Vec::with_capacity(ql * ctx);
        for i in 0..ql {
            for j in 0..ctx {
                mask.push(if j <= s.start_pos + i {
                    0f32
                } else {
                    f32::NEG_INFINITY
                });
            }
        }
        let mask = Tensor::from_vec(mask, (1, 1, ql, ctx), dev)?;
        let scores = (qs.matmul(&k.t()?)? * scale)?
            .reshape((kvh, rep, ql, ctx))?
            .broadcast_add(&mask)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?.reshape((kvh, rep * ql, ctx))?;
        let y = p
            .matmul(&v)?
            .reshape((kvh, rep, ql, d))?
            .permute((2, 0, 1, 3))?
            .reshape((ql, h, d))?;
        outs.push(y);
    }
    Ok(Tensor::cat(&outs, 0)?)
}
