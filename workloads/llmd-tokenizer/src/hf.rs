//! Loading the Hugging Face layout: `tokenizer.json` plus the special tokens and chat template
//! of `tokenizer_config.json` and the eos ids of `generation_config.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{backend, TokenizerError};
use crate::Meta;

fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    serde_json::from_str(&read(path)?).map_err(|e| TokenizerError::InvalidConfig {
        path: path.to_owned(),
        msg: e.to_string(),
    })
}

/// A special token in tokenizer_config.json: a string, or an AddedToken object with "content".
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which HF uses "default".
fn chat_template(v: &Value, path: &Path) -> Result<Option<String>, TokenizerError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(list) => {
            let named = |want: &str| {
                list.iter().find_map(|e| {
                    (e.get("name")?.as_str()? == want)
                        .then(|| e.get("template")?.as_str().map(str::to_owned))?
                })
            };
            if let Some(t) = named("default") {
                return Ok(Some(t));
            }
            let first = list
                .iter()
                .find_map(|e| e.get("template")?.as_str().map(str::to_owned));
            if first.is_some() {
                tracing::warn!(path = %path.display(), "no \"default\" chat template; using the first one");
            }
            Ok(first)
        }
        _ => Err(TokenizerError::InvalidConfig {
            path: path.to_owned(),
            msg: "chat_template is neither a string nor a list".into(),
        }),
    }
}

/// `eos_token_id` in generation_config.json: an int or a list of ints.
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .into_iter()
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Newer checkpoints keep the template beside the config: chat_template.jinja, or
/// chat_template.json `{"chat_template": ...}`.
fn sibling_template(dir: &Path) -> Result<Option<String>, TokenizerError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return read(&jinja).map(Some);
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        let v = read_json(&json)?;
        return chat_template(v.get("chat_template").unwrap_or(&Value::Null), &json);
    }
    Ok(None)
}

pub(crate) fn load(
    tokenizer_json: &Path,
    tokenizer_config_json: Option<&Path>,
    generation_config_json: Option<&Path>,
) -> Result<(tokenizers::Tokenizer, Meta), TokenizerError> {
    let tok: tokenizers::Tokenizer =
        read(tokenizer_json)?
            .parse()
            .map_err(|e| TokenizerError::InvalidConfig {
                path: tokenizer_json.to_owned(),
                msg: format!("{e}"),
            })?;

    let config = tokenizer_config_json
        .map(read_json)
        .transpose()?
        .unwrap_or(Value::Null);
    let generation = generation_config_json
        .map(read_json)
        .transpose()?
        .unwrap_or(Value::Null);

    let mut template = match config.get("chat_template") {
        Some(v) => chat_template(v, tokenizer_config_json.unwrap_or(tokenizer_json))?,
        None => None,
    };
    if template.is_none() {
        let dir: PathBuf = tokenizer_config_json
            .unwrap_or(tokenizer_json)
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        template = sibling_template(&dir)?;
    }

    let bos_token = token_text(config.get("bos_token"));
    let eos_token = token_text(config.get("eos_token"));
    let id_of = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_to_id(t));
    let bos_token_id =
        id_of(&bos_token).or_else(|| ids(generation.get("bos_token_id")).first().copied());

    let mut eos_token_ids: Vec<u32> = id_of(&eos_token).into_iter().collect();
    for id in ids(generation.get("eos_token_id")) {
        if !eos_token_ids.contains(&id) {
            eos_token_ids.push(id);
        }
    }

    // Whether the tokenizer's own post-processor adds BOS (what encode(add_special_tokens)
    // does); tokenizer_config's add_bos_token is already baked into tokenizer.json.
    let add_bos_token = match bos_token_id {
        Some(bos) => {
            let first = |special| {
                tok.encode_fast("a", special)
                    .map(|e| e.get_ids().first().copied())
                    .map_err(backend)
            };
            first(true)? == Some(bos) && first(false)? != Some(bos)
        }
        None => false,
    };

    let meta = Meta {
        chat_template: template,
        bos_token: bos_token.or_else(|| bos_token_id.and_then(|id| tok.id_to_token(id))),
        eos_token: eos_token.or_else(|| eos_token_ids.first().and_then(|&id| tok.id_to_token(id))),
        unk_token: token_text(config.get("unk_token")),
        pad_token: token_text(config.get("pad_token")),
        bos_token_id,
        eos_token_ids,
        add_bos_token,
        vocab_size: tok.get_vocab_size(true),
    };
    Ok((tok, meta))
}
