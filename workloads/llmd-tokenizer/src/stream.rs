//! Streaming detokenization, the vLLM way: decode a small window of ids with and without the
//! newest ones and emit the difference once it no longer ends in an incomplete character.

use crate::error::TokenizerError;
use crate::Tokenizer;

/// Tokens pending without a complete character after which the text is released anyway: one
/// character is at most 4 bytes, so this many pending tokens mean invalid UTF-8 from the
/// model, which the caller should see (as U+FFFD) rather than wait for forever.
const MAX_PENDING: usize = 16;

/// Turns generated ids into text incrementally. Special tokens are skipped, as vLLM does by
/// default. Created by [`Tokenizer::decoder`].
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    tok: Tokenizer,
    /// The window: ids from `prefix_offset` on; ids before it were emitted and are dropped.
    ids: Vec<u32>,
    /// Start of the ids emitted last time: decoding from here gives the context (leading
    /// spaces, merged bytes) for the ids after `read_offset`.
    prefix_offset: usize,
    /// Ids before this have been emitted.
    read_offset: usize,
}

impl IncrementalDecoder {
    pub(crate) fn new(tok: Tokenizer) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one generated id and returns the text it completes, possibly empty. Never splits
    /// a UTF-8 character: bytes of an incomplete one are held until it completes.
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix = self
            .tok
            .decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = self.tok.decode(&self.ids[self.prefix_offset..], true)?;
        let pending = self.ids.len() - self.read_offset;
        if full.len() <= prefix.len() || (full.ends_with('\u{FFFD}') && pending < MAX_PENDING) {
            return Ok(String::new());
        }
        let new = new_text(&prefix, &full);
        self.advance();
        Ok(new)
    }

    /// Releases whatever is held back (an incomplete character comes out as U+FFFD) and
    /// resets the decoder. Call when generation ends.
    pub fn flush(&mut self) -> String {
        if self.read_offset == self.ids.len() {
            return String::new();
        }
        let decode = |ids: &[u32]| self.tok.decode(ids, true).unwrap_or_default();
        let prefix = decode(&self.ids[self.prefix_offset..self.read_offset]);
        let full = decode(&self.ids[self.prefix_offset..]);
        let out = if full.len() > prefix.len() {
            new_text(&prefix, &full)
        } else {
            String::new()
        };
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        out
    }

    fn advance(&mut self) {
        // The next prefix window starts where this step's read began; older ids are done.
        let start = self.read_offset;
        self.ids.drain(..start);
        self.prefix_offset = 0;
        self.read_offset = self.ids.len();
    }
}

/// The part of `full` after `prefix`. Decoders that rewrite the start of the text (Strip)
/// do it identically for both, so `full` normally extends `prefix`; if not, cut at the same
/// byte length, moved back to a char boundary.
fn new_text(prefix: &str, full: &str) -> String {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest.to_owned();
    }
    let mut cut = prefix.len().min(full.len());
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    full[cut..].to_owned()
}
