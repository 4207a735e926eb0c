//! Test helpers: a small GGUF metadata reader (the engine reads GGUF with candle; tests must
//! not depend on it) and generated toy vocabularies.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use llmd_tokenizer::GgufVocab;

/// The real default model, or None (with a printed line) when `LLMD_TEST_MODEL` is unset.
pub fn test_model() -> Option<PathBuf> {
    match std::env::var_os("LLMD_TEST_MODEL") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            println!(
                "skipping: set LLMD_TEST_MODEL to the SmolLM2-135M-Instruct GGUF to run this test"
            );
            None
        }
    }
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Meta>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Meta {
    fn as_u32(&self) -> Option<u32> {
        match *self {
            Meta::U8(v) => Some(v.into()),
            Meta::U16(v) => Some(v.into()),
            Meta::U32(v) => Some(v),
            Meta::U64(v) => u32::try_from(v).ok(),
            Meta::I8(v) => u32::try_from(v).ok(),
            Meta::I16(v) => u32::try_from(v).ok(),
            Meta::I32(v) => u32::try_from(v).ok(),
            Meta::I64(v) => u32::try_from(v).ok(),
            _ => None,
        }
    }
    fn as_i32(&self) -> Option<i32> {
        match *self {
            Meta::I32(v) => Some(v),
            Meta::U32(v) => i32::try_from(v).ok(),
            Meta::I8(v) => Some(v.into()),
            Meta::U8(v) => Some(v.into()),
            _ => None,
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

struct Reader<R> {
    r: R,
    /// Bytes left in the file: no length read from it may exceed this.
    left: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b)?;
        self.left = self.left.saturating_sub(N as u64);
        Ok(b)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    /// A length or count, bounded by what the file can still hold.
    fn len(&mut self, min_item: u64) -> io::Result<usize> {
        let n = self.u64()?;
        if n.saturating_mul(min_item) > self.left {
            return Err(bad(format!("length {n} exceeds the file")));
        }
        usize::try_from(n).map_err(|_| bad("length overflows usize"))
    }
    fn string(&mut self) -> io::Result<String> {
        let n = self.len(1)?;
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b)?;
        self.left -= n as u64;
        String::from_utf8(b).map_err(|_| bad("string is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: u32) -> io::Result<Meta> {
        Ok(match ty {
            0 => Meta::U8(u8::from_le_bytes(self.bytes()?)),
            1 => Meta::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Meta::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Meta::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Meta::U32(self.u32()?),
            5 => Meta::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Meta::F32(f32::from_le_bytes(self.bytes()?)),
            7 => match self.bytes::<1>()?[0] {
                0 => Meta::Bool(false),
                1 => Meta::Bool(true),
                b => return Err(bad(format!("bool byte {b}"))),
            },
            8 => Meta::String(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(bad("arrays nested too deep"));
                }
                let item = self.u32()?;
                let n = self.len(1)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(item, depth + 1)?);
                }
                Meta::Array(v)
            }
            10 => Meta::U64(self.u64()?),
            11 => Meta::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Meta::F64(f64::from_le_bytes(self.bytes()?)),
            t => return Err(bad(format!("unknown value type {t}"))),
        })
    }
}

