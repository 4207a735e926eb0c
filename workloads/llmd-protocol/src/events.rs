//! KV cache events, as vLLM names them: what a worker's block pool tells the cluster when
//! blocks become reusable (`BlockStored`), are evicted (`BlockRemoved`) or all dropped — and
//! their wire format, vLLM's, so that vLLM workers and llmd workers are interchangeable.
//!
//! # Wire format (`vllm/distributed/kv_events.py`)
//!
//! vLLM encodes with msgspec: a batch is `EventBatch(array_like=True)`, i.e. the array
//! `[ts, [event, ...], data_parallel_rank]`; events are a tagged union of `BlockStored`,
//! `BlockRemoved` and `AllBlocksCleared` (tag = class name). Up to vLLM 0.23 events were
//! `array_like` too, the tag first:
//!
//! ```text
//! ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
//!                 lora_id, medium, lora_name, extra_keys, group_idx, ...]
//! ["BlockRemoved", block_hashes, medium, group_idx, ...]
//! ["AllBlocksCleared"]
//! ```
//!
//! Newer vLLM (PR 42892) dropped `array_like` from the events: each is a map keyed by field
//! name with the tag under `"type"`, fields at their default omitted.
//!
//! [`encode_batch`] writes the array layout — `BlockStored` with its eight positions through
//! `lora_name` (always nil here), `BlockRemoved` with three — byte for byte as msgspec would,
//! because every consumer decodes it: old and new vLLM-era Go/Rust/Python consumers, and
//! msgspec schemas of any vLLM version (msgspec needs every field without a default and
//! ignores extra trailing ones). [`decode_batch`] accepts both layouts, for events and for
//! the batch itself, tolerates extra trailing positions and unknown map keys (newer fields),
//! and missing trailing optional ones (older producers).
//!
//! Block hashes arrive as integers (vLLM's default, `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`:
//! the low 64 bits of the digest, as an unsigned msgpack int; some producers send the same
//! 64 bits as a signed int) or as raw digest bytes. Both map to the same `u64`: an integer
//! by its two's-complement bits, bytes by vLLM's own conversion,
//! `int.from_bytes(digest, "big") & (2**64 - 1)` — the last eight bytes read big-endian
//! (fewer bytes are left-padded with zeros). So a bytes-hash worker and an int-hash worker
//! with the same digests produce the same keys, and llm-d's indexer (which converts the
//! same way) agrees with ours.

use rmp::encode::{self as enc, ByteBuf};
use serde::{Deserialize, Serialize};

use crate::hashing::BlockHash;
use crate::msgpack::{Int, Reader};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEvent {
    /// Full blocks, in chain order, now held and reusable. `parent_block_hash` is the hash
    /// of the block before the first one (none for a sequence's first block).
    BlockStored {
        block_hashes: Vec<BlockHash>,
        parent_block_hash: Option<BlockHash>,
        token_ids: Vec<u32>,
        block_size: usize,
        lora_id: Option<i64>,
        medium: Option<String>,
    },
    /// Blocks evicted from the pool.
    BlockRemoved {
        block_hashes: Vec<BlockHash>,
        medium: Option<String>,
    },
    /// The pool was reset; every block of this worker is gone.
    AllBlocksCleared,
}

/// A decoded batch: one engine step's events from one publisher.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    /// Seconds since the Unix epoch, when the publisher built the batch.
    pub ts: f64,
    pub events: Vec<KvEvent>,
    /// vLLM's data-parallel rank of the engine that sent it, when present.
    pub data_parallel_rank: Option<i64>,
    /// Events whose tag this decoder does not know (a newer producer), skipped.
    pub unknown_events: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    #[error("payload ends early (at byte {at})")]
    Truncated { at: usize },
    #[error("expected {expected} at byte {at}, found msgpack marker 0x{marker:02x}")]
    Unexpected {
        at: usize,
        expected: &'static str,
        marker: u8,
    },
    #[error("invalid UTF-8 in the string at byte {at}")]
    InvalidUtf8 { at: usize },
    #[error("values nested too deeply (at byte {at})")]
    TooDeep { at: usize },
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("`{field}` out of range (at byte {at})")]
    OutOfRange { field: &'static str, at: usize },
    #[error("{0} bytes after the end of the batch")]
    TrailingBytes(usize),
}

