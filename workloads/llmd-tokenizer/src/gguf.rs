//! Building a `tokenizers` tokenizer from the vocabulary stored in GGUF metadata, the way
//! llama.cpp interprets it (`tokenizer.ggml.*`).

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::sequence::Sequence as ProcessorSequence;
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior,
};

use crate::error::{backend, TokenizerError};
use crate::Meta;

/// Tokenizer data as stored in GGUF metadata (the engine fills this from candle's gguf reader).
/// Field names follow the `tokenizer.ggml.*` keys.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer flavour of a "gpt2" vocabulary.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    pub scores: Option<Vec<f32>>,
    pub merges: Option<Vec<String>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Texts llama.cpp treats as end-of-generation when they are control tokens; GGUF keeps a
/// single eos id, but chat models end turns with these.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
];

// Pre-tokenizer regexes as in the HF tokenizer.json files of these families.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer families of llama.cpp's `LLAMA_VOCAB_PRE_TYPE_*` that we reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pre {
    /// GPT-2's regex (ByteLevel with `use_regex`).
    Gpt2,
    /// StarCoder/SmolLM: every digit on its own, then GPT-2's regex.
    DigitsGpt2,
    /// Llama 3's regex; `ignore_merges` and BOS by default.
    Llama3,
    /// Same regex as Llama 3 but llama.cpp keeps merges and adds no BOS.
    Llama3Regex,
    /// Qwen2's regex (single digits) with NFC normalization.
    Qwen2,
    /// Mistral's tekken regex; `ignore_merges` and BOS by default.
    Tekken,
}

fn pre_kind(pre: Option<&str>) -> Pre {
    match pre {
        None => {
            tracing::warn!(
                "GGUF vocabulary has no tokenizer.ggml.pre; using the gpt2 pre-tokenizer"
            );
            Pre::Gpt2
        }
        Some(
            "default" | "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "exaone4"
            | "trillion",
        ) => Pre::Gpt2,
        Some(
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b",
        ) => Pre::DigitsGpt2,
        Some(
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
            | "lfm2",
        ) => Pre::Llama3,
        Some("dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4") => Pre::Llama3Regex,
        Some("qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan") => Pre::Qwen2,
        Some("tekken") => Pre::Tekken,
        Some(other) => {
            tracing::warn!(
                pre = other,
                "unknown GGUF pre-tokenizer; falling back to gpt2"
            );
            Pre::Gpt2
        }
    }
}

/// Builds the tokenizer and its metadata from GGUF vocabulary data.
pub(crate) fn build(v: GgufVocab) -> Result<(tokenizers::Tokenizer, Meta), TokenizerError> {
    let n = v.tokens.len();
    if n == 0 {
        return Err(TokenizerError::InvalidVocab("no tokens".into()));
    }
    if u32::try_from(n).is_err() {
        return Err(TokenizerError::InvalidVocab(format!(
            "{n} tokens do not fit u32 ids"
        )));
    }
    let types = match &v.token_types {
        Some(t) if t.len() != n => {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} token types for {n} tokens",
                t.len()
            )))
        }
        Some(t) => t.clone(),
        None => vec![TYPE_NORMAL; n],
    };
    for (name, id) in [
        ("bos", v.bos_token_id),
        ("eos", v.eos_token_id),
        ("unknown", v.unknown_token_id),
        ("padding", v.padding_token_id),
    ] {
        if let Some(id) = id {
            if id as usize >= n {
                return Err(TokenizerError::InvalidVocab(format!(
                    "{name} token id {id} >= vocab size {n}"
                )));
            }
        }
    }

    let vocab = vocab_map(&v.tokens);
    let (mut tok, default_add_bos) = match v.model.as_str() {
        "gpt2" => gpt2(&v, vocab)?,
        "llama" => spm(&v, &types, vocab)?,
        other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
    };

    // Control/unknown tokens match as whole special tokens (skipped by skip_special_tokens);
    // user-defined ones match as whole tokens but are ordinary text when decoding, as in
    // llama.cpp.
    let added: Vec<AddedToken> = v
        .tokens
        .iter()
        .zip(&types)
        .filter_map(|(t, &ty)| match ty {
            TYPE_CONTROL | TYPE_UNKNOWN => {
                Some(AddedToken::from(t.clone(), true).normalized(false))
            }
            TYPE_USER_DEFINED => Some(AddedToken::from(t.clone(), false).normalized(false)),
            _ => None,
        })
        .filter(|t| !t.content.is_empty())
        .collect();
    let (special, normal): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
    tok.add_special_tokens(special).map_err(backend)?;
    tok.add_tokens(normal).map_err(backend)?;

    let token = |id: Option<u32>| id.and_then(|i| v.tokens.get(i as usize).cloned());
    let add_bos = v.add_bos_token.unwrap_or(default_add_bos) && v.bos_token_id.is_some();
    let add_eos = v.add_eos_token.unwrap_or(false) && v.eos_token_id.is_some();
    if v.add_bos_token == Some(true) && v.bos_token_id.is_none() {
        tracing::warn!("GGUF asks for a BOS token but has no bos_token_id; adding none");
    }
    let template = bos_eos_template(
        add_bos.then(|| (v.bos_token_id, token(v.bos_token_id))),
        add_eos.then(|| (v.eos_token_id, token(v.eos_token_id))),
    )?;
    let byte_level = v.model == "gpt2";
    let processor: Option<PostProcessorWrapper> = match (template, byte_level) {
        (None, false) => None,
        (None, true) => Some(ByteLevel::new(false, true, true).into()),
        (Some(t), false) => Some(t.into()),
        (Some(t), true) => Some(
            ProcessorSequence::new(vec![ByteLevel::new(false, true, true).into(), t.into()]).into(),
        ),
    };
    tok.with_post_processor(processor);

    let mut eos_ids: Vec<u32> = v.eos_token_id.into_iter().collect();
    for (id, (t, &ty)) in v.tokens.iter().zip(&types).enumerate() {
        // `id < n` fits u32, checked above.
        let id = id as u32;
        if ty == TYPE_CONTROL && EOG_TEXTS.contains(&t.as_str()) && !eos_ids.contains(&id) {
            eos_ids.push(id);
        }
    }

    let meta = Meta {
        chat_template: v.chat_template.clone(),
        bos_token: token(v.bos_token_id),
        eos_token: token(v.eos_token_id),
        unk_token: token(v.unknown_token_id),
        pad_token: token(v.padding_token_id),
        bos_token_id: v.bos_token_id,
        eos_token_ids: eos_ids,
        add_bos_token: add_bos,
        vocab_size: n,
    };
    Ok((tok, meta))
}

