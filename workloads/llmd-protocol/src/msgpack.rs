//! A small msgpack reader over a byte slice, for the KV event decoder.
//!
//! `rmp` classifies markers; the payload bytes are read here with explicit bounds checks, so
//! arbitrary input can only produce an error, never a panic, an out-of-bounds read, a huge
//! allocation (lengths are checked against the bytes left) or unbounded recursion (skipping
//! nested values is depth-limited).

use rmp::Marker;

use crate::events::EventDecodeError;

/// Deepest nesting `skip` follows; vLLM's payloads nest at most 5 levels.
const MAX_DEPTH: usize = 64;

/// An integer as msgpack stores it: non-negative values may use either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Int {
    U(u64),
    I(i64),
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Result<T> = std::result::Result<T, EventDecodeError>;

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(EventDecodeError::Truncated { at: self.pos });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn be_len(&mut self, width: usize) -> Result<usize> {
        let bytes = self.take(width)?;
        Ok(bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize))
    }

    pub(crate) fn peek_marker(&self) -> Result<Marker> {
        self.buf
            .get(self.pos)
            .map(|&b| Marker::from_u8(b))
            .ok_or(EventDecodeError::Truncated { at: self.pos })
    }

    fn marker(&mut self) -> Result<Marker> {
        let m = self.peek_marker()?;
        self.pos += 1;
        Ok(m)
    }

    fn unexpected(&self, at: usize, expected: &'static str) -> EventDecodeError {
        EventDecodeError::Unexpected {
            at,
            expected,
            marker: self.buf.get(at).copied().unwrap_or(0),
        }
    }

    pub(crate) fn is_nil(&self) -> bool {
        matches!(self.peek_marker(), Ok(Marker::Null))
    }

    /// Consumes a nil; callers check `is_nil` first.
    pub(crate) fn read_nil(&mut self) -> Result<()> {
        let at = self.pos;
        match self.marker()? {
            Marker::Null => Ok(()),
            _ => Err(self.unexpected(at, "nil")),
        }
    }

    /// A length prefix, checked against what is left: every element takes at least one
    /// byte (a map entry two), so a larger count is a lie and preallocating it is unsafe.
    fn checked_len(&self, len: usize, min_bytes_each: usize) -> Result<usize> {
        if len.saturating_mul(min_bytes_each) > self.remaining() {
            return Err(EventDecodeError::Truncated { at: self.pos });
        }
        Ok(len)
    }

    pub(crate) fn read_array_len(&mut self) -> Result<usize> {
        let at = self.pos;
        let len = match self.marker()? {
            Marker::FixArray(n) => n as usize,
            Marker::Array16 => self.be_len(2)?,
            Marker::Array32 => self.be_len(4)?,
            _ => return Err(self.unexpected(at, "array")),
        };
        self.checked_len(len, 1)
    }

    pub(crate) fn read_map_len(&mut self) -> Result<usize> {
        let at = self.pos;
        let len = match self.marker()? {
            Marker::FixMap(n) => n as usize,
            Marker::Map16 => self.be_len(2)?,
            Marker::Map32 => self.be_len(4)?,
            _ => return Err(self.unexpected(at, "map")),
        };
        self.checked_len(len, 2)
    }

    pub(crate) fn is_map(&self) -> bool {
        matches!(
            self.peek_marker(),
            Ok(Marker::FixMap(_) | Marker::Map16 | Marker::Map32)
        )
    }

    pub(crate) fn is_bin(&self) -> bool {
        matches!(
            self.peek_marker(),
            Ok(Marker::Bin8 | Marker::Bin16 | Marker::Bin32)
        )
    }

    pub(crate) fn is_str(&self) -> bool {
        matches!(
            self.peek_marker(),
            Ok(Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32)
        )
    }

    pub(crate) fn read_int(&mut self) -> Result<Int> {
        let at = self.pos;
        Ok(match self.marker()? {
            Marker::FixPos(v) => Int::U(v as u64),
            Marker::FixNeg(v) => Int::I(v as i64),
            Marker::U8 => Int::U(u8::from_be_bytes(self.take_array()?) as u64),
            Marker::U16 => Int::U(u16::from_be_bytes(self.take_array()?) as u64),
            Marker::U32 => Int::U(u32::from_be_bytes(self.take_array()?) as u64),
            Marker::U64 => Int::U(u64::from_be_bytes(self.take_array()?)),
            Marker::I8 => Int::I(i8::from_be_bytes(self.take_array()?) as i64),
            Marker::I16 => Int::I(i16::from_be_bytes(self.take_array()?) as i64),
            Marker::I32 => Int::I(i32::from_be_bytes(self.take_array()?) as i64),
            Marker::I64 => Int::I(i64::from_be_bytes(self.take_array()?)),
            _ => return Err(self.unexpected(at, "integer")),
        })
    }

    /// A float; integers are accepted too (a timestamp written by a lenient producer).
    pub(crate) fn read_f64(&mut self) -> Result<f64> {
        let at = self.pos;
        match self.peek_marker()? {
            Marker::F32 => {
                self.pos += 1;
                Ok(f32::from_be_bytes(self.take_array()?) as f64)
            }
            Marker::F64 => {
                self.pos += 1;
                Ok(f64::from_be_bytes(self.take_array()?))
            }
            _ => match self.read_int() {
                Ok(Int::U(v)) => Ok(v as f64),
                Ok(Int::I(v)) => Ok(v as f64),
                Err(_) => Err(self.unexpected(at, "float")),
            },
        }
    }

    pub(crate) fn read_str(&mut self) -> Result<&'a str> {
        let at = self.pos;
        let len = match self.marker()? {
            Marker::FixStr(n) => n as usize,
            Marker::Str8 => self.be_len(1)?,
            Marker::Str16 => self.be_len(2)?,
            Marker::Str32 => self.be_len(4)?,
            _ => return Err(self.unexpected(at, "string")),
        };
        std::str::from_utf8(self.take(len)?).map_err(|_| EventDecodeError::InvalidUtf8 { at })
    }

    pub(crate) fn read_bin(&mut self) -> Result<&'a [u8]> {
        let at = self.pos;
        let len = match self.marker()? {
            Marker::Bin8 => self.be_len(1)?,
            Marker::Bin16 => self.be_len(2)?,
            Marker::Bin32 => self.be_len(4)?,
            _ => return Err(self.unexpected(at, "bytes")),
        };
        self.take(len)
    }

    /// Skips one value of any type (fields this decoder does not use).
    pub(crate) fn skip(&mut self) -> Result<()> {
        self.skip_at_depth(0)
    }

    fn skip_at_depth(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(EventDecodeError::TooDeep { at: self.pos });
        }
        let at = self.pos;
        let (fixed, items) = match self.marker()? {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (n as usize, 0),
            Marker::Str8 | Marker::Bin8 => (self.be_len(1)?, 0),
            Marker::Str16 | Marker::Bin16 => (self.be_len(2)?, 0),
            Marker::Str32 | Marker::Bin32 => (self.be_len(4)?, 0),
            // Extension types: a type byte, then the data.
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (self.be_len(1)? + 1, 0),
            Marker::Ext16 => (self.be_len(2)? + 1, 0),
            Marker::Ext32 => (self.be_len(4)?.saturating_add(1), 0),
            Marker::FixArray(n) => (0, n as usize),
            Marker::Array16 => (0, self.be_len(2)?),
            Marker::Array32 => (0, self.be_len(4)?),
            Marker::FixMap(n) => (0, 2 * n as usize),
            Marker::Map16 => (0, 2 * self.be_len(2)?),
            Marker::Map32 => (0, self.be_len(4)?.saturating_mul(2)),
            Marker::Reserved => return Err(self.unexpected(at, "a msgpack value")),
        };
        self.take(fixed)?;
        // No allocation here, and each item consumes at least one byte or fails, so a
        // lying count ends at the end of the buffer.
        for _ in 0..items {
            self.skip_at_depth(depth + 1)?;
        }
        Ok(())
    }
}