type Result<T> = std::result::Result<T, EventDecodeError>;

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Encodes one batch exactly as vLLM's `ZmqEventPublisher` does (msgspec, array layout):
/// `[ts, [events...], data_parallel_rank]`, the rank nil when absent (msgspec writes the
/// trailing default of an `array_like` struct rather than dropping it).
///
/// # Panics
/// If a list holds more than 2^32 - 1 items, which msgpack cannot express.
pub fn encode_batch(ts: f64, events: &[KvEvent], dp_rank: Option<i64>) -> Vec<u8> {
    let mut w = Writer(ByteBuf::with_capacity(16 + events.len() * 32));
    w.array_len(3);
    w.f64(ts);
    w.array_len(events.len());
    for event in events {
        match event {
            KvEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                medium,
            } => {
                w.array_len(8);
                w.str("BlockStored");
                w.array_len(block_hashes.len());
                block_hashes.iter().for_each(|&h| w.uint(h));
                match parent_block_hash {
                    Some(h) => w.uint(*h),
                    None => w.nil(),
                }
                w.array_len(token_ids.len());
                token_ids.iter().for_each(|&t| w.uint(t as u64));
                w.uint(*block_size as u64);
                match lora_id {
                    Some(id) => w.sint(*id),
                    None => w.nil(),
                }
                w.opt_str(medium.as_deref());
                // lora_name: vLLM >= 0.12 declares it without a default, so its msgspec
                // schemas need the position; our events carry no adapter name.
                w.nil();
            }
            KvEvent::BlockRemoved {
                block_hashes,
                medium,
            } => {
                w.array_len(3);
                w.str("BlockRemoved");
                w.array_len(block_hashes.len());
                block_hashes.iter().for_each(|&h| w.uint(h));
                w.opt_str(medium.as_deref());
            }
            KvEvent::AllBlocksCleared => {
                w.array_len(1);
                w.str("AllBlocksCleared");
            }
        }
    }
    match dp_rank {
        Some(rank) => w.sint(rank),
        None => w.nil(),
    }
    w.0.into_vec()
}

/// `rmp`'s writers over an in-memory buffer, which cannot fail (`Infallible`).
struct Writer(ByteBuf);

