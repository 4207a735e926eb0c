//! End to end with the real binary and the real default model (SmolLM2-135M-Instruct
//! Q4_1). `tests/run e2e` fetches the model and sets LLMD_E2E=1; elsewhere these tests
//! print why they did not run.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn enabled() -> bool {
    if std::env::var_os("LLMD_E2E").is_some() {
        return true;
    }
    eprintln!("skipped: set LLMD_E2E=1 (tests/run e2e does) to run end-to-end tests");
    false
}

fn llmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(args)
        .env("LLMD_LOG", "warn")
        .output()
        .expect("run llmd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The default model's path, as `llmd model fetch` reports it.
fn default_model() -> PathBuf {
    let o = llmd(&["model", "fetch"]);
    assert!(o.status.success(), "model fetch failed: {}", stderr(&o));
    let line = stdout(&o);
    let path = line.trim().split('\t').nth(2).expect("path column");
    PathBuf::from(path)
}

#[test]
fn fetch_reports_the_checked_default_model() {
    if !enabled() {
        return;
    }
    let o = llmd(&["model", "fetch"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("SmolLM2-135M-Instruct\tllama\t"), "{out}");
    assert!(default_model().exists());
}

#[test]
fn capital_of_france_is_paris() {
    if !enabled() {
        return;
    }
    let o = llmd(&[
        "generate",
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with(" Paris"), "greedy completion was {text:?}");
    let err = stderr(&o);
    assert!(
        err.contains("prompt: 5 tokens") && err.contains("tok/s"),
        "{err}"
    );
}

#[test]
fn chat_says_the_sky_is_blue() {
    if !enabled() {
        return;
    }
    let o = llmd(&[
        "generate",
        "--chat",
        "--prompt",
        "What color is the sky?",
        "--max-tokens",
        "48",
        "--temperature",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o).to_lowercase();
    assert!(text.contains("blue"), "chat answer was {text:?}");
    // The chat template's end-of-turn token ends generation, and is not printed.
    assert!(!text.contains("<|im_end|>"), "{text:?}");
}

#[test]
fn stop_strings_and_max_tokens() {
    if !enabled() {
        return;
    }
    let o = llmd(&[
        "generate",
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--stop",
        "Paris",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim_end(), "", "the stop string is not printed");
    assert!(stderr(&o).contains("finish: stop"), "{}", stderr(&o));
    let o = llmd(&[
        "generate",
        "--prompt",
        "Once upon a time",
        "--max-tokens",
        "3",
        "--ignore-eos",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("decode: 3 tokens") && stderr(&o).contains("finish: length"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn seeded_sampling_repeats() {
    if !enabled() {
        return;
    }
    let args = [
        "generate",
        "--prompt",
        "Tell me a story",
        "--max-tokens",
        "12",
        "--temperature",
        "0.9",
        "--top-p",
        "0.9",
        "--seed",
        "42",
    ];
    let a = llmd(&args);
    let b = llmd(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
}

fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected failure, got {}", stdout(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "want one error line, got {err:?}");
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_fails_cleanly() {
    if !enabled() {
        return;
    }
    let o = llmd(&[
        "generate",
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
    ]);
    assert_one_line_error(&o, "/nonexistent/model.gguf");

    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(default_model()).unwrap();
    let cut = dir.path().join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = llmd(&[
        "generate",
        "--model",
        cut.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_one_line_error(&o, "truncated");

    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model at all, just text").unwrap();
    let o = llmd(&[
        "generate",
        "--model",
        junk.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_one_line_error(&o, "GGUF");

    // SmolLM2's context is 8192 tokens; " hello" is one token each.
    let long = " hello".repeat(9000);
    let o = llmd(&["generate", "--prompt", &long, "--max-tokens", "4"]);
    assert_one_line_error(&o, "maximum context length is 8192");

    let o = llmd(&["generate", "--prompt", "hi", "--temperature=-1"]);
    assert_one_line_error(&o, "temperature");
}
