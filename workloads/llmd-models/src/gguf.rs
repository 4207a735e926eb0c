//! A minimal, bounds-checked GGUF header reader: validates the file and finds `general.architecture`.
//!
//! Layout (little-endian): magic `GGUF`, version u32 (2 or 3), tensor_count u64, kv_count u64,
//! then kv_count pairs of (key: string, value type: u32, value). A string is a u64 length plus
//! UTF-8 bytes; an array is an element type u32, a count u64 and the elements. Every length is
//! checked against the bytes left in the file before it is used, so a truncated or hostile file
//! gives an error, never a panic or a huge allocation.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::ModelError;

const MAGIC: [u8; 4] = *b"GGUF";
const ARCH_KEY: &str = "general.architecture";
/// The GGUF spec caps keys at 65535 bytes.
const MAX_KEY_LEN: u64 = 65_535;
const MAX_ARCH_LEN: u64 = 1024;
/// Nested arrays deeper than this are not written by any known tool; refuse rather than recurse.
const MAX_ARRAY_DEPTH: u32 = 8;

/// What the header says, up to and including `general.architecture`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufHeader {
    pub version: u32,
    pub tensor_count: u64,
    pub kv_count: u64,
    pub architecture: String,
}

/// Reads and checks the header of the GGUF file at `path`.
pub fn read_header(path: &Path) -> Result<GgufHeader, ModelError> {
    let file = File::open(path).map_err(|e| ModelError::open(path, e))?;
    let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    parse(BufReader::new(file), len).map_err(|e| match e {
        HeaderError::Io(e) => ModelError::io(path, e),
        HeaderError::Invalid(reason) => ModelError::not_a_model(path, reason),
    })
}

enum HeaderError {
    Io(io::Error),
    Invalid(String),
}

impl From<io::Error> for HeaderError {
    fn from(e: io::Error) -> Self {
        // The length was checked up front, so running out of bytes means the file shrank.
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HeaderError::Invalid("truncated GGUF file (it shrank while being read)".into())
        } else {
            HeaderError::Io(e)
        }
    }
}

type HResult<T> = Result<T, HeaderError>;

/// Parses a header from `inner`, which holds `len` bytes in total.
fn parse<R: Read>(inner: R, len: u64) -> HResult<GgufHeader> {
    let mut r = Reader { inner, pos: 0, len };
    if len < 4 {
        return Err(HeaderError::Invalid(format!(
            "not a GGUF file (only {len} bytes long)"
        )));
    }
    let magic: [u8; 4] = r.array()?;
    if magic != MAGIC {
        return Err(HeaderError::Invalid(not_gguf_reason(magic)));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(HeaderError::Invalid(
                "GGUF version 1 is not supported (need version 2 or 3; re-convert the model)"
                    .into(),
            ))
        }
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(HeaderError::Invalid(
                "big-endian GGUF files are not supported".into(),
            ))
        }
        v => {
            return Err(HeaderError::Invalid(format!(
                "unsupported GGUF version {v} (need 2 or 3)"
            )))
        }
    }
    let tensor_count = r.u64("tensor count")?;
    let kv_count = r.u64("metadata count")?;
    // No need to bound kv_count: every pair consumes bytes, so the file length ends the loop.
    for _ in 0..kv_count {
        let key = r.string(MAX_KEY_LEN, "metadata key")?;
        let ty = r.u32("metadata value type")?;
        if key == ARCH_KEY {
            if ty != TYPE_STRING {
                return Err(HeaderError::Invalid(format!(
                    "{ARCH_KEY} has GGUF value type {ty}, expected a string"
                )));
            }
            let architecture = r.string(MAX_ARCH_LEN, ARCH_KEY)?;
            if architecture.is_empty() {
                return Err(HeaderError::Invalid(format!("{ARCH_KEY} is empty")));
            }
            return Ok(GgufHeader {
                version,
                tensor_count,
                kv_count,
                architecture,
            });
        }
        r.skip_value(ty, 0, &key)?;
    }
    Err(HeaderError::Invalid(format!(
        "GGUF metadata has no {ARCH_KEY} key"
    )))
}

