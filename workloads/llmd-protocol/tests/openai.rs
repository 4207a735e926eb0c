#![allow(clippy::unwrap_used)]
//! The OpenAI/vLLM API types: bodies as the official `openai` Python client sends them,
//! every validation error with its `param`, and the exact JSON vLLM sends for responses,
//! stream chunks, errors, models and tokenize (field order and null-vs-absent included).

use llmd_protocol::openai::*;
use serde_json::{json, Value};

fn chat(v: Value) -> ChatCompletionRequest {
    serde_json::from_value(v).unwrap()
}

fn completion(v: Value) -> CompletionRequest {
    serde_json::from_value(v).unwrap()
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

// --- Requests as the openai client sends them --------------------------------------------

#[test]
fn chat_streamed_with_usage_as_the_client_sends_it() {
    // client.chat.completions.create(model=..., messages=..., max_tokens=24,
    //     temperature=0, stream=True, stream_options={"include_usage": True})
    let body = r#"{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Name three colours of the rainbow."}],"model":"tiny","max_tokens":24,"stream":true,"stream_options":{"include_usage":true},"temperature":0}"#;
    let r: ChatCompletionRequest = serde_json::from_str(body).unwrap();
    assert_eq!(r.model.as_deref(), Some("tiny"));
    assert_eq!(r.messages.len(), 2);
    assert_eq!(r.messages[1].text(), "Name three colours of the rainbow.");
    assert!(r.is_stream() && r.include_usage() && !r.continuous_usage());
    assert!(r.extra.is_empty(), "{:?}", r.extra);
    let s = r.validate().unwrap();
    assert_eq!(
        s,
        SamplingSettings {
            max_tokens: Some(24),
            temperature: Some(0.0),
            ..SamplingSettings::default()
        }
    );
}

#[test]
fn chat_content_parts_names_and_tool_messages() {
    let r = chat(json!({
        "model": "m",
        "messages": [
            {"role": "developer", "content": "be brief", "name": "ops"},
            {"role": "user", "content": [
                {"type": "text", "text": "first"},
                {"type": "text", "text": "second"}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"}
        ]
    }));
    assert_eq!(r.messages[0].name.as_deref(), Some("ops"));
    assert_eq!(r.messages[1].text(), "first\nsecond");
    assert_eq!(r.messages[2].text(), "");
    assert_eq!(r.messages[2].tool_calls.as_ref().map(Vec::len), Some(1));
    assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("call_1"));
    r.validate().unwrap();
}

#[test]
fn stop_as_a_string_and_as_an_array() {
    let s = completion(json!({"model": "m", "prompt": "One,", "stop": ","}))
        .validate()
        .unwrap();
    assert_eq!(s.stop, vec![","]);
    let s = completion(
        json!({"model": "m", "prompt": "One,", "stop": ["\n", "END", "x", "y", "z"], "stop_token_ids": [5, 5, 6]}),
    )
    .validate()
    .unwrap();
    // More than OpenAI's 4 is fine: vLLM has no limit and harnesses send more.
    assert_eq!(s.stop, vec!["\n", "END", "x", "y", "z"]);
    assert_eq!(s.stop_token_ids, vec![5, 6]);
    let s = chat(json!({"messages": [{"role": "user", "content": "x"}], "stop": null}))
        .validate()
        .unwrap();
    assert!(s.stop.is_empty());
}

#[test]
fn completions_with_token_ids_as_the_client_sends_them() {
    // client.completions.create(model=..., prompt=[1, 2, 3, 4], max_tokens=4, temperature=0)
    let body = r#"{"model":"tiny","prompt":[1,2,3,4],"max_tokens":4,"temperature":0}"#;
    let r: CompletionRequest = serde_json::from_str(body).unwrap();
    assert_eq!(
        r.prompt_input().unwrap(),
        PromptInput::Tokens(vec![1, 2, 3, 4])
    );
    let s = r.validate().unwrap();
    assert_eq!(s.max_tokens, Some(4));
    assert!(!r.include_usage());
}

#[test]
fn completion_prompt_shapes() {
    let p = |v: Value| completion(json!({"prompt": v})).prompt_input();
    assert_eq!(p(json!("hi")).unwrap(), PromptInput::Text("hi".into()));
    assert_eq!(p(json!(["hi"])).unwrap(), PromptInput::Text("hi".into()));
    assert_eq!(p(json!([7])).unwrap(), PromptInput::Tokens(vec![7]));
    assert_eq!(p(json!([[4, 5]])).unwrap(), PromptInput::Tokens(vec![4, 5]));
    assert_eq!(
        p(json!([4_294_967_295u64])).unwrap(),
        PromptInput::Tokens(vec![u32::MAX])
    );
    for bad in [
        json!(""),
        json!([]),
        json!([""]),
        json!([[]]),
        json!(3),
        json!(true),
        json!({"a": 1}),
        json!([-1]),
        json!([1.5]),
        json!([4_294_967_296u64]),
        json!([1, "a"]),
        json!(["a", 1]),
        json!([[1, -2]]),
        Value::Null,
    ] {
        let e = p(bad.clone())
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert_eq!(e.param(), Some("prompt"), "{bad}");
        assert_eq!(e.status(), 400);
    }
    // A batch is refused with a message saying so.
    for batch in [json!(["a", "b"]), json!([[1], [2]]), json!(["a", [1]])] {
        let e = p(batch).unwrap_err();
        assert!(
            e.error.message.contains("2 prompts in one request"),
            "{}",
            e.error.message
        );
        assert_eq!(e.param(), Some("prompt"));
    }
    // A missing prompt is a validation error naming it, not a parse failure.
    let e = completion(json!({"model": "m"})).validate().unwrap_err();
    assert_eq!(e.param(), Some("prompt"));
}

#[test]
fn unknown_fields_are_ignored_and_kept() {
    let r = chat(json!({
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "temperature": 0.7,
        "tools": [], "tool_choice": "none", "parallel_tool_calls": true,
        "metadata": {"k": "v"}, "store": false, "service_tier": "auto",
        "response_format": {"type": "text"}, "logit_bias": {"50256": -100},
        "best_of": 1, "use_beam_search": false, "skip_special_tokens": true,
        "request_id": "abc", "priority": 0, "vllm_xargs": {"a": 1},
        "chat_template_kwargs": {"enable_thinking": false},
        "add_generation_prompt": true, "add_special_tokens": false
    }));
    r.validate().unwrap();
    for k in [
        "tools",
        "metadata",
        "response_format",
        "logit_bias",
        "request_id",
    ] {
        assert!(r.extra.contains_key(k), "{k} not kept");
    }
    // Known fields are parsed, not duplicated into `extra`.
    for k in [
        "temperature",
        "messages",
        "model",
        "chat_template_kwargs",
        "add_generation_prompt",
    ] {
        assert!(!r.extra.contains_key(k), "{k} in extra");
    }
    assert_eq!(r.sampling.temperature, Some(0.7));
    assert_eq!(
        r.chat_template_kwargs.as_ref().unwrap()["enable_thinking"],
        json!(false)
    );
    assert_eq!(r.add_generation_prompt, Some(true));
    assert_eq!(r.add_special_tokens, Some(false));

    let c = completion(
        json!({"prompt": "x", "best_of": 1, "logit_bias": {}, "add_special_tokens": false}),
    );
    c.validate().unwrap();
    assert!(c.extra.contains_key("best_of"));
    assert_eq!(c.add_special_tokens, Some(false));
}

#[test]
fn a_gateway_can_rewrite_and_resend_a_request() {
    let mut r = chat(json!({
        "model": "m", "messages": [{"role": "user", "content": "x"}],
        "max_completion_tokens": 50, "stream": true, "custom_field": [1, 2],
        "kv_transfer_params": {"do_remote_decode": true}
    }));
    r.sampling.set_max_tokens(1);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["max_tokens"], 1);
    assert!(v.get("max_completion_tokens").is_none());
    assert_eq!(v["custom_field"], json!([1, 2]));
    assert_eq!(v["kv_transfer_params"], json!({"do_remote_decode": true}));
    assert!(
        v.get("temperature").is_none(),
        "unset fields are not sent: {v}"
    );
    let again: ChatCompletionRequest = serde_json::from_value(v).unwrap();
    assert_eq!(again, r);
    assert_eq!(again.validate().unwrap().max_tokens, Some(1));

    // An explicit null max_tokens survives the round trip (it means "no limit").
    let c = completion(json!({"prompt": "x", "max_tokens": null}));
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v.get("max_tokens"), Some(&Value::Null));
    assert_eq!(serde_json::from_value::<CompletionRequest>(v).unwrap(), c);
}

