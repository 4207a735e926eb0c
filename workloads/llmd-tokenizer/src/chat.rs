//! Chat templates: rendering a model's Jinja chat template with minijinja the way HF
//! transformers does (`apply_chat_template`): trim_blocks/lstrip_blocks, loop controls,
//! `raise_exception`, a Python-compatible `tojson`, `strftime_now`, Python string methods.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::TokenizerError;

/// One chat message, as the OpenAI API and HF templates see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The special tokens a template may reference (`bos_token`, `eos_token`, ...).
#[derive(Debug, Default, Clone)]
pub(crate) struct TemplateTokens<'a> {
    pub bos_token: Option<&'a str>,
    pub eos_token: Option<&'a str>,
    pub unk_token: Option<&'a str>,
    pub pad_token: Option<&'a str>,
}

const NAME: &str = "chat_template";

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

/// Marks the error of `raise_exception` so that rendering can report the template's message.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn template_error(e: Error) -> TokenizerError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<Raised>() {
            return TokenizerError::TemplateRaised(r.0.clone());
        }
        src = s.source();
    }
    // `{:#}` adds the template source location.
    TokenizerError::Template(format!("{e:#}"))
}

impl ChatTemplate {
    pub(crate) fn compile(source: &str) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        // As HF's ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
        });
        env.add_function("strftime_now", |fmt: String| strftime(&fmt, unix_now()));
        env.add_template_owned(NAME, source.to_owned())
            .map_err(template_error)?;
        Ok(Self { env })
    }

    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tokens: &TemplateTokens<'_>,
    ) -> Result<String, TokenizerError> {
        let tmpl = self.env.get_template(NAME).map_err(template_error)?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => tokens.bos_token,
            eos_token => tokens.eos_token,
            unk_token => tokens.unk_token,
            pad_token => tokens.pad_token,
            // HF passes these as None when the request has none.
            tools => Value::from(()),
            documents => Value::from(()),
        })
        .map_err(template_error)
    }
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators,
/// sort_keys=sort_keys)` — unlike minijinja's, it does not HTML-escape.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(usize::try_from(n).unwrap_or(0))),
            (None, Some(s)) => Some(s.to_owned()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or string",
                ))
            }
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be strings",
                    )
                })?;
            match <[String; 2]>::try_from(parts) {
                Ok([a, b]) => (a, b),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators is a pair",
                    ))
                }
            }
        }
        // Python's defaults: no trailing space after ',' when indenting.
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn newline(out: &mut String, opts: &JsonOpts, level: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn write_json(out: &mut String, v: &Value, opts: &JsonOpts, level: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                // Exact for every integer width (i64, u64, i128).
                let _ = write!(out, "{v}");
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => write_str(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_items(out, '[', ']', items.len(), opts, level, |out, i| {
                write_json(out, &items[i], opts, level + 1)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort();
            }
            write_items(out, '{', '}', keys.len(), opts, level, |out, i| {
                let k = &keys[i];
                // Python turns non-string keys into strings.
                match k.as_str() {
                    Some(s) => write_str(out, s),
                    None => write_str(out, &k.to_string()),
                }
                out.push_str(&opts.key_sep);
                write_json(out, &v.get_item(k)?, opts, level + 1)
            })?;
        }
        ValueKind::Bytes | ValueKind::Plain | ValueKind::Invalid => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a value of type {}", v.kind()),
            ))
        }
        // ValueKind is non_exhaustive.
        _ => write_str(out, &v.to_string()),
    }
    Ok(())
}

fn write_items(
    out: &mut String,
    open: char,
    close: char,
    n: usize,
    opts: &JsonOpts,
    level: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if n == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..n {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        newline(out, opts, level + 1);
        item(out, i)?;
    }
    newline(out, opts, level);
    out.push(close);
    Ok(())
}

