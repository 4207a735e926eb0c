//! Chat templates in the style of real models' (Llama 3.1, Qwen3) rendered as HF does.
//! Expected strings come from jinja2's ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True, loopcontrols) with HF's `tojson` and `raise_exception`.
#![allow(clippy::unwrap_used)]

mod support;

use llmd_tokenizer::{ChatMessage, GgufVocab, Tokenizer, TokenizerError};

fn with_template(src: &str) -> Tokenizer {
    Tokenizer::from_gguf(GgufVocab {
        chat_template: Some(src.into()),
        ..support::tiny_gpt2("smollm")
    })
    .unwrap()
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "  Be brief.  "),
        ChatMessage::new("user", "Hi there"),
        ChatMessage::new("assistant", "<think>hmm</think>\n\nHello!"),
        ChatMessage::new("user", "<tool_response>x</tool_response>"),
    ]
}

#[test]
fn llama31_style() {
    let t = with_template(include_str!("fixtures/templates/llama31.jinja"));
    let out = t.apply_chat_template(&conversation()[..3], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<think>hmm</think>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let err = t
        .apply_chat_template(&[ChatMessage::new("tool", "x")], true)
        .unwrap_err();
    match err {
        TokenizerError::TemplateRaised(m) => {
            assert_eq!(m, "Only user and assistant roles are supported!")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn qwen3_style() {
    let t = with_template(include_str!("fixtures/templates/qwen3ish.jinja"));
    let out = t.apply_chat_template(&conversation(), true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\n  Be brief.  <|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n<tool_response>x</tool_response><|im_end|>\n<|im_start|>assistant\n1 system,user,assistant,user {\"role\": \"system\", \"content\": \"  Be brief.  \"} A+B+C Xxx"
    );
}