// --- Validation ---------------------------------------------------------------------------

fn chat_error(extra: Value) -> ErrorResponse {
    let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    chat(b.clone())
        .validate()
        .err()
        .unwrap_or_else(|| panic!("{b} accepted"))
}

fn completion_error(extra: Value) -> ErrorResponse {
    let mut b = json!({"model": "m", "prompt": "x"});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    completion(b.clone())
        .validate()
        .err()
        .unwrap_or_else(|| panic!("{b} accepted"))
}

#[test]
fn every_chat_validation_error_names_its_param() {
    let cases = [
        (json!({"n": 2}), "n"),
        (json!({"n": 0}), "n"),
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"temperature": -0.1}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_p": 1.01}), "top_p"),
        (json!({"top_k": -2}), "top_k"),
        (json!({"min_p": 1.5}), "min_p"),
        (json!({"min_p": -0.1}), "min_p"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"max_tokens": 5_000_000_000u64}), "max_tokens"),
        (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
        // max_completion_tokens wins, so it is the one checked.
        (
            json!({"max_tokens": 5, "max_completion_tokens": -1}),
            "max_completion_tokens",
        ),
        (json!({"presence_penalty": 2.5}), "presence_penalty"),
        (json!({"frequency_penalty": -3}), "frequency_penalty"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"stop": ""}), "stop"),
        (json!({"stop": ["a", ""]}), "stop"),
        (json!({"stop_token_ids": [-1]}), "stop_token_ids"),
        (json!({"logprobs": 3}), "logprobs"),
        (json!({"logprobs": "yes"}), "logprobs"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            json!({"logprobs": true, "top_logprobs": -1}),
            "top_logprobs",
        ),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (
            json!({"stream": false, "stream_options": {"include_usage": false}}),
            "stream_options",
        ),
        (json!({"kv_transfer_params": "x"}), "kv_transfer_params"),
        (json!({"kv_transfer_params": [1]}), "kv_transfer_params"),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [
                {"role": "user", "content": "x"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
            ]}),
            "messages[1].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
            "messages[0].content",
        ),
    ];
    for (extra, param) in cases {
        let e = chat_error(extra.clone());
        assert_eq!(e.param(), Some(param), "{extra}: {e}");
        assert_eq!(e.status(), 400, "{extra}");
        assert_eq!(e.error.kind, "invalid_request_error");
        assert!(!e.error.message.is_empty());
    }
    let e = chat_error(json!({"n": 3}));
    assert!(e.error.message.contains("n must be 1"), "{e}");
    let e = chat_error(json!({"top_logprobs": 2}));
    assert!(
        e.error.message.contains("logprobs must be set to true"),
        "{e}"
    );
    let e = chat_error(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}));
    assert!(e.error.message.contains("\"image_url\""), "{e}");
}