fn not_gguf_reason(magic: [u8; 4]) -> String {
    let hex = magic.map(|b| format!("{b:02x}")).join(" ");
    let hint = if &magic == b"vers" {
        // Git LFS pointer files start with "version ".
        "; it looks like a Git LFS pointer, not the model itself (run `git lfs pull`)"
    } else {
        "; a model is a .gguf file or a directory with config.json, tokenizer.json and *.safetensors"
    };
    format!("not a GGUF file (starts with bytes {hex}, expected \"GGUF\"){hint}")
}

const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

/// Size in bytes of a fixed-size GGUF value type, `None` for string, array and unknown types.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),     // u16, i16
        4..=6 => Some(4),     // u32, i32, f32
        10..=12 => Some(8),   // u64, i64, f64
        _ => None,
    }
}

struct Reader<R> {
    inner: R,
    /// Bytes consumed so far; never exceeds `len`.
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn need(&self, n: u64, what: &str) -> HResult<()> {
        if self.len - self.pos < n {
            return Err(HeaderError::Invalid(format!(
                "truncated GGUF file: {what} at byte {} needs {n} bytes, only {} left",
                self.pos,
                self.len - self.pos
            )));
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> HResult<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf)?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> HResult<u32> {
        self.need(4, what)?;
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self, what: &str) -> HResult<u64> {
        self.need(8, what)?;
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self, max: u64, what: &str) -> HResult<String> {
        let n = self.u64(what)?;
        self.need(n, what)?;
        if n > max {
            return Err(HeaderError::Invalid(format!(
                "{what} is {n} bytes long, more than the {max} allowed"
            )));
        }
        // n <= max, which is small, so the cast and the allocation are both safe.
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf)?;
        self.pos += n;
        String::from_utf8(buf)
            .map_err(|_| HeaderError::Invalid(format!("{what} is not valid UTF-8")))
    }

    /// Consumes `n` bytes without keeping them.
    fn skip(&mut self, n: u64, what: &str) -> HResult<()> {
        self.need(n, what)?;
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if copied != n {
            return Err(HeaderError::Invalid(
                "truncated GGUF file (it shrank while being read)".into(),
            ));
        }
        self.pos += n;
        Ok(())
    }

    fn skip_value(&mut self, ty: u32, depth: u32, key: &str) -> HResult<()> {
        if let Some(size) = fixed_size(ty) {
            return self.skip(size, key);
        }
        match ty {
            TYPE_STRING => {
                let n = self.u64(key)?;
                self.skip(n, key)
            }
            TYPE_ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(HeaderError::Invalid(format!(
                        "metadata {key:?} nests arrays more than {MAX_ARRAY_DEPTH} deep"
                    )));
                }
                let elem = self.u32(key)?;
                let count = self.u64(key)?;
                if let Some(size) = fixed_size(elem) {
                    // A saturated product cannot fit in the file either.
                    let total = count.saturating_mul(size);
                    return self.skip(total, key);
                }
                if elem != TYPE_STRING && elem != TYPE_ARRAY {
                    return Err(HeaderError::Invalid(format!(
                        "metadata {key:?} is an array of unknown GGUF value type {elem}"
                    )));
                }
                // Each element consumes at least 8 bytes, so the file length bounds this loop.
                for _ in 0..count {
                    self.skip_value(elem, depth + 1, key)?;
                }
                Ok(())
            }
            _ => Err(HeaderError::Invalid(format!(
                "metadata {key:?} has unknown GGUF value type {ty}"
            ))),
        }
    }
}