/// A JSON string as Python's json.dumps(ensure_ascii=False) writes it.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, ".0" on integral values, exponent
/// form "1e+16" / "1e-05" outside [1e-4, 1e16).
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust's `{:e}` gives the shortest mantissa: "1e16", "1.5e-5".
        let s = format!("{f:e}");
        if let Some((mant, exp)) = s.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            return format!("{mant}e{sign}{digits:0>2}");
        }
        return s;
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `datetime.now().strftime(fmt)` for the common directives, in UTC (servers run in UTC).
fn strftime(fmt: &str, unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let wd = (days + 3).rem_euclid(7) as usize;
    let month = MONTHS[(m as usize - 1) % 12];
    let weekday = WEEKDAYS[wd];
    let doy = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('m') => write!(out, "{m:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('e') => write!(out, "{d:>2}"),
            Some('H') => write!(out, "{hh:02}"),
            Some('I') => write!(out, "{:02}", if hh % 12 == 0 { 12 } else { hh % 12 }),
            Some('p') => write!(out, "{}", if hh < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{mm:02}"),
            Some('S') => write!(out, "{ss:02}"),
            Some('j') => write!(out, "{doy:03}"),
            Some('B') => write!(out, "{month}"),
            Some('b' | 'h') => write!(out, "{}", &month[..3]),
            Some('A') => write!(out, "{weekday}"),
            Some('a') => write!(out, "{}", &weekday[..3]),
            Some('F') => write!(out, "{y}-{m:02}-{d:02}"),
            Some('T') => write!(out, "{hh:02}:{mm:02}:{ss:02}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn render(src: &str, messages: &[ChatMessage], gen: bool) -> Result<String, TokenizerError> {
        ChatTemplate::compile(src)?.render(messages, gen, &TemplateTokens::default())
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-07-23 12:34:56 UTC, a Tuesday.
        let t = 1_721_738_096;
        assert_eq!(strftime("%d %b %Y", t), "23 Jul 2024");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %j %%", t),
            "2024-07-23 12:34:56 Tuesday 205 %"
        );
        assert_eq!(strftime("%B %e, %y %I%p", 0), "January  1, 70 12AM");
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    }

    #[test]
    fn tojson_is_pythonic() {
        // A literal keeps insertion order, like a Python dict.
        let src = r#"{% set x = {"b": "<a&b>\n\"é\"", "a": [1, 2.5, 1.0, none, true], "c": {}} %}{{ x | tojson }}|{{ x | tojson(indent=2) }}"#;
        let out = render(src, &[], false).unwrap();
        assert_eq!(
            out,
            "{\"b\": \"<a&b>\\n\\\"é\\\"\", \"a\": [1, 2.5, 1.0, null, true], \"c\": {}}|{\n  \"b\": \"<a&b>\\n\\\"é\\\"\",\n  \"a\": [\n    1,\n    2.5,\n    1.0,\n    null,\n    true\n  ],\n  \"c\": {}\n}"
        );
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(1.5e-5), "1.5e-05");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(-3.0), "-3.0");
    }

    #[test]
    fn raise_exception_reports_message() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}ok";
        let err = render(src, &[ChatMessage::new("assistant", "x")], false).unwrap_err();
        match err {
            TokenizerError::TemplateRaised(m) => assert_eq!(m, "Conversation roles must alternate"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            render(src, &[ChatMessage::new("user", "x")], false).unwrap(),
            "ok"
        );
    }

    #[test]
    fn hf_whitespace_and_python_methods() {
        // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before it.
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content.strip() | upper }}]{% if m.content.startswith(' hi') %}!{% endif %}\n    {% endif %}\n{% endfor %}";
        let out = render(src, &[ChatMessage::new("user", " hi there ")], false).unwrap();
        // The same as jinja2 renders it.
        assert_eq!(out, "[HI THERE]!");
        let src = "{% for m in messages %}{% if loop.index0 == 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}";
        let msgs = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        assert_eq!(render(src, &msgs, false).unwrap(), "a");
    }

    #[test]
    fn tools_and_documents_are_none() {
        let src = "{% if tools is not none or documents is not none %}T{% else %}N{% endif %}";
        assert_eq!(render(src, &[], false).unwrap(), "N");
    }

    #[test]
    fn syntax_error_is_a_template_error() {
        assert!(matches!(
            ChatTemplate::compile("{% for %}"),
            Err(TokenizerError::Template(_))
        ));
    }
}