/// token → id with ids = indices; on duplicate strings the first id wins (later duplicates
/// cannot be produced by encoding and do not decode).
fn vocab_map(tokens: &[String]) -> Vocab {
    let mut vocab = Vocab::with_capacity(tokens.len());
    let mut dups = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        // Fits u32: checked by the caller.
        match vocab.entry(t.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => dups += 1,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(i as u32);
            }
        }
    }
    if dups > 0 {
        tracing::warn!(
            dups,
            "GGUF vocabulary has duplicate token strings; the first id of each is used"
        );
    }
    vocab
}

fn bos_eos_template(
    bos: Option<(Option<u32>, Option<String>)>,
    eos: Option<(Option<u32>, Option<String>)>,
) -> Result<Option<TemplateProcessing>, TokenizerError> {
    let mut single: Vec<String> = Vec::new();
    let mut pair: Vec<String> = Vec::new();
    let mut specials = Vec::new();
    // Template keys are fixed names: the token text may contain ':' or spaces, which the
    // template syntax would misread.
    let bos = match bos {
        Some((Some(id), Some(text))) => {
            specials.push(SpecialToken::new("BOS".into(), vec![id], vec![text]).map_err(backend)?);
            true
        }
        _ => false,
    };
    let eos = match eos {
        Some((Some(id), Some(text))) => {
            specials.push(SpecialToken::new("EOS".into(), vec![id], vec![text]).map_err(backend)?);
            true
        }
        _ => false,
    };
    if !bos && !eos {
        return Ok(None);
    }
    for (seq, type_id) in [("$A", 0), ("$B", 1)] {
        let mut part = Vec::new();
        if bos {
            part.push(format!("BOS:{type_id}"));
        }
        part.push(format!("{seq}:{type_id}"));
        if eos {
            part.push(format!("EOS:{type_id}"));
        }
        if seq == "$A" {
            single.clone_from(&part);
        }
        pair.extend(part);
    }
    let t = TemplateProcessing::builder()
        .try_single(single)
        .map_err(backend)?
        .try_pair(pair)
        .map_err(backend)?
        .special_tokens(specials)
        .build()
        .map_err(backend)?;
    Ok(Some(t))
}

