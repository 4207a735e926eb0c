//! Hook tool command lines as Juju's tools (Go's flag package) parse them: `-x` and `--x`
//! alike, `-x=v` or `-x v`, flags after positionals, `--` ending flags; and their output
//! formats (`--format=json|yaml|smart`). Refusals print `ERROR <msg>` and exit 1, or 2 for
//! bad usage.

use std::collections::BTreeMap;

use serde_json::Value;

/// A refusal: Juju prints `ERROR <msg>` and exits 1 (2 for bad usage).
#[derive(Debug)]
pub(crate) struct Refuse {
    pub code: i32,
    pub msg: String,
}

pub(crate) fn fail(msg: impl Into<String>) -> Refuse {
    Refuse {
        code: 1,
        msg: msg.into(),
    }
}

pub(crate) fn usage(msg: impl Into<String>) -> Refuse {
    Refuse {
        code: 2,
        msg: msg.into(),
    }
}

pub(crate) type Answer = Result<String, Refuse>;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Bool,
    Value,
}

/// A flag: its names (first is canonical) and whether it takes a value.
pub(crate) type FlagSpec = (&'static [&'static str], Kind);

#[derive(Default)]
pub(crate) struct Parsed {
    pub values: BTreeMap<&'static str, String>,
    pub bools: BTreeMap<&'static str, bool>,
    pub pos: Vec<String>,
}

impl Parsed {
    pub fn flag(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `-x`, `--x`, `-x=v`, `--x v`; flags may follow positionals; `--` ends flags.
pub(crate) fn parse(args: &[String], spec: &[FlagSpec]) -> Result<Parsed, Refuse> {
    let mut p = Parsed::default();
    let mut i = 0;
    let mut only_pos = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_pos || a == "-" || !a.starts_with('-') {
            p.pos.push(a.clone());
            continue;
        }
        if a == "--" {
            only_pos = true;
            continue;
        }
        let body = a.strip_prefix("--").unwrap_or(&a[1..]);
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some((names, kind)) = spec.iter().find(|(names, _)| names.contains(&name)) else {
            return Err(usage(format!("flag provided but not defined: -{name}")));
        };
        let canonical = names[0];
        match kind {
            Kind::Bool => {
                let v = match inline {
                    None => true,
                    Some(v) => parse_bool(v).ok_or_else(|| {
                        usage(format!(
                            "invalid boolean value {v:?} for -{name}: parse error"
                        ))
                    })?,
                };
                p.bools.insert(canonical, v);
            }
            Kind::Value => {
                let v = match inline {
                    Some(v) => v.to_string(),
                    None => {
                        let v = args
                            .get(i)
                            .ok_or_else(|| usage(format!("flag needs an argument: -{name}")))?;
                        i += 1;
                        v.clone()
                    }
                };
                p.values.insert(canonical, v);
            }
        }
    }
    Ok(p)
}

pub(crate) const FORMAT: FlagSpec = (&["format"], Kind::Value);
pub(crate) const REL: FlagSpec = (&["r", "relation"], Kind::Value);
pub(crate) const APP: FlagSpec = (&["app"], Kind::Bool);
pub(crate) const FILE: FlagSpec = (&["file"], Kind::Value);

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Format {
    Json,
    Yaml,
    Smart,
}

pub(crate) fn format(p: &Parsed) -> Result<Format, Refuse> {
    match p.value("format") {
        None | Some("smart") => Ok(Format::Smart),
        Some("json") => Ok(Format::Json),
        Some("yaml") => Ok(Format::Yaml),
        Some(other) => Err(usage(format!(
            "invalid value {other:?} for flag --format: unknown format {other:?}"
        ))),
    }
}

/// Prints a value as the tool's `--format` asks.
pub(crate) fn emit(v: &Value, fmt: Format) -> Answer {
    let yaml = |v: &Value| serde_yaml_ng::to_string(v).map_err(|e| fail(e.to_string()));
    Ok(match fmt {
        Format::Json => format!("{v}\n"),
        Format::Yaml => yaml(v)?,
        Format::Smart => match v {
            Value::Null => String::new(),
            Value::Bool(true) => "True\n".into(),
            Value::Bool(false) => "False\n".into(),
            Value::String(s) => format!("{s}\n"),
            Value::Number(n) => format!("{n}\n"),
            Value::Array(items) if items.iter().all(|i| i.is_string()) => items
                .iter()
                .filter_map(|i| i.as_str())
                .map(|s| format!("{s}\n"))
                .collect(),
            other => yaml(other)?,
        },
    })
}

pub(crate) fn at_most(p: &Parsed, n: usize) -> Result<(), Refuse> {
    if p.pos.len() > n {
        return Err(usage(format!("unrecognized args: {:?}", &p.pos[n..])));
    }
    Ok(())
}

pub(crate) fn exactly(p: &Parsed, n: usize, what: &str) -> Result<(), Refuse> {
    if p.pos.len() < n {
        return Err(usage(format!("no {what} specified")));
    }
    at_most(p, n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn flags_parse_like_go() {
        let spec = [FORMAT, REL, APP];
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = parse(
            &a(&["--format=json", "-r", "db:3", "--app", "-", "x"]),
            &spec,
        )
        .unwrap();
        assert_eq!(p.value("format"), Some("json"));
        assert_eq!(p.value("r"), Some("db:3"));
        assert!(p.flag("app"));
        assert_eq!(p.pos, ["-", "x"]);
        let p = parse(
            &a(&["--relation=db:3", "--app=false", "--", "--not-a-flag"]),
            &spec,
        )
        .unwrap();
        assert_eq!(p.value("r"), Some("db:3"));
        assert!(!p.flag("app"));
        assert_eq!(p.pos, ["--not-a-flag"]);
        assert!(parse(&a(&["--bogus"]), &spec).is_err());
        assert!(parse(&a(&["-r"]), &spec).is_err());
    }
}
