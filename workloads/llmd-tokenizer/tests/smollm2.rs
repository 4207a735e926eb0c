//! Tests against the real default model, SmolLM2-135M-Instruct (GGUF). They run when
//! `LLMD_TEST_MODEL` points at the GGUF file and print a line and pass otherwise.
//!
//! Reference ids come from llama.cpp (llama-cpp-python 0.3.36):
//! `Llama(model_path, vocab_only=True).tokenize(text.encode(), add_bos=False, special=True)`;
//! the reference chat rendering from jinja2's ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True), as HF transformers renders it.
#![allow(clippy::unwrap_used)]

mod support;

use llmd_tokenizer::{CachedEncoder, ChatMessage, Tokenizer};

fn load() -> Option<Tokenizer> {
    let path = support::test_model()?;
    let vocab = support::gguf_vocab(&path).unwrap();
    Some(Tokenizer::from_gguf(vocab).unwrap())
}

const REFERENCE: &[(&str, &[u32])] = &[
    ("Hello, world!", &[19556, 28, 905, 17]),
    ("The capital of France is", &[504, 3575, 282, 4649, 314]),
    ("What color is the sky?", &[1780, 2380, 314, 260, 6376, 47]),
    (
        "  multiple   spaces\n\nand\ttabs",
        &[216, 2701, 256, 5600, 198, 198, 397, 197, 100, 7366],
    ),
    (
        "1234567 + 89 = 1234656",
        &[
            33, 34, 35, 36, 37, 38, 39, 1232, 216, 40, 41, 446, 216, 33, 34, 35, 36, 38, 37, 38,
        ],
    ),
    (
        "Café déjà vu — naïve résumé",
        &[
            51, 1939, 2756, 32564, 90, 16739, 386, 101, 1841, 15486, 46494, 412, 2756, 5422, 2756,
        ],
    ),
    (
        "日本語のテキストと中文",
        &[
            23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100,
            226, 7365, 118, 28589, 29184,
        ],
    ),
    (
        "emoji 🦀🚀 test 👍🏽",
        &[
            391, 33777, 15107, 116, 218, 10813, 244, 218, 1028, 15107, 235, 231, 10813, 233, 138,
        ],
    ),
    (
        "<|im_start|>user\nHi<|im_end|>\n",
        &[1, 4093, 198, 26843, 2, 198],
    ),
    (
        "def f(x):\n    return x**2  # square",
        &[
            1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 5222,
        ],
    ),
    (" leading space", &[2899, 1898]),
    ("don't I'll we've", &[12420, 982, 339, 3060, 392, 3543]),
    ("<|endoftext|>", &[0]),
    ("", &[]),
    ("\n", &[198]),
];

const SKY_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n";
const SKY_IDS: &[u32] = &[
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 2380, 314, 260, 6376, 47, 2, 198, 1, 520, 9531, 198,
];

#[test]
fn metadata() {
    let Some(t) = load() else { return };
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_token_id(), Some(1));
    assert_eq!(t.eos_token_ids()[0], 2);
    assert!(!t.add_bos_token());
    assert_eq!(t.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(t.id_to_token(0).as_deref(), Some("<|endoftext|>"));
    assert!(t.chat_template().unwrap().contains("SmolLM"));
}

#[test]
fn matches_llama_cpp_reference_ids() {
    let Some(t) = load() else { return };
    for (text, want) in REFERENCE {
        assert_eq!(&t.encode(text, false).unwrap(), want, "encoding {text:?}");
        // add_bos_token is false for this model: special tokens add nothing.
        assert_eq!(&t.encode(text, true).unwrap(), want);
        assert_eq!(&t.decode(want, false).unwrap(), text, "decoding {text:?}");
    }
}

#[test]
fn round_trip_varied_text() {
    let Some(t) = load() else { return };
    let texts = [
        "plain ASCII text, with punctuation; and (brackets) [1] {2} <3>!",
        "digits 0 01 123 4567.89 1e10 -42",
        "multi    space\t\ttabs\n\n\nnewlines\r\n  indented\n",
        "émigré, façade, Ångström, Straße, ñandú, Ελληνικά, русский",
        "中文字符，日本語の文章、한국어 텍스트",
        "emoji 🦀 🚀 👍🏽 👩‍👩‍👧 🏳️‍🌈 and flags 🇯🇵",
        "\u{0}\u{1}control\u{7f} chars and U+FFFD \u{FFFD} itself",
        "   ",
        "trailing spaces   ",
        "```rust\nfn main() { println!(\"hi\"); }\n```",
    ];
    for s in texts {
        let ids = t.encode(s, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), s, "round trip of {s:?}");
    }
}

#[test]
fn chat_template_sky() {
    let Some(t) = load() else { return };
    let msgs = [ChatMessage::new("user", "What color is the sky?")];
    let s = t.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(s, SKY_PROMPT);
    let ids = t.encode(&s, false).unwrap();
    assert_eq!(ids[0], t.token_to_id("<|im_start|>").unwrap());
    assert_eq!(ids, SKY_IDS);
    assert_eq!(t.decode(&ids, false).unwrap(), SKY_PROMPT);
    assert_eq!(
        t.decode(&ids, true).unwrap(),
        "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\nuser\nWhat color is the sky?\nassistant\n"
    );

    // With a system message there is no default one; no generation prompt.
    let msgs = [
        ChatMessage::new("system", "Be terse."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
    ];
    assert_eq!(
        t.apply_chat_template(&msgs, false).unwrap(),
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
}

#[test]
fn streaming_matches_full_decode() {
    let Some(t) = load() else { return };
    let text = "Streaming: café 日本語 🦀🚀👍🏽 — done.\nNext line  with  spaces.";
    let ids = t.encode(text, false).unwrap();
    let mut d = t.decoder();
    let mut out = String::new();
    for &i in &ids {
        let piece = d.push(i).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "partial char in {piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&d.flush());
    assert_eq!(out, t.decode(&ids, true).unwrap());
    assert_eq!(out, text);
}

#[test]
fn json_round_trip() {
    let Some(t) = load() else { return };
    let u = Tokenizer::from_json(&t.to_json().unwrap()).unwrap();
    for (text, want) in REFERENCE {
        assert_eq!(&u.encode(text, false).unwrap(), want);
    }
    let msgs = [ChatMessage::new("user", "What color is the sky?")];
    assert_eq!(u.apply_chat_template(&msgs, true).unwrap(), SKY_PROMPT);
    assert_eq!(u.eos_token_ids(), t.eos_token_ids());
    assert_eq!(u.vocab_size(), 49152);
}

/// Chats rendered with the model's template encode the same through the piece cache, turn
/// after turn (the system prompt and history hit the cache).
#[test]
fn cached_chat_encoding_equals_plain() {
    let Some(t) = load() else { return };
    let c = CachedEncoder::new(t.clone(), 10_000);
    let mut msgs = vec![ChatMessage::new(
        "system",
        "You are a careful assistant for a city library; answer briefly and never invent a policy.",
    )];
    for turn in 0..6 {
        msgs.push(ChatMessage::new(
            "user",
            format!("Question {turn}: when do you open? naïve 東京 🚀"),
        ));
        let text = t.apply_chat_template(&msgs, true).unwrap();
        assert_eq!(
            c.encode(&text).unwrap(),
            t.encode(&text, false).unwrap(),
            "turn {turn}"
        );
        msgs.push(ChatMessage::new(
            "assistant",
            format!("Answer {turn}: at nine, <|im_end|> not a real end."),
        ));
    }
}