/// Byte-level BPE ("gpt2"): returns the tokenizer and whether BOS is added by default.
fn gpt2(v: &GgufVocab, vocab: Vocab) -> Result<(tokenizers::Tokenizer, bool), TokenizerError> {
    let merges = v.merges.as_deref().ok_or_else(|| {
        TokenizerError::InvalidVocab("gpt2 vocabulary without tokenizer.ggml.merges".into())
    })?;
    let mut pairs = Vec::with_capacity(merges.len());
    let mut skipped = 0usize;
    for m in merges {
        // Split at the first space after the first char, as llama.cpp does, so a merge whose
        // left side starts with a space still parses.
        let Some((a, b)) = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(i, _)| (&m[..i], &m[i + 1..]))
        else {
            skipped += 1;
            continue;
        };
        if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        {
            pairs.push((a.to_owned(), b.to_owned()));
        } else {
            skipped += 1;
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "ignored GGUF merges that are malformed or leave the vocabulary"
        );
    }

    let pre = pre_kind(v.pre.as_deref());
    let ignore_merges = matches!(pre, Pre::Llama3 | Pre::Tekken);
    let model = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(backend)?;

    let split = |re: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        Ok(Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(backend)?
        .into())
    };
    let bytes_only: PreTokenizerWrapper = ByteLevel::new(false, true, false).into();
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        Pre::Gpt2 => ByteLevel::new(false, true, true).into(),
        Pre::DigitsGpt2 => PreSequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        Pre::Llama3 | Pre::Llama3Regex => {
            PreSequence::new(vec![split(LLAMA3_REGEX)?, bytes_only]).into()
        }
        Pre::Qwen2 => PreSequence::new(vec![split(QWEN2_REGEX)?, bytes_only]).into(),
        Pre::Tekken => PreSequence::new(vec![split(TEKKEN_REGEX)?, bytes_only]).into(),
    };
    let normalizer: Option<NormalizerWrapper> = (pre == Pre::Qwen2).then(|| NFC.into());

    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_normalizer(normalizer).map_err(backend)?;
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    Ok((tok, matches!(pre, Pre::Llama3 | Pre::Tekken)))
}

/// SentencePiece BPE ("llama"): returns the tokenizer and whether BOS is added by default.
fn spm(
    v: &GgufVocab,
    types: &[i32],
    vocab: Vocab,
) -> Result<(tokenizers::Tokenizer, bool), TokenizerError> {
    let n = v.tokens.len();
    let scores: Vec<f32> = match &v.scores {
        Some(s) if s.len() != n => {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} scores for {n} tokens",
                s.len()
            )));
        }
        Some(s) => s.clone(),
        // Without scores the earlier (more frequent) piece merges first.
        None => (0..n).map(|i| -(i as f32)).collect(),
    };
    let merges = spm_merges(&v.tokens, types, &scores, &vocab);

    let unk = v
        .unknown_token_id
        .and_then(|id| v.tokens.get(id as usize).cloned())
        .or_else(|| vocab.contains_key("<unk>").then(|| "<unk>".to_owned()));
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let model = builder.build().map_err(backend)?;

    let add_space_prefix = v.add_space_prefix.unwrap_or(true);
    // Like HF's legacy Llama tokenizer (and llama.cpp): "▁" is prepended to every text
    // segment, including the one after a special token.
    let replace: NormalizerWrapper = Replace::new(" ", "▁").map_err(backend)?.into();
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), replace]).into()
    } else {
        replace
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(backend)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_normalizer(Some(normalizer)).map_err(backend)?;
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok((tok, true))
}

/// Merges for a SentencePiece BPE vocabulary, as HF's `SentencePieceExtractor` derives them:
/// every split of a piece into two pieces of the vocabulary is a merge, ranked by the merged
/// piece's score (higher first), ties by the merged piece's id, then the halves' ids. llama.cpp's SPM tokenizer
/// likewise merges the best-scoring bigram first.
fn spm_merges(
    tokens: &[String],
    types: &[i32],
    scores: &[f32],
    vocab: &Vocab,
) -> Vec<(String, String)> {
    // Only ordinary pieces take part: control/byte/unused tokens are never formed by merging.
    let mergeable = |id: u32| {
        matches!(
            types.get(id as usize),
            Some(&TYPE_NORMAL | &TYPE_USER_DEFINED)
        )
    };
    let mut merges: Vec<(f32, u32, u32, u32, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        // First occurrence only (duplicates map elsewhere) and ordinary pieces only.
        if vocab.get(piece).copied() != Some(id as u32) || !mergeable(id as u32) {
            continue;
        }
        let Some(&score) = scores.get(id) else {
            continue;
        };
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                if mergeable(li) && mergeable(ri) {
                    merges.push((score, id as u32, li, ri, l, r));
                }
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    merges
        .into_iter()
        .map(|(_, _, _, _, l, r)| (l.to_owned(), r.to_owned()))
        .collect()
}