/// Builders for GGUF headers, shared by this crate's tests.
#[cfg(test)]
pub(crate) mod testutil {
    /// Appends a GGUF string.
    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A small but realistic v3 header: a few kvs of different types, then the architecture.
    pub fn header(arch: &str) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // tensors
        out.extend_from_slice(&5u64.to_le_bytes()); // kvs
        string(&mut out, "general.alignment");
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&32u32.to_le_bytes());
        string(&mut out, "general.name");
        out.extend_from_slice(&8u32.to_le_bytes());
        string(&mut out, "tiny");
        string(&mut out, "tokenizer.ggml.tokens");
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&3u64.to_le_bytes());
        for t in ["<s>", "a", "b"] {
            string(&mut out, t);
        }
        string(&mut out, "tokenizer.ggml.scores");
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&6u32.to_le_bytes());
        out.extend_from_slice(&3u64.to_le_bytes());
        for f in [0.0f32, -1.0, -2.0] {
            out.extend_from_slice(&f.to_le_bytes());
        }
        string(&mut out, "general.architecture");
        out.extend_from_slice(&8u32.to_le_bytes());
        string(&mut out, arch);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testutil::{header, string};
    use super::*;

    fn parse_bytes(bytes: &[u8]) -> Result<GgufHeader, String> {
        parse(bytes, bytes.len() as u64).map_err(|e| match e {
            HeaderError::Io(e) => format!("io: {e}"),
            HeaderError::Invalid(s) => s,
        })
    }

    #[test]
    fn reads_architecture() {
        let h = parse_bytes(&header("llama")).unwrap();
        assert_eq!(h.architecture, "llama");
        assert_eq!(h.version, 3);
        assert_eq!(h.kv_count, 5);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = header("llama");
        for n in 0..bytes.len() {
            let err = parse_bytes(&bytes[..n]).unwrap_err();
            assert!(
                err.contains("truncated") || err.contains("not a GGUF"),
                "{n}: {err}"
            );
        }
    }

    #[test]
    fn garbage_is_not_gguf() {
        let err = parse_bytes(b"\x7fELF\x02\x01\x01\0\0\0\0\0").unwrap_err();
        assert!(err.contains("not a GGUF file"), "{err}");
        assert!(err.contains("7f 45 4c 46"), "{err}");
        let err = parse_bytes(b"version pointer-spec-v1\noid sha256:00\n").unwrap_err();
        assert!(err.contains("Git LFS pointer"), "{err}");
    }

    #[test]
    fn versions() {
        for (v, want) in [
            (1u32, "version 1"),
            (0x0300_0000, "big-endian"),
            (7, "version 7"),
        ] {
            let mut bytes = header("llama");
            bytes[4..8].copy_from_slice(&v.to_le_bytes());
            let err = parse_bytes(&bytes).unwrap_err();
            assert!(err.contains(want), "{v}: {err}");
        }
        let mut bytes = header("llama");
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(parse_bytes(&bytes).unwrap().version, 2);
    }

    #[test]
    fn huge_lengths_do_not_allocate() {
        // A key claiming u64::MAX bytes.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_bytes(&bytes).unwrap_err().contains("truncated"));

        // An array of u64::MAX u64s (the byte count overflows).
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        string(&mut bytes, "k");
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&10u32.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_bytes(&bytes).unwrap_err().contains("truncated"));

        // An array of u64::MAX strings: ends at the file end, not after 2^64 iterations.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        string(&mut bytes, "k");
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        string(&mut bytes, "only one");
        assert!(parse_bytes(&bytes).unwrap_err().contains("truncated"));
    }

    #[test]
    fn bad_types_and_missing_key() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        string(&mut bytes, "k");
        bytes.extend_from_slice(&13u32.to_le_bytes());
        assert!(parse_bytes(&bytes)
            .unwrap_err()
            .contains("unknown GGUF value type 13"));

        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        string(&mut bytes, "general.architecture");
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        assert!(parse_bytes(&bytes)
            .unwrap_err()
            .contains("expected a string"));

        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        assert!(parse_bytes(&bytes)
            .unwrap_err()
            .contains("no general.architecture"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        string(&mut bytes, "k");
        bytes.extend_from_slice(&9u32.to_le_bytes());
        for _ in 0..20 {
            bytes.extend_from_slice(&9u32.to_le_bytes());
            bytes.extend_from_slice(&1u64.to_le_bytes());
        }
        bytes.extend_from_slice(&[0; 64]);
        assert!(parse_bytes(&bytes).unwrap_err().contains("nests arrays"));
    }
}