impl Writer {
    fn array_len(&mut self, len: usize) {
        let len = u32::try_from(len).expect("msgpack arrays hold at most 2^32 - 1 items");
        let Ok(_) = enc::write_array_len(&mut self.0, len);
    }
    fn f64(&mut self, v: f64) {
        let Ok(()) = enc::write_f64(&mut self.0, v);
    }
    fn uint(&mut self, v: u64) {
        let Ok(_) = enc::write_uint(&mut self.0, v);
    }
    /// Non-negative values take the unsigned forms, as msgspec writes them.
    fn sint(&mut self, v: i64) {
        let Ok(_) = enc::write_sint(&mut self.0, v);
    }
    fn nil(&mut self) {
        let Ok(()) = enc::write_nil(&mut self.0);
    }
    fn str(&mut self, s: &str) {
        let Ok(()) = enc::write_str(&mut self.0, s);
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.nil(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// Decodes one batch payload (the third frame of a KV event message) in any layout vLLM
/// has used; see the module docs. Never panics, whatever the bytes.
pub fn decode_batch(bytes: &[u8]) -> Result<EventBatch> {
    let mut r = Reader::new(bytes);
    let batch = if r.is_map() {
        batch_from_map(&mut r)?
    } else {
        batch_from_array(&mut r)?
    };
    match r.remaining() {
        0 => Ok(batch),
        n => Err(EventDecodeError::TrailingBytes(n)),
    }
}

fn batch_from_array(r: &mut Reader<'_>) -> Result<EventBatch> {
    let mut p = Positional::new(r)?;
    let ts = p.required("ts", |r| r.read_f64())?;
    let (events, unknown_events) = p.required("events", read_events)?;
    let data_parallel_rank = p.optional(|r| read_opt_i64(r, "data_parallel_rank"))?;
    p.finish()?;
    Ok(EventBatch {
        ts,
        events,
        data_parallel_rank,
        unknown_events,
    })
}

fn batch_from_map(r: &mut Reader<'_>) -> Result<EventBatch> {
    let (mut ts, mut events, mut dp) = (None, None, None);
    for _ in 0..r.read_map_len()? {
        match read_key(r)? {
            Some("ts") => ts = Some(r.read_f64()?),
            Some("events") => events = Some(read_events(r)?),
            Some("data_parallel_rank") => dp = read_opt_i64(r, "data_parallel_rank")?,
            _ => r.skip()?,
        }
    }
    let (events, unknown_events) = events.ok_or(EventDecodeError::MissingField("events"))?;
    Ok(EventBatch {
        ts: ts.ok_or(EventDecodeError::MissingField("ts"))?,
        events,
        data_parallel_rank: dp,
        unknown_events,
    })
}

fn read_events(r: &mut Reader<'_>) -> Result<(Vec<KvEvent>, usize)> {
    let n = r.read_array_len()?;
    // `n` is bounded by the bytes left (checked by the reader), so this cannot explode.
    let mut events = Vec::with_capacity(n);
    let mut unknown = 0;
    for _ in 0..n {
        let event = if r.is_map() {
            event_from_map(r)?
        } else {
            event_from_array(r)?
        };
        match event {
            Some(e) => events.push(e),
            None => unknown += 1,
        }
    }
    Ok((events, unknown))
}

/// `Ok(None)`: a well-formed event of a kind this decoder does not know.
fn event_from_array(r: &mut Reader<'_>) -> Result<Option<KvEvent>> {
    let mut p = Positional::new(r)?;
    let tag = p.required("event tag", |r| r.read_str())?;
    let event = match tag {
        "BlockStored" => {
            let block_hashes = p.required("block_hashes", read_hashes)?;
            let parent_block_hash = p.required("parent_block_hash", read_opt_hash)?;
            let token_ids = p.required("token_ids", read_tokens)?;
            let block_size = p.required("block_size", |r| read_usize(r, "block_size"))?;
            let lora_id = p.optional(|r| read_opt_i64(r, "lora_id"))?;
            let medium = p.optional(read_opt_string)?;
            Some(KvEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                medium,
            })
        }
        "BlockRemoved" => {
            let block_hashes = p.required("block_hashes", read_hashes)?;
            let medium = p.optional(read_opt_string)?;
            Some(KvEvent::BlockRemoved {
                block_hashes,
                medium,
            })
        }
        "AllBlocksCleared" => Some(KvEvent::AllBlocksCleared),
        _ => None,
    };
    // Later positions (lora_name, extra_keys, group_idx, ...) are not part of `KvEvent`.
    p.finish()?;
    Ok(event)
}

fn event_from_map(r: &mut Reader<'_>) -> Result<Option<KvEvent>> {
    let mut tag = None;
    let mut block_hashes = None;
    let mut parent_block_hash = None;
    let mut token_ids = None;
    let mut block_size = None;
    let mut lora_id = None;
    let mut medium = None;
    for _ in 0..r.read_map_len()? {
        match read_key(r)? {
            // msgspec's default tag field for `tag=True`.
            Some("type") => tag = Some(r.read_str()?),
            Some("block_hashes") => block_hashes = Some(read_hashes(r)?),
            Some("parent_block_hash") => parent_block_hash = read_opt_hash(r)?,
            Some("token_ids") => token_ids = Some(read_tokens(r)?),
            Some("block_size") => block_size = Some(read_usize(r, "block_size")?),
            Some("lora_id") => lora_id = read_opt_i64(r, "lora_id")?,
            Some("medium") => medium = read_opt_string(r)?,
            _ => r.skip()?,
        }
    }
    let missing = EventDecodeError::MissingField;
    Ok(match tag.ok_or(missing("type"))? {
        "BlockStored" => Some(KvEvent::BlockStored {
            block_hashes: block_hashes.ok_or(missing("block_hashes"))?,
            parent_block_hash,
            token_ids: token_ids.ok_or(missing("token_ids"))?,
            block_size: block_size.ok_or(missing("block_size"))?,
            lora_id,
            medium,
        }),
        "BlockRemoved" => Some(KvEvent::BlockRemoved {
            block_hashes: block_hashes.ok_or(missing("block_hashes"))?,
            medium,
        }),
        "AllBlocksCleared" => Some(KvEvent::AllBlocksCleared),
        _ => None,
    })
}

/// Walks a msgspec `array_like` struct: required leading positions, optional trailing ones
/// (older producers stop early), and whatever a newer producer appended.
struct Positional<'r, 'a> {
    r: &'r mut Reader<'a>,
    left: usize,
}

impl<'r, 'a> Positional<'r, 'a> {
    fn new(r: &'r mut Reader<'a>) -> Result<Self> {
        let left = r.read_array_len()?;
        Ok(Self { r, left })
    }

    fn required<T>(
        &mut self,
        field: &'static str,
        read: impl FnOnce(&mut Reader<'a>) -> Result<T>,
    ) -> Result<T> {
        if self.left == 0 {
            return Err(EventDecodeError::MissingField(field));
        }
        self.left -= 1;
        read(self.r)
    }

    fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Reader<'a>) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        read(self.r)
    }

    fn finish(self) -> Result<()> {
        for _ in 0..self.left {
            self.r.skip()?;
        }
        Ok(())
    }
}

/// A map key; `None` for a non-string key, whose value the caller skips.
fn read_key<'a>(r: &mut Reader<'a>) -> Result<Option<&'a str>> {
    if r.is_str() {
        r.read_str().map(Some)
    } else {
        r.skip()?;
        Ok(None)
    }
}