#[test]
fn every_completion_validation_error_names_its_param() {
    let cases = [
        (json!({"logprobs": true}), "logprobs"),
        (json!({"logprobs": 21}), "logprobs"),
        (json!({"logprobs": -1}), "logprobs"),
        (json!({"logprobs": 1.5}), "logprobs"),
        (json!({"echo": true}), "echo"),
        (json!({"suffix": "tail"}), "suffix"),
        (json!({"suffix": ""}), "suffix"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"temperature": 3}), "temperature"),
        (json!({"n": 2}), "n"),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"kv_transfer_params": 1}), "kv_transfer_params"),
        (json!({"prompt": ["a", "b"]}), "prompt"),
    ];
    for (extra, param) in cases {
        let e = completion_error(extra.clone());
        assert_eq!(e.param(), Some(param), "{extra}: {e}");
        assert_eq!(e.status(), 400, "{extra}");
    }
}

#[test]
fn accepted_values_normalize() {
    let ok = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "x"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        chat(b).validate().unwrap()
    };
    assert_eq!(ok(json!({"n": 1})).max_tokens, None);
    assert_eq!(ok(json!({"max_tokens": null})).max_tokens, None);
    assert_eq!(
        ok(json!({"max_tokens": 5, "max_completion_tokens": 7})).max_tokens,
        Some(7)
    );
    assert_eq!(
        ok(json!({"max_tokens": 5, "max_completion_tokens": null})).max_tokens,
        Some(5)
    );
    assert_eq!(ok(json!({"top_k": -1})).top_k, None);
    assert_eq!(ok(json!({"top_k": 0})).top_k, None);
    assert_eq!(ok(json!({"top_k": 40})).top_k, Some(40));
    assert_eq!(ok(json!({"top_p": 1})).top_p, Some(1.0));
    assert_eq!(ok(json!({"temperature": 2})).temperature, Some(2.0));
    assert_eq!(ok(json!({"seed": -1})).seed, None);
    assert_eq!(ok(json!({"seed": 7})).seed, Some(7));
    assert_eq!(ok(json!({"seed": -2})).seed, Some(u64::MAX - 1));
    assert_eq!(ok(json!({"min_p": 0})).min_p, None);
    assert_eq!(ok(json!({"min_p": 0.5})).min_p, Some(0.5));
    assert!(ok(json!({"ignore_eos": true})).ignore_eos);
    assert_eq!(ok(json!({"logprobs": true})).logprobs, Some(0));
    assert_eq!(
        ok(json!({"logprobs": true, "top_logprobs": 5})).logprobs,
        Some(5)
    );
    assert_eq!(
        ok(json!({"logprobs": false, "top_logprobs": 0})).logprobs,
        None
    );
    let s =
        ok(json!({"presence_penalty": -2, "frequency_penalty": 0.5, "repetition_penalty": 1.1}));
    assert_eq!((s.presence_penalty, s.frequency_penalty), (-2.0, 0.5));
    assert_eq!(s.repetition_penalty, Some(1.1));
    // An empty stream_options without stream is harmless (vLLM checks truthiness).
    ok(json!({"stream_options": {}}));
    ok(json!({"kv_transfer_params": null}));

    // Completions: max_tokens defaults to 16; null means "to the end of the context";
    // max_completion_tokens is not a completions field.
    let m = |b: Value| completion(b).validate().unwrap().max_tokens;
    assert_eq!(
        m(json!({"prompt": "x"})),
        Some(DEFAULT_COMPLETION_MAX_TOKENS)
    );
    assert_eq!(m(json!({"prompt": "x", "max_tokens": null})), None);
    assert_eq!(m(json!({"prompt": "x", "max_tokens": 3})), Some(3));
    assert_eq!(
        m(json!({"prompt": "x", "max_completion_tokens": 3})),
        Some(16)
    );
    let l = |b: Value| completion(b).validate().unwrap().logprobs;
    assert_eq!(l(json!({"prompt": "x", "logprobs": 0})), Some(0));
    assert_eq!(l(json!({"prompt": "x", "logprobs": 5})), Some(5));
    assert_eq!(l(json!({"prompt": "x", "logprobs": null})), None);
    completion(json!({"prompt": "x", "echo": false}))
        .validate()
        .unwrap();
}

