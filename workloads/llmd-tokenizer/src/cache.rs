//! Encoding with a cache of text pieces, for callers that tokenize the same text again and
//! again (a scheduler sees each chat's system prompt and history on every turn).
//!
//! The tokenizer splits text at added tokens (`<|im_start|>` …) before anything else and
//! encodes the pieces between them independently; so the pieces can be cached one by one
//! and the result is exactly `encode(text, false)`. That holds when added tokens match
//! their literal text (no stripping, no single-word rule, not normalized); a tokenizer with
//! such tokens is cached by whole text instead, which is just as exact.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::{Tokenizer, TokenizerError};

/// Pieces shorter than this are encoded each time: hashing them costs about as much.
const MIN_CACHED_BYTES: usize = 32;

struct Piece {
    text: Box<str>,
    ids: Arc<[u32]>,
}

/// Two generations: lookups promote to the young one; when it holds half the budget it
/// becomes the old one and the previous old one is dropped (an LRU approximation with
/// O(1) work and a bounded size).
struct Generations {
    young: HashMap<u64, Piece>,
    old: HashMap<u64, Piece>,
    young_tokens: usize,
}

pub struct CachedEncoder {
    tok: Tokenizer,
    /// Added tokens (content, id), or `None` when pieces cannot be split off exactly.
    splitter: Option<Vec<(String, u32)>>,
    /// First bytes of the added tokens, to skip most positions quickly.
    first_bytes: [bool; 256],
    cache: Mutex<Generations>,
    hasher: RandomState,
    max_tokens: usize,
}

impl CachedEncoder {
    /// Keeps about `max_tokens` token ids cached.
    pub fn new(tok: Tokenizer, max_tokens: usize) -> Self {
        let added = tok.inner.tok.get_added_tokens_decoder();
        let exact = added
            .values()
            .all(|t| !t.lstrip && !t.rstrip && !t.single_word && !t.normalized);
        let splitter = exact.then(|| {
            let mut v: Vec<(String, u32)> = added
                .iter()
                .filter(|(_, t)| !t.content.is_empty())
                .map(|(id, t)| (t.content.clone(), *id))
                .collect();
            // Longest first: the match at a position is the longest one.
            v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
            v
        });
        let mut first_bytes = [false; 256];
        for (s, _) in splitter.iter().flatten() {
            if let Some(&b) = s.as_bytes().first() {
                first_bytes[b as usize] = true;
            }
        }
        Self {
            tok,
            splitter,
            first_bytes,
            cache: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
                young_tokens: 0,
            }),
            hasher: RandomState::new(),
            max_tokens: max_tokens.max(1),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    /// Exactly `tokenizer().encode(text, false)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let Some(added) = &self.splitter else {
            return self.piece(text).map(|ids| ids.to_vec());
        };
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let (mut start, mut i) = (0, 0);
        while i < bytes.len() {
            if self.first_bytes[bytes[i] as usize] {
                let rest = &text[i..];
                if let Some((s, id)) = added.iter().find(|(s, _)| rest.starts_with(s.as_str())) {
                    if start < i {
                        out.extend_from_slice(&self.piece(&text[start..i])?);
                    }
                    out.push(*id);
                    i += s.len();
                    start = i;
                    continue;
                }
            }
            i += 1;
            // Stay on character boundaries (added tokens start on one).
            while i < bytes.len() && !text.is_char_boundary(i) {
                i += 1;
            }
        }
        if start < bytes.len() {
            out.extend_from_slice(&self.piece(&text[start..])?);
        }
        Ok(out)
    }

    /// The ids of a piece holding no added token.
    fn piece(&self, text: &str) -> Result<Arc<[u32]>, TokenizerError> {
        if text.len() < MIN_CACHED_BYTES {
            return Ok(self.tok.encode(text, false)?.into());
        }
        let key = self.hasher.hash_one(text);
        {
            let mut g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = g.young.get(&key).filter(|p| &*p.text == text) {
                return Ok(p.ids.clone());
            }
            if let Some(p) = g.old.remove(&key) {
                if &*p.text == text {
                    let ids = p.ids.clone();
                    g.young_tokens += ids.len();
                    g.young.insert(key, p);
                    return Ok(ids);
                }
            }
        }
        // Encoded outside the lock: other requests go on meanwhile.
        let ids: Arc<[u32]> = self.tok.encode(text, false)?.into();
        let mut g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if g.young_tokens + ids.len() > self.max_tokens / 2 {
            g.old = std::mem::take(&mut g.young);
            g.young_tokens = 0;
        }
        g.young_tokens += ids.len();
        g.young.insert(
            key,
            Piece {
                text: text.into(),
                ids: ids.clone(),
            },
        );
        Ok(ids)
    }
}
