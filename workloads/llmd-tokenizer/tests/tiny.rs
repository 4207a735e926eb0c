//! Always-on tests over generated toy vocabularies (byte-level BPE and SentencePiece BPE).
#![allow(clippy::unwrap_used)]

mod support;

use llmd_tokenizer::{ChatMessage, GgufVocab, StopMatcher, Tokenizer, TokenizerError};
use support::{byte_level, tiny_gpt2, tiny_spm, TINY_TEMPLATE};

const TEXTS: &[&str] = &[
    "hello the world",
    "Hello, World! 1234567890",
    "  multiple   spaces\n\n\tand tabs\r\n",
    "émigré café naïve",
    "日本語のテキスト 中文",
    "emoji 🦀🚀👍🏽 and ZWJ 👩‍👩‍👧",
    " leading and trailing ",
    "",
];

fn id(t: &Tokenizer, s: &str) -> u32 {
    t.token_to_id(s).unwrap_or_else(|| panic!("no token {s:?}"))
}

#[test]
fn gpt2_merges_specials_and_round_trip() {
    let t = Tokenizer::from_gguf(tiny_gpt2("smollm")).unwrap();
    assert_eq!(t.vocab_size(), 3 + 256 + 10);
    assert_eq!(t.encode(" the", false).unwrap(), vec![id(&t, "Ġthe")]);
    assert_eq!(t.encode("hello", false).unwrap(), vec![id(&t, "hello")]);
    assert_eq!(
        t.encode("é", false).unwrap(),
        vec![id(&t, &byte_level("é"))]
    );
    // Special-token text becomes the single special id, also next to other text.
    assert_eq!(
        t.encode("<|im_start|>hello<|im_end|>", false).unwrap(),
        vec![1, id(&t, "hello"), 2]
    );
    let ids = t
        .encode("<|im_start|>user\nhello<|im_end|>", false)
        .unwrap();
    assert_eq!(
        t.decode(&ids, false).unwrap(),
        "<|im_start|>user\nhello<|im_end|>"
    );
    assert_eq!(t.decode(&ids, true).unwrap(), "user\nhello");
    for s in TEXTS {
        let ids = t.encode(s, false).unwrap();
        assert_eq!(&t.decode(&ids, false).unwrap(), s, "round trip of {s:?}");
        assert_eq!(&t.decode(&ids, true).unwrap(), s);
    }
    assert_eq!(t.id_to_token(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(t.bos_token_id(), Some(1));
    assert_eq!(t.eos_token_ids(), &[2, 0]);
}

#[test]
fn pre_tokenizer_follows_gguf_pre() {
    // smollm splits every digit, so the "12" merge never applies; gpt2 keeps "12".
    let smol = Tokenizer::from_gguf(tiny_gpt2("smollm")).unwrap();
    assert_eq!(
        smol.encode("12", false).unwrap(),
        vec![id(&smol, "1"), id(&smol, "2")]
    );
    let gpt2 = Tokenizer::from_gguf(tiny_gpt2("gpt-2")).unwrap();
    assert_eq!(gpt2.encode("12", false).unwrap(), vec![id(&gpt2, "12")]);
    // Unknown pre-tokenizers fall back to gpt2 rather than failing.
    let other = Tokenizer::from_gguf(tiny_gpt2("no-such-pre")).unwrap();
    assert_eq!(
        other.encode("12 the", false).unwrap(),
        gpt2.encode("12 the", false).unwrap()
    );
    // llama3's regex keeps " the" together too (and so do qwen2's and tekken's).
    for pre in ["llama-bpe", "qwen2", "tekken", "dbrx"] {
        let t = Tokenizer::from_gguf(tiny_gpt2(pre)).unwrap();
        assert_eq!(
            t.encode(" the", false).unwrap(),
            vec![id(&t, "Ġthe")],
            "{pre}"
        );
        for s in TEXTS {
            assert_eq!(
                &t.decode(&t.encode(s, false).unwrap(), false).unwrap(),
                s,
                "{pre}: {s:?}"
            );
        }
    }
    // Qwen2 normalizes to NFC: a decomposed "é" encodes like the composed one.
    let qwen = Tokenizer::from_gguf(tiny_gpt2("qwen2")).unwrap();
    assert_eq!(
        qwen.encode("e\u{301}", false).unwrap(),
        qwen.encode("é", false).unwrap()
    );
}

#[test]
fn bos_is_added_only_when_the_model_wants_it() {
    let t = Tokenizer::from_gguf(tiny_gpt2("smollm")).unwrap();
    assert!(!t.add_bos_token());
    assert_eq!(
        t.encode("hello", true).unwrap(),
        t.encode("hello", false).unwrap()
    );

    let with_bos = Tokenizer::from_gguf(GgufVocab {
        add_bos_token: Some(true),
        ..tiny_gpt2("smollm")
    })
    .unwrap();
    assert!(with_bos.add_bos_token());
    assert_eq!(
        with_bos.encode("hello", true).unwrap(),
        vec![1, id(&t, "hello")]
    );
    assert_eq!(
        with_bos.encode("hello", false).unwrap(),
        vec![id(&t, "hello")]
    );

    // llama3's pre-tokenizer implies BOS when the GGUF does not say.
    let llama3 = Tokenizer::from_gguf(GgufVocab {
        add_bos_token: None,
        ..tiny_gpt2("llama-bpe")
    })
    .unwrap();
    assert_eq!(llama3.encode("hello", true).unwrap()[0], 1);
}

#[test]
fn bad_vocabularies_are_errors() {
    let err = Tokenizer::from_gguf(GgufVocab {
        model: "bert".into(),
        ..tiny_gpt2("smollm")
    })
    .unwrap_err();
    assert!(matches!(err, TokenizerError::UnsupportedModel(_)), "{err}");
    assert!(Tokenizer::from_gguf(GgufVocab::default()).is_err());
    assert!(Tokenizer::from_gguf(GgufVocab {
        bos_token_id: Some(1_000_000),
        ..tiny_gpt2("smollm")
    })
    .is_err());
    assert!(Tokenizer::from_gguf(GgufVocab {
        token_types: Some(vec![1]),
        ..tiny_gpt2("smollm")
    })
    .is_err());
    // A merge leaving the vocabulary is skipped, not fatal.
    let mut v = tiny_gpt2("smollm");
    v.merges.as_mut().unwrap().push("x y".into());
    v.merges.as_mut().unwrap().push("nospace".into());
    assert!(Tokenizer::from_gguf(v).is_ok());
}

#[test]
fn spm_vocabulary() {
    let t = Tokenizer::from_gguf(tiny_spm()).unwrap();
    assert!(t.add_bos_token(), "llama vocabularies add BOS by default");
    let hello = id(&t, "▁hello");
    let world = id(&t, "▁world");
    assert_eq!(t.encode("hello world", false).unwrap(), vec![hello, world]);
    assert_eq!(
        t.encode("hello world", true).unwrap(),
        vec![1, hello, world]
    );
    // Not in the vocabulary: byte fallback, é = C3 A9.
    assert_eq!(
        t.encode("hé", false).unwrap(),
        vec![id(&t, "▁"), id(&t, "h"), id(&t, "<0xC3>"), id(&t, "<0xA9>")]
    );
    // Control tokens in text; text after one gets its own space prefix (llama.cpp, HF legacy).
    assert_eq!(t.encode("<s>hello</s>", false).unwrap(), vec![1, hello, 2]);
    for s in ["hello world", "hé wörld 🦀!", "hello  world", "日本"] {
        let ids = t.encode(s, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), s, "round trip of {s:?}");
    }
    assert_eq!(
        t.decode(&[1, hello, world, 2], true).unwrap(),
        "hello world"
    );
    assert_eq!(
        t.decode(&[1, hello, world, 2], false).unwrap(),
        "<s> hello world</s>"
    );

    // Without add_space_prefix there is no leading "▁" and nothing is stripped.
    let t = Tokenizer::from_gguf(GgufVocab {
        add_space_prefix: Some(false),
        ..tiny_spm()
    })
    .unwrap();
    assert_eq!(t.encode(" hello", false).unwrap(), vec![hello]);
    assert_eq!(t.decode(&[hello, world], false).unwrap(), " hello world");
}

/// Streams `ids` through the incremental decoder, checking every piece.
fn stream(t: &Tokenizer, ids: &[u32]) -> (String, Vec<String>) {
    let mut d = t.decoder();
    let mut pieces = Vec::new();
    for &i in ids {
        let p = d.push(i).unwrap();
        assert!(!p.contains('\u{FFFD}'), "partial char in {p:?}");
        pieces.push(p);
    }
    let tail = d.flush();
    pieces.push(tail);
    (pieces.concat(), pieces)
}

#[test]
fn incremental_decoding_never_splits_chars() {
    let t = Tokenizer::from_gguf(tiny_gpt2("smollm")).unwrap();
    for s in TEXTS {
        let ids = t.encode(s, false).unwrap();
        let (text, _) = stream(&t, &ids);
        assert_eq!(&text, s);
        assert_eq!(text, t.decode(&ids, true).unwrap());
    }
    // 🦀 is four byte tokens here: nothing comes out until the last one.
    let ids = t.encode("a🦀", false).unwrap();
    assert_eq!(ids.len(), 5);
    let (_, pieces) = stream(&t, &ids);
    assert_eq!(pieces, ["a", "", "", "", "🦀", ""]);
    // Special tokens are skipped in the stream.
    let ids = t.encode("<|im_start|>hello<|im_end|>", false).unwrap();
    assert_eq!(stream(&t, &ids).0, "hello");

    let spm = Tokenizer::from_gguf(tiny_spm()).unwrap();
    for s in ["hello world", "hé wörld 🦀!", "日本 hello"] {
        let ids = spm.encode(s, false).unwrap();
        let (text, _) = stream(&spm, &ids);
        assert_eq!(text, s);
    }
}

#[test]
fn incremental_decoding_flushes_incomplete_bytes() {
    let t = Tokenizer::from_gguf(tiny_gpt2("smollm")).unwrap();
    let ids = t.encode("ok🦀", false).unwrap();
    let mut d = t.decoder();
    let mut out = String::new();
    for &i in &ids[..ids.len() - 1] {
        out.push_str(&d.push(i).unwrap());
    }
    assert_eq!(out, "ok");
    // Generation ended mid-character: the held bytes come out as U+FFFD.
    assert_eq!(d.flush(), "\u{FFFD}");
    assert_eq!(d.flush(), "");
}

#[test]
fn decoder_and_stop_matcher_together() {
    // As the engine uses them: stop string split across tokens and pieces.
    let t = Tokenizer::from_gguf(tiny_gpt2("smollm")).unwrap();
    let ids = t.encode("hello the world. STOP here", false).unwrap();
    let mut d = t.decoder();
    let mut stops = StopMatcher::new(["STOP"]);
    let mut out = String::new();
    let mut stopped = false;
    for &i in &ids {
        let r = stops.push(&d.push(i).unwrap());
        out.push_str(&r.emit);
        if r.stopped {
            stopped = true;
            break;
        }
    }
    assert!(stopped);
    assert_eq!(out, "hello the world. ");
}

#[test]
fn chat_template_renders_and_encodes() {
    let t = Tokenizer::from_gguf(tiny_gpt2("smollm")).unwrap();
    assert_eq!(t.chat_template(), Some(TINY_TEMPLATE));
    let msgs = [ChatMessage::new("user", "hello")];
    let s = t.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = t.encode(&s, false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);

    let none = Tokenizer::from_gguf(GgufVocab {
        chat_template: None,
        ..tiny_gpt2("smollm")
    })
    .unwrap();
    let err = none.apply_chat_template(&msgs, true).unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate));
    assert_eq!(err.to_string(), "model has no chat template");

    // A broken template does not stop the model from loading; it fails on use.
    let broken = Tokenizer::from_gguf(GgufVocab {
        chat_template: Some("{% for m in messages %}".into()),
        ..tiny_gpt2("smollm")
    })
    .unwrap();
    assert!(matches!(
        broken.apply_chat_template(&msgs, true),
        Err(TokenizerError::Template(_))
    ));

    // bos_token/eos_token are available to templates.
    let special = Tokenizer::from_gguf(GgufVocab {
        chat_template: Some("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into()),
        ..tiny_gpt2("smollm")
    })
    .unwrap();
    assert_eq!(
        special.apply_chat_template(&msgs, false).unwrap(),
        "<|im_start|>hello<|im_end|>"
    );
}