#[test]
fn the_server_refuses_what_its_engine_cannot_apply() {
    let s = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "x"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        chat(b).validate().unwrap()
    };
    let none = Capabilities::default();
    // What clients send by default passes.
    s(json!({"presence_penalty": 0, "frequency_penalty": 0, "logprobs": false, "repetition_penalty": 1, "min_p": 0}))
        .check_supported(none)
        .unwrap();
    for (extra, param) in [
        (json!({"logprobs": true}), "logprobs"),
        (json!({"presence_penalty": 0.5}), "presence_penalty"),
        (json!({"frequency_penalty": -1}), "frequency_penalty"),
        (json!({"repetition_penalty": 1.2}), "repetition_penalty"),
        (json!({"min_p": 0.05}), "min_p"),
    ] {
        let settings = s(extra.clone());
        let e = settings.check_supported(none).unwrap_err();
        assert_eq!(e.param(), Some(param), "{extra}");
        assert_eq!(e.status(), 400);
        assert!(e.error.message.contains("not supported"), "{e}");
        let all = Capabilities {
            logprobs: true,
            penalties: true,
            min_p: true,
        };
        settings.check_supported(all).unwrap();
    }
}

#[test]
fn usage_flags_follow_vllm() {
    let flags = |stream: Value, opts: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "x"}], "stream": stream});
        if !opts.is_null() {
            b["stream_options"] = opts;
        }
        let r = chat(b);
        (r.include_usage(), r.continuous_usage())
    };
    assert_eq!(flags(json!(true), Value::Null), (false, false));
    assert_eq!(
        flags(json!(true), json!({"include_usage": true})),
        (true, false)
    );
    // vLLM's StreamOptions.include_usage defaults to true once stream_options is given.
    assert_eq!(flags(json!(true), json!({})), (true, false));
    assert_eq!(
        flags(json!(true), json!({"include_usage": false})),
        (false, false)
    );
    assert_eq!(
        flags(json!(true), json!({"continuous_usage_stats": true})),
        (true, true)
    );
    assert_eq!(
        flags(
            json!(true),
            json!({"include_usage": false, "continuous_usage_stats": true})
        ),
        (false, false)
    );
    assert_eq!(flags(json!(false), json!({})), (false, false));
    let c = completion(
        json!({"prompt": "x", "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert!(c.is_stream() && c.include_usage());
}

// --- Responses, exactly as vLLM serialises them -----------------------------------------

#[test]
fn chat_response_json() {
    let r = ChatCompletionResponse::new(
        "chatcmpl-1".into(),
        5,
        "m".into(),
        "hi".into(),
        "stop",
        Usage::new(3, 1, 0),
        None,
    );
    assert_eq!(
        to_json(&r),
        r#"{"id":"chatcmpl-1","object":"chat.completion","created":5,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null,"annotations":null,"audio":null,"function_call":null,"tool_calls":[],"reasoning_content":null},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":3,"total_tokens":4,"completion_tokens":1,"prompt_tokens_details":null},"prompt_logprobs":null,"kv_transfer_params":null}"#
    );
    // The prefill leg's answer carries the KV hand-off; cached tokens are reported.
    let kv = json!({"remote_engine_id": "e", "remote_block_ids": [1, 2], "remote_host": "h", "remote_port": 9, "remote_request_id": "r"});
    let r = ChatCompletionResponse::new(
        "chatcmpl-2".into(),
        5,
        "m".into(),
        "".into(),
        "length",
        Usage::new(40, 1, 32),
        Some(kv.clone()),
    )
    .with_stop_reason(Some(StopReason::Text("\n".into())));
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["kv_transfer_params"], kv);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 40, "total_tokens": 41, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 32}})
    );
    assert_eq!(v["choices"][0]["stop_reason"], "\n");
    // And it parses back (the gateway reads workers' answers).
    assert_eq!(
        serde_json::from_value::<ChatCompletionResponse>(v).unwrap(),
        r
    );
}

