//! Tiny random-weight llama models for tests: GGUF (quantized) and Hugging Face safetensors
//! (f32 / f16 / bf16), with a byte-level BPE tokenizer, generated in a temporary directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

pub const HIDDEN: usize = 64;
pub const INTER: usize = 128;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const CONTEXT: usize = 512;
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// GPT-2's printable stand-in for each byte.
fn byte_char(b: u8) -> char {
    let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable {
        return b as char;
    }
    let rank = (0..b)
        .filter(|&x| !((33..=126).contains(&x) || (161..=172).contains(&x) || x >= 174))
        .count();
    char::from_u32(256 + rank as u32).unwrap_or('?')
}

/// The vocabulary: 256 byte tokens, two merges, three specials.
pub fn vocab() -> Vec<String> {
    let mut v: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    v.push(format!("{}t", byte_char(b' ')));
    v.push("he".into());
    v.extend(SPECIALS.iter().map(|s| s.to_string()));
    v
}

pub fn merges() -> Vec<String> {
    vec![format!("{} t", byte_char(b' ')), "h e".into()]
}

pub fn vocab_size() -> usize {
    vocab().len()
}

pub fn eos_id() -> u32 {
    (vocab_size() - 3) as u32
}

/// Deterministic pseudo-random normal-ish values (sum of uniforms), scaled.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        let mut s = 0f32;
        for _ in 0..4 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s += ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
        }
        s * 1.7
    }
    fn tensor(&mut self, shape: &[usize], std: f32, mean: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| mean + std * self.next()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// Weights by Hugging Face name, f32.
pub fn weights(seed: u64, qkv_bias: bool) -> Vec<(String, Tensor)> {
    let mut r = Rng(seed);
    let v = vocab_size();
    let mut w = vec![
        (
            "model.embed_tokens.weight".to_string(),
            r.tensor(&[v, HIDDEN], 0.5, 0.0),
        ),
        (
            "model.norm.weight".to_string(),
            r.tensor(&[HIDDEN], 0.1, 1.0),
        ),
        (
            "lm_head.weight".to_string(),
            r.tensor(&[v, HIDDEN], 0.3, 0.0),
        ),
    ];
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let kv = KV_HEADS * HEAD_DIM;
        w.push((p("input_layernorm.weight"), r.tensor(&[HIDDEN], 0.1, 1.0)));
        w.push((
            p("post_attention_layernorm.weight"),
            r.tensor(&[HIDDEN], 0.1, 1.0),
        ));
        w.push((
            p("self_attn.q_proj.weight"),
            r.tensor(&[HIDDEN, HIDDEN], 0.25, 0.0),
        ));
        w.push((
            p("self_attn.k_proj.weight"),
            r.tensor(&[kv, HIDDEN], 0.25, 0.0),
        ));
        w.push((
            p("self_attn.v_proj.weight"),
            r.tensor(&[kv, HIDDEN], 0.25, 0.0),
        ));
        w.push((
            p("self_attn.o_proj.weight"),
            r.tensor(&[HIDDEN, HIDDEN], 0.15, 0.0),
        ));
        w.push((
            p("mlp.gate_proj.weight"),
            r.tensor(&[INTER, HIDDEN], 0.2, 0.0),
        ));
        w.push((
            p("mlp.up_proj.weight"),
            r.tensor(&[INTER, HIDDEN], 0.2, 0.0),
        ));
        w.push((
            p("mlp.down_proj.weight"),
            r.tensor(&[HIDDEN, INTER], 0.15, 0.0),
        ));
        if qkv_bias {
            w.push((p("self_attn.q_proj.bias"), r.tensor(&[HIDDEN], 0.1, 0.0)));
            w.push((p("self_attn.k_proj.bias"), r.tensor(&[kv], 0.1, 0.0)));
            w.push((p("self_attn.v_proj.bias"), r.tensor(&[kv], 0.1, 0.0)));
        }
    }
    w
}