#[test]
fn json_round_trip_tokenizes_identically() {
    for v in [tiny_gpt2("smollm"), tiny_gpt2("llama-bpe"), tiny_spm()] {
        let a = Tokenizer::from_gguf(v).unwrap();
        let json = a.to_json().unwrap();
        let b = Tokenizer::from_json(&json).unwrap();
        assert_eq!(b.to_json().unwrap(), json);
        for s in TEXTS
            .iter()
            .chain(&["<|im_start|>x<|im_end|>", "<s>hello</s>"])
        {
            for special in [false, true] {
                assert_eq!(a.encode(s, special).unwrap(), b.encode(s, special).unwrap());
            }
            let ids = a.encode(s, true).unwrap();
            assert_eq!(a.decode(&ids, true).unwrap(), b.decode(&ids, true).unwrap());
        }
        assert_eq!(a.bos_token_id(), b.bos_token_id());
        assert_eq!(a.eos_token_ids(), b.eos_token_ids());
        assert_eq!(a.vocab_size(), b.vocab_size());
        assert_eq!(a.add_bos_token(), b.add_bos_token());
        assert_eq!(a.chat_template(), b.chat_template());
    }
    assert!(Tokenizer::from_json("{}").is_err());
    let other_format = Tokenizer::from_gguf(tiny_gpt2("smollm"))
        .unwrap()
        .to_json()
        .unwrap()
        .replace("llmd-tokenizer/1", "llmd-tokenizer/0");
    assert!(matches!(
        Tokenizer::from_json(&other_format),
        Err(TokenizerError::Json(_))
    ));
    assert!(Tokenizer::from_json("not json").is_err());
}