#[test]
fn chat_chunks_json() {
    let first = ChatCompletionChunk::new("chatcmpl-x", 1, "m", Some("assistant"), Some(""), None);
    assert_eq!(
        to_json(&first),
        r#"{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#
    );
    let mid = ChatCompletionChunk::new("chatcmpl-x", 1, "m", None, Some("Red"), None);
    assert_eq!(
        to_json(&mid),
        r#"{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Red"},"logprobs":null,"finish_reason":null}]}"#
    );
    // stop_reason appears on the finishing chunk only.
    let last = ChatCompletionChunk::new("chatcmpl-x", 1, "m", None, Some(""), Some("length"));
    assert_eq!(
        to_json(&last),
        r#"{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"length","stop_reason":null}]}"#
    );
    let stopped = ChatCompletionChunk::new("chatcmpl-x", 1, "m", None, None, Some("stop"))
        .with_stop_reason(Some(StopReason::Token(128009)));
    assert_eq!(
        to_json(&stopped),
        r#"{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":128009}]}"#
    );
    // The usage chunk: no choices, no prompt_tokens_details unless set.
    let usage = ChatCompletionChunk::usage_only("chatcmpl-x", 1, "m", Usage::new(3, 2, 0));
    assert_eq!(
        to_json(&usage),
        r#"{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}}"#
    );
    let usage = ChatCompletionChunk::usage_only("chatcmpl-x", 1, "m", Usage::new(3, 2, 2));
    assert_eq!(
        serde_json::to_value(&usage).unwrap()["usage"]["prompt_tokens_details"],
        json!({"cached_tokens": 2})
    );
    // Continuous usage rides on ordinary chunks.
    let v = serde_json::to_value(mid.clone().with_usage(Usage::new(3, 1, 0))).unwrap();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 4, "completion_tokens": 1})
    );
    // Chunks parse back, as a gateway relaying a worker's stream reads them.
    for c in [first, mid, last, stopped] {
        let back: ChatCompletionChunk = serde_json::from_str(&to_json(&c)).unwrap();
        assert_eq!(back, c);
    }
}