/// GGUF stores q/k rows permuted so that RoPE pairs are adjacent (llama.cpp's converter).
fn permute_qk(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Writes a llama GGUF with linear layers in `qtype`, token embedding Q8_0.
pub fn write_gguf(dir: &Path, seed: u64, qtype: GgmlDType, arch: &str) -> PathBuf {
    let w = weights(seed, false);
    let get = |n: &str| {
        w.iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let q = |t: &Tensor, dt: GgmlDType| QTensor::quantize(t, dt).unwrap();
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            q(&get("model.embed_tokens.weight"), GgmlDType::Q8_0),
        ),
        (
            "output_norm.weight".into(),
            q(&get("model.norm.weight"), GgmlDType::F32),
        ),
        ("output.weight".into(), q(&get("lm_head.weight"), qtype)),
    ];
    for l in 0..LAYERS {
        let hf = |s: &str| get(&format!("model.layers.{l}.{s}"));
        let g = |s: &str| format!("blk.{l}.{s}");
        tensors.push((
            g("attn_norm.weight"),
            q(&hf("input_layernorm.weight"), GgmlDType::F32),
        ));
        tensors.push((
            g("ffn_norm.weight"),
            q(&hf("post_attention_layernorm.weight"), GgmlDType::F32),
        ));
        tensors.push((
            g("attn_q.weight"),
            q(&permute_qk(&hf("self_attn.q_proj.weight"), HEADS), qtype),
        ));
        tensors.push((
            g("attn_k.weight"),
            q(&permute_qk(&hf("self_attn.k_proj.weight"), KV_HEADS), qtype),
        ));
        tensors.push((g("attn_v.weight"), q(&hf("self_attn.v_proj.weight"), qtype)));
        tensors.push((
            g("attn_output.weight"),
            q(&hf("self_attn.o_proj.weight"), qtype),
        ));
        tensors.push((g("ffn_gate.weight"), q(&hf("mlp.gate_proj.weight"), qtype)));
        tensors.push((g("ffn_up.weight"), q(&hf("mlp.up_proj.weight"), qtype)));
        tensors.push((g("ffn_down.weight"), q(&hf("mlp.down_proj.weight"), qtype)));
    }
    let u = |x: usize| Value::U32(x as u32);
    let strs = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let types: Vec<Value> = (0..vocab_size())
        .map(|i| Value::I32(if i >= vocab_size() - 3 { 3 } else { 1 }))
        .collect();
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("llama.block_count".into(), u(LAYERS)),
        ("llama.context_length".into(), u(CONTEXT)),
        ("llama.embedding_length".into(), u(HIDDEN)),
        ("llama.feed_forward_length".into(), u(INTER)),
        ("llama.attention.head_count".into(), u(HEADS)),
        ("llama.attention.head_count_kv".into(), u(KV_HEADS)),
        ("llama.rope.dimension_count".into(), u(HEAD_DIM)),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.vocab_size".into(), u(vocab_size())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), strs(vocab())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), strs(merges())),
        ("tokenizer.ggml.bos_token_id".into(), u(vocab_size() - 2)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos_id())),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    let path = dir.join(format!("tiny-{}.gguf", qtype_name(qtype)));
    let mut f = std::fs::File::create(&path).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    path
}

fn qtype_name(q: GgmlDType) -> &'static str {
    match q {
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q8_0 => "q8_0",
        _ => "other",
    }
}

/// Writes a Hugging Face model directory: config.json, tokenizer.json,
/// tokenizer_config.json and model.safetensors in `dtype`.
pub fn write_safetensors(dir: &Path, seed: u64, dtype: DType, model_type: &str) -> PathBuf {
    let qkv_bias = model_type == "qwen2";
    let d = dir.join(format!("tiny-{model_type}-{dtype:?}"));
    std::fs::create_dir_all(&d).unwrap();
    let w: std::collections::HashMap<String, Tensor> = weights(seed, qkv_bias)
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&w, d.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": model_type, "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size(), "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": CONTEXT,
        "tie_word_embeddings": false, "bos_token_id": vocab_size() - 2, "eos_token_id": eos_id(),
        "torch_dtype": format!("{dtype:?}").to_lowercase(),
    });
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = vocab()
        .into_iter()
        .enumerate()
        .take(vocab_size() - 3)
        .map(|(i, t)| (t, serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": vocab_size() - 3 + i, "content": s, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges()},
    });
    std::fs::write(d.join("tokenizer.json"), tok.to_string()).unwrap();
    let tc = serde_json::json!({
        "bos_token": SPECIALS[1], "eos_token": SPECIALS[0],
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    });
    std::fs::write(d.join("tokenizer_config.json"), tc.to_string()).unwrap();
    d
}

/// A resolved model for the engine's loaders.
pub fn resolve(path: &Path) -> llmd_models::ResolvedModel {
    llmd_models::resolve(
        &llmd_models::ModelSource::Path(path.to_path_buf()),
        &llmd_models::FetchOptions {
            home: path.parent().unwrap().to_path_buf(),
            progress: false,
        },
    )
    .unwrap()
}

/// Teacher-forced greedy comparison: `a` decodes greedily, `b` follows a's tokens; wherever
/// their greedy picks differ, a's two best logits must be within `margin` of each other — a
/// near tie that rounding may flip, not an error. Returns the number of such flips.
pub fn greedy_agree(
    a: &llmd_engine::Engine,
    b: &llmd_engine::Engine,
    prompt: &[u32],
    steps: usize,
    margin: f32,
) -> usize {
    let (mut sa, mut sb) = (
        llmd_engine::SeqBlocks::new(a),
        llmd_engine::SeqBlocks::new(b),
    );
    sa.ensure(prompt.len()).unwrap();
    sb.ensure(prompt.len()).unwrap();
    let mut la = a.step(prompt, 0, &sa.blocks).unwrap();
    let mut lb = b.step(prompt, 0, &sb.blocks).unwrap();
    let mut mismatches = 0;
    for (i, pos) in (0..steps).zip(prompt.len()..) {
        let (ta, tb) = (
            llmd_engine::sampling::argmax(&la),
            llmd_engine::sampling::argmax(&lb),
        );
        if ta != tb {
            let mut top = la.clone();
            top.sort_by(|x, y| y.total_cmp(x));
            assert!(
                top[0] - top[1] <= margin,
                "step {i}: greedy token {ta} vs {tb}, and the top two logits are {} apart",
                top[0] - top[1]
            );
            mismatches += 1;
        }
        sa.ensure(pos + 1).unwrap();
        sb.ensure(pos + 1).unwrap();
        la = a.step(&[ta], pos, &sa.blocks).unwrap();
        lb = b.step(&[ta], pos, &sb.blocks).unwrap();
    }
    mismatches
}