fn read_hash(r: &mut Reader<'_>) -> Result<BlockHash> {
    if r.is_bin() {
        // vLLM: int.from_bytes(digest, "big") & (2**64 - 1).
        let digest = r.read_bin()?;
        let tail = &digest[digest.len().saturating_sub(8)..];
        return Ok(tail.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64));
    }
    Ok(match r.read_int()? {
        Int::U(v) => v,
        // The same 64 bits, written as a signed integer by some producers.
        Int::I(v) => v as u64,
    })
}

fn read_opt_hash(r: &mut Reader<'_>) -> Result<Option<BlockHash>> {
    if r.is_nil() {
        r.read_nil()?;
        return Ok(None);
    }
    read_hash(r).map(Some)
}

fn read_hashes(r: &mut Reader<'_>) -> Result<Vec<BlockHash>> {
    let n = r.read_array_len()?;
    (0..n).map(|_| read_hash(r)).collect()
}

fn read_tokens(r: &mut Reader<'_>) -> Result<Vec<u32>> {
    let n = r.read_array_len()?;
    (0..n)
        .map(|_| {
            let at = r.pos();
            match r.read_int()? {
                Int::U(v) => u32::try_from(v).ok(),
                Int::I(_) => None,
            }
            .ok_or(EventDecodeError::OutOfRange {
                field: "token_ids",
                at,
            })
        })
        .collect()
}

fn read_usize(r: &mut Reader<'_>, field: &'static str) -> Result<usize> {
    let at = r.pos();
    match r.read_int()? {
        Int::U(v) => usize::try_from(v).ok(),
        Int::I(_) => None,
    }
    .ok_or(EventDecodeError::OutOfRange { field, at })
}

fn read_opt_i64(r: &mut Reader<'_>, field: &'static str) -> Result<Option<i64>> {
    if r.is_nil() {
        r.read_nil()?;
        return Ok(None);
    }
    let at = r.pos();
    match r.read_int()? {
        Int::U(v) => i64::try_from(v)
            .map(Some)
            .map_err(|_| EventDecodeError::OutOfRange { field, at }),
        Int::I(v) => Ok(Some(v)),
    }
}

fn read_opt_string(r: &mut Reader<'_>) -> Result<Option<String>> {
    if r.is_nil() {
        r.read_nil()?;
        return Ok(None);
    }
    r.read_str().map(|s| Some(s.to_owned()))
}