#[test]
fn completion_response_and_chunks_json() {
    let r = CompletionResponse::new(
        "cmpl-1".into(),
        5,
        "m".into(),
        " Paris".into(),
        "length",
        Usage::new(5, 1, 0),
        Some(json!({"remote_block_ids": [1]})),
    );
    assert_eq!(
        to_json(&r),
        r#"{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"index":0,"text":" Paris","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_logprobs":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1,"prompt_tokens_details":null},"kv_transfer_params":{"remote_block_ids":[1]}}"#
    );
    // Completion chunks carry every field, "usage": null included.
    let c = CompletionChunk::new("cmpl-1", 5, "m", " Paris", None);
    assert_eq!(
        to_json(&c),
        r#"{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"index":0,"text":" Paris","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}"#
    );
    let c = CompletionChunk::new("cmpl-1", 5, "m", "", Some("stop"))
        .with_stop_reason(Some(StopReason::Text(",".into())));
    assert_eq!(
        to_json(&c),
        r#"{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"index":0,"text":"","logprobs":null,"finish_reason":"stop","stop_reason":","}],"usage":null}"#
    );
    let u = CompletionChunk::usage_only("cmpl-1", 5, "m", Usage::new(1, 2, 0));
    assert_eq!(
        to_json(&u),
        r#"{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[],"usage":{"prompt_tokens":1,"total_tokens":3,"completion_tokens":2}}"#
    );
    let back: CompletionChunk = serde_json::from_str(&to_json(&c)).unwrap();
    assert_eq!(back, c);
    let back: CompletionResponse = serde_json::from_str(&to_json(&r)).unwrap();
    assert_eq!(back, r);
}