/// Reads the key/value metadata of a GGUF file (v2 or v3), stopping before the tensor infos.
pub fn read_metadata(path: &Path) -> io::Result<HashMap<String, Meta>> {
    let file = File::open(path)?;
    let left = file.metadata()?.len();
    let mut r = Reader {
        r: BufReader::new(file),
        left,
    };
    if &r.bytes::<4>()? != b"GGUF" {
        return Err(bad("not a GGUF file"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(bad(format!("unsupported GGUF version {version}")));
    }
    let _tensors = r.u64()?;
    let n_kv = r.len(8)?;
    let mut md = HashMap::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let v = r.value(ty, 0)?;
        md.insert(key, v);
    }
    Ok(md)
}

/// The tokenizer part of a GGUF file, as the engine builds it from candle's reader.
pub fn gguf_vocab(path: &Path) -> io::Result<GgufVocab> {
    let md = read_metadata(path)?;
    let s = |k: &str| match md.get(k) {
        Some(Meta::String(s)) => Some(s.clone()),
        _ => None,
    };
    let u = |k: &str| md.get(k).and_then(Meta::as_u32);
    let b = |k: &str| match md.get(k) {
        Some(Meta::Bool(b)) => Some(*b),
        _ => None,
    };
    let arr = |k: &str| match md.get(k) {
        Some(Meta::Array(a)) => Some(a.clone()),
        _ => None,
    };
    let strings = |k: &str| {
        arr(k).map(|a| {
            a.into_iter()
                .filter_map(|x| match x {
                    Meta::String(s) => Some(s),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
    };
    Ok(GgufVocab {
        model: s("tokenizer.ggml.model").unwrap_or_default(),
        pre: s("tokenizer.ggml.pre"),
        tokens: strings("tokenizer.ggml.tokens").unwrap_or_default(),
        token_types: arr("tokenizer.ggml.token_type")
            .map(|a| a.iter().filter_map(Meta::as_i32).collect()),
        scores: arr("tokenizer.ggml.scores").map(|a| {
            a.iter()
                .filter_map(|x| match x {
                    Meta::F32(f) => Some(*f),
                    _ => None,
                })
                .collect()
        }),
        merges: strings("tokenizer.ggml.merges"),
        bos_token_id: u("tokenizer.ggml.bos_token_id"),
        eos_token_id: u("tokenizer.ggml.eos_token_id"),
        unknown_token_id: u("tokenizer.ggml.unknown_token_id"),
        padding_token_id: u("tokenizer.ggml.padding_token_id"),
        add_bos_token: b("tokenizer.ggml.add_bos_token"),
        add_eos_token: b("tokenizer.ggml.add_eos_token"),
        add_space_prefix: b("tokenizer.ggml.add_space_prefix"),
        chat_template: s("tokenizer.chat_template"),
    })
}

/// GPT-2's byte → printable char table (byte-level BPE alphabet).
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(u32::from('¡')..=u32::from('¬'))
        .chain(u32::from('®')..=u32::from('ÿ'))
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        table[b as usize] = char::from_u32(c).expect("valid char");
    }
    table
}

/// The byte-level form of `s` ("Ġ" for a space, ...).
pub fn byte_level(s: &str) -> String {
    let t = byte_chars();
    s.bytes().map(|b| t[b as usize]).collect()
}

pub const TINY_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A toy byte-level BPE vocabulary: 3 control tokens, the 256 byte tokens, then merges.
/// Token ids: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>, 3.. bytes, then merged tokens.
pub fn tiny_gpt2(pre: &str) -> GgufVocab {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3, 3, 3];
    tokens.extend(byte_chars().into_iter().map(String::from));
    types.extend([1; 256]);
    let merges = [
        ("Ġ", "t"),
        ("e", "l"),
        ("el", "l"),
        ("ell", "o"),
        ("h", "ello"),
        ("h", "e"),
        ("Ġt", "he"),
        ("1", "2"),
        ("Ã", "©"), // "é" = C3 A9
        ("Ġ", "w"),
    ];
    for (a, b) in merges {
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: Some(types),
        merges: Some(merges.iter().map(|(a, b)| format!("{a} {b}")).collect()),
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        unknown_token_id: Some(0),
        padding_token_id: Some(2),
        add_bos_token: Some(false),
        add_space_prefix: Some(false),
        chat_template: Some(TINY_TEMPLATE.into()),
        ..Default::default()
    }
}

/// A toy SentencePiece BPE vocabulary: <unk>, <s>, </s>, the 256 byte-fallback tokens, then
/// pieces with scores that build "▁hello" and "▁world".
pub fn tiny_spm() -> GgufVocab {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "!", "he", "ll", "hell", "hello", "▁hello", "or",
        "ld", "▁w", "▁wor", "▁world",
    ];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push((*p).into());
        types.push(1);
        // Single chars score lowest; longer pieces merge in listed order.
        scores.push(if p.chars().count() == 1 {
            -100.0
        } else {
            -(i as f32)
        });
    }
    GgufVocab {
        model: "llama".into(),
        tokens,
        token_types: Some(types),
        scores: Some(scores),
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        unknown_token_id: Some(0),
        chat_template: None,
        ..Default::default()
    }
}