#[test]
fn hf_files_layout() {
    let gguf = Tokenizer::from_gguf(tiny_gpt2("smollm")).unwrap();
    let portable: serde_json::Value = serde_json::from_str(&gguf.to_json().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tok_path = dir.path().join("tokenizer.json");
    std::fs::write(&tok_path, portable["tokenizer"].to_string()).unwrap();
    let cfg_path = dir.path().join("tokenizer_config.json");
    let cfg = serde_json::json!({
        "bos_token": {"content": "<|im_start|>", "special": true},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": TINY_TEMPLATE},
        ],
    });
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let gen_path = dir.path().join("generation_config.json");
    std::fs::write(&gen_path, r#"{"bos_token_id": 1, "eos_token_id": [2, 0]}"#).unwrap();

    let t = Tokenizer::from_files(&tok_path, Some(&cfg_path), Some(&gen_path)).unwrap();
    assert_eq!(t.bos_token_id(), Some(1));
    assert_eq!(t.eos_token_ids(), &[2, 0]);
    assert!(!t.add_bos_token());
    assert_eq!(t.chat_template(), Some(TINY_TEMPLATE));
    assert_eq!(t.vocab_size(), gguf.vocab_size());
    for s in TEXTS {
        assert_eq!(t.encode(s, true).unwrap(), gguf.encode(s, true).unwrap());
    }
    let msgs = [ChatMessage::new("user", "hi")];
    assert_eq!(
        t.apply_chat_template(&msgs, true).unwrap(),
        gguf.apply_chat_template(&msgs, true).unwrap()
    );

    // Plain-string template, int eos, no generation config.
    std::fs::write(
        &cfg_path,
        r#"{"eos_token": "<|endoftext|>", "chat_template": "X"}"#,
    )
    .unwrap();
    std::fs::write(&gen_path, r#"{"eos_token_id": 2}"#).unwrap();
    let t = Tokenizer::from_files(&tok_path, Some(&cfg_path), Some(&gen_path)).unwrap();
    assert_eq!(t.eos_token_ids(), &[0, 2]);
    assert_eq!(t.chat_template(), Some("X"));

    // No config at all: the template may sit beside tokenizer.json.
    let t = Tokenizer::from_files(&tok_path, None, None).unwrap();
    assert_eq!(t.chat_template(), None);
    std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
    let t = Tokenizer::from_files(&tok_path, None, None).unwrap();
    assert_eq!(t.chat_template(), Some("J"));

    assert!(matches!(
        Tokenizer::from_files(&dir.path().join("missing.json"), None, None),
        Err(TokenizerError::Io { .. })
    ));
    std::fs::write(&cfg_path, "{").unwrap();
    assert!(matches!(
        Tokenizer::from_files(&tok_path, Some(&cfg_path), None),
        Err(TokenizerError::InvalidConfig { .. })
    ));
}

#[test]
fn hf_files_with_bos_post_processor() {
    let gguf = Tokenizer::from_gguf(GgufVocab {
        add_bos_token: Some(true),
        ..tiny_gpt2("llama-bpe")
    })
    .unwrap();
    let portable: serde_json::Value = serde_json::from_str(&gguf.to_json().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tok_path = dir.path().join("tokenizer.json");
    std::fs::write(&tok_path, portable["tokenizer"].to_string()).unwrap();
    let cfg_path = dir.path().join("tokenizer_config.json");
    std::fs::write(
        &cfg_path,
        r#"{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}"#,
    )
    .unwrap();
    let t = Tokenizer::from_files(&tok_path, Some(&cfg_path), None).unwrap();
    assert!(t.add_bos_token());
    assert_eq!(t.encode("hello", true).unwrap()[0], 1);
    assert_eq!(
        t.encode("hello", true).unwrap(),
        gguf.encode("hello", true).unwrap()
    );
}