#[test]
fn logprobs_json() {
    let chat_lp = ChatLogprobs {
        content: Some(vec![ChatLogprob::new(
            "Hi",
            -0.5,
            vec![
                ChatTopLogprob::new("Hi", -0.5),
                ChatTopLogprob::new("Hello", -1.25),
            ],
        )]),
    };
    assert_eq!(
        to_json(&chat_lp),
        r#"{"content":[{"token":"Hi","logprob":-0.5,"bytes":[72,105],"top_logprobs":[{"token":"Hi","logprob":-0.5,"bytes":[72,105]},{"token":"Hello","logprob":-1.25,"bytes":[72,101,108,108,111]}]}]}"#
    );
    let chunk = ChatCompletionChunk::new("c", 1, "m", None, Some("Hi"), None)
        .with_logprobs(chat_lp.clone());
    let v = serde_json::to_value(&chunk).unwrap();
    assert_eq!(v["choices"][0]["logprobs"]["content"][0]["token"], "Hi");
    let r = ChatCompletionResponse::new(
        "c".into(),
        1,
        "m".into(),
        "Hi".into(),
        "stop",
        Usage::new(1, 1, 0),
        None,
    )
    .with_logprobs(chat_lp);
    let back: ChatCompletionResponse = serde_json::from_str(&to_json(&r)).unwrap();
    assert_eq!(back, r);

    let mut lp = CompletionLogprobs::starting_at(0);
    lp.push(
        " Paris",
        -0.25,
        &[(" Paris".into(), -0.25), (" Lyon".into(), -2.5)],
    );
    // -inf is not JSON: vLLM clamps it to -9999.
    lp.push(".", f32::NEG_INFINITY, &[(".".into(), f32::NEG_INFINITY)]);
    assert_eq!(
        to_json(&lp),
        r#"{"text_offset":[0,6],"token_logprobs":[-0.25,-9999.0],"tokens":[" Paris","."],"top_logprobs":[{" Paris":-0.25," Lyon":-2.5},{".":-9999.0}]}"#
    );
    // Offsets count characters, as Python's len() does; a later chunk starts further on.
    let mut lp = CompletionLogprobs::starting_at(7);
    lp.push("é", -1.0, &[]);
    lp.push("x", -1.0, &[]);
    assert_eq!(lp.text_offset, vec![7, 8]);
    // Alternatives that decode alike: the better-ranked one is kept, in rank order.
    let m = TopLogprobMap(vec![
        ("b".into(), -1.0),
        ("a".into(), -2.0),
        ("b".into(), -3.0),
    ]);
    assert_eq!(to_json(&m), r#"{"b":-1.0,"a":-2.0}"#);
    let back: TopLogprobMap = serde_json::from_str(r#"{"b":-1.0,"a":-2.0}"#).unwrap();
    assert_eq!(back.0, vec![("b".into(), -1.0), ("a".into(), -2.0)]);
    let c = CompletionChunk::new("c", 1, "m", " Paris", None)
        .with_logprobs(CompletionLogprobs::default());
    assert_eq!(
        serde_json::to_value(&c).unwrap()["choices"][0]["logprobs"],
        json!({"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []})
    );
}

#[test]
fn errors_json_and_statuses() {
    let e = ErrorResponse::model_not_found("x");
    assert_eq!(
        to_json(&e),
        r#"{"error":{"message":"The model `x` does not exist.","type":"invalid_request_error","param":"model","code":404}}"#
    );
    let e = ErrorResponse::invalid_request("bad", None);
    assert_eq!(
        to_json(&e),
        r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":400}}"#
    );
    for (e, status, kind) in [
        (
            ErrorResponse::invalid_request("m", Some("top_p")),
            400,
            "invalid_request_error",
        ),
        (
            ErrorResponse::not_found("m", None),
            404,
            "invalid_request_error",
        ),
        (
            ErrorResponse::method_not_allowed("m"),
            405,
            "invalid_request_error",
        ),
        (
            ErrorResponse::payload_too_large("m"),
            413,
            "invalid_request_error",
        ),
        (
            ErrorResponse::too_many_requests("m"),
            429,
            "rate_limit_exceeded",
        ),
        (ErrorResponse::internal("m"), 500, "server_error"),
        (ErrorResponse::bad_gateway("m"), 502, "server_error"),
        (ErrorResponse::overloaded("m"), 503, "server_overloaded"),
    ] {
        assert_eq!(e.status(), status);
        assert_eq!(e.error.code, Some(status));
        assert_eq!(e.error.kind, kind);
        let v = serde_json::to_value(&e).unwrap();
        for k in ["message", "type", "param", "code"] {
            assert!(v["error"].get(k).is_some(), "{k} missing: {v}");
        }
    }
    let e = ErrorResponse::invalid_request("top_p must be in (0, 1], got 0", Some("top_p"));
    assert_eq!(
        e.to_string(),
        "400 invalid_request_error: top_p must be in (0, 1], got 0 (param top_p)"
    );
    // OpenAI's own errors carry a string code: still parsed.
    let e: ErrorResponse = serde_json::from_str(
        r#"{"error":{"message":"no","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
    )
    .unwrap();
    assert_eq!(e.error.code, None);
    assert_eq!(e.error.message, "no");
    // vLLM's mid-stream error event.
    assert_eq!(
        sse_data(&ErrorResponse::internal("boom")),
        "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"param\":null,\"code\":500}}\n\n"
    );
}

#[test]
fn sse_helpers() {
    assert_eq!(sse_data(&json!({"a": 1})), "data: {\"a\":1}\n\n");
    assert_eq!(SSE_DONE, "data: [DONE]\n\n");
    assert_eq!(format!("data: {SSE_DONE_DATA}\n\n"), SSE_DONE);
    let c = ChatCompletionChunk::new("c", 1, "m", None, Some("a\nb"), None);
    let ev = sse_data(&c);
    // One event: the JSON escapes newlines, so the data line is never split.
    assert!(ev.starts_with("data: {") && ev.ends_with("}\n\n"));
    assert_eq!(ev.matches('\n').count(), 2);
}

#[test]
fn models_json() {
    let list = ModelList::new(vec![ModelCard::new("m", 7, "llmd", "org/m", 2048)]);
    assert_eq!(
        to_json(&list),
        r#"{"object":"list","data":[{"id":"m","object":"model","created":7,"owned_by":"llmd","root":"org/m","parent":null,"max_model_len":2048,"permission":[{"id":"modelperm-m","object":"model_permission","created":7,"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,"organization":"*","group":null,"is_blocking":false}]}]}"#
    );
    // A minimal list from another server parses.
    let l: ModelList = serde_json::from_str(
        r#"{"object":"list","data":[{"id":"gpt","object":"model","created":1,"owned_by":"x"}]}"#,
    )
    .unwrap();
    assert_eq!(l.data[0].id, "gpt");
    assert!(l.data[0].permission.is_empty());
}

#[test]
fn tokenize_and_detokenize() {
    let t: TokenizeRequest =
        serde_json::from_value(json!({"model": "m", "prompt": "hi", "add_special_tokens": false}))
            .unwrap();
    assert_eq!(
        t,
        TokenizeRequest::Completion {
            model: Some("m".into()),
            prompt: "hi".into(),
            add_special_tokens: Some(false),
            return_token_strs: None,
        }
    );
    assert_eq!(t.model(), Some("m"));
    t.validate().unwrap();
    let t: TokenizeRequest = serde_json::from_value(json!({
        "messages": [{"role": "user", "content": "x"}],
        "add_generation_prompt": false, "return_token_strs": true, "unknown": 1
    }))
    .unwrap();
    match &t {
        TokenizeRequest::Chat {
            messages,
            add_generation_prompt,
            return_token_strs,
            ..
        } => {
            assert_eq!(messages[0].text(), "x");
            assert_eq!(*add_generation_prompt, Some(false));
            assert_eq!(*return_token_strs, Some(true));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.model(), None);
    let bad: TokenizeRequest =
        serde_json::from_value(json!({"messages": [{"role": "robot", "content": "x"}]})).unwrap();
    assert_eq!(
        bad.validate().unwrap_err().param(),
        Some("messages[0].role")
    );
    let e = serde_json::from_value::<TokenizeRequest>(json!({"prompt": "a", "messages": []}))
        .unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    let e = serde_json::from_value::<TokenizeRequest>(json!({"model": "m"})).unwrap_err();
    assert!(e.to_string().contains("prompt or messages"), "{e}");
    // Serialises back to the shape it came from.
    assert_eq!(
        serde_json::to_value(TokenizeRequest::Completion {
            model: None,
            prompt: "hi".into(),
            add_special_tokens: None,
            return_token_strs: None
        })
        .unwrap(),
        json!({"prompt": "hi"})
    );

    assert_eq!(
        to_json(&TokenizeResponse {
            count: 2,
            max_model_len: 2048,
            tokens: vec![1, 2],
            token_strs: None
        }),
        r#"{"count":2,"max_model_len":2048,"tokens":[1,2],"token_strs":null}"#
    );
    let d: DetokenizeRequest =
        serde_json::from_value(json!({"model": "m", "tokens": [1, 2]})).unwrap();
    assert_eq!(d.tokens, vec![1, 2]);
    assert_eq!(
        to_json(&DetokenizeResponse {
            prompt: "hi".into()
        }),
        r#"{"prompt":"hi"}"#
    );
}
