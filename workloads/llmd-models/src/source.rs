//! Parsing a model SOURCE string: `default`, a local path, or `hf:ORG/REPO[:FILE]`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::ModelError;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The built-in default model (SmolLM2-135M-Instruct, Q4_1 GGUF), fetched on first use.
    Default,
    /// A local `.gguf` file or safetensors model directory.
    Path(PathBuf),
    /// A Hugging Face hub repository; parsed, but this build cannot download it.
    HuggingFace { repo: String, file: Option<String> },
}

impl ModelSource {
    /// Parses an optional source; `None` means the default model.
    pub fn parse_opt(s: Option<&str>) -> Result<Self, ModelError> {
        match s {
            None => Ok(ModelSource::Default),
            Some(s) => s.parse(),
        }
    }
}

impl FromStr for ModelSource {
    type Err = ModelError;

    /// `""`, `default` and `smollm2` (any case) select the default model; `hf:ORG/REPO[:FILE]`
    /// a hub repository; anything else is a local path (`~/` expands to `$HOME/`). A local
    /// path that collides with a keyword can be written `./default`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if trimmed.is_empty()
            || trimmed.eq_ignore_ascii_case("default")
            || trimmed.eq_ignore_ascii_case("smollm2")
        {
            return Ok(ModelSource::Default);
        }
        if let Some(rest) = trimmed.strip_prefix("hf:") {
            return parse_hf(s, rest);
        }
        Ok(ModelSource::Path(expand_home(s)))
    }
}

fn parse_hf(input: &str, rest: &str) -> Result<ModelSource, ModelError> {
    let invalid = |reason: &str| ModelError::InvalidSource {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    // The file part may itself contain '/', so split at the first ':' only.
    let (repo, file) = match rest.split_once(':') {
        Some((repo, file)) => (repo, Some(file)),
        None => (rest, None),
    };
    let mut parts = repo.split('/');
    let well_formed = matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(org), Some(name), None) if !org.is_empty() && !name.is_empty()
    );
    if !well_formed {
        return Err(invalid("expected hf:ORG/REPO or hf:ORG/REPO:FILE"));
    }
    if file.is_some_and(str::is_empty) {
        return Err(invalid("empty FILE after the second ':'"));
    }
    Ok(ModelSource::HuggingFace {
        repo: repo.to_string(),
        file: file.map(str::to_string),
    })
}

/// Expands a leading `~/`: sources often come from config files or env vars the shell never saw.
fn expand_home(s: &str) -> PathBuf {
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            return Path::new(&home).join(rest);
        }
    }
    PathBuf::from(s)
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Default => f.write_str("default"),
            ModelSource::Path(p) => write!(f, "{}", p.display()),
            ModelSource::HuggingFace { repo, file: None } => write!(f, "hf:{repo}"),
            ModelSource::HuggingFace {
                repo,
                file: Some(file),
            } => write!(f, "hf:{repo}:{file}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keywords_select_default() {
        for s in ["", "  ", "default", "DEFAULT", "smollm2", "SmolLM2"] {
            assert_eq!(
                s.parse::<ModelSource>().unwrap(),
                ModelSource::Default,
                "{s:?}"
            );
        }
        assert_eq!(ModelSource::parse_opt(None).unwrap(), ModelSource::Default);
        assert_eq!(
            ModelSource::parse_opt(Some("default")).unwrap(),
            ModelSource::Default
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            "./default".parse::<ModelSource>().unwrap(),
            ModelSource::Path(PathBuf::from("./default"))
        );
        assert_eq!(
            "/models/x.gguf".parse::<ModelSource>().unwrap(),
            ModelSource::Path(PathBuf::from("/models/x.gguf"))
        );
        // Not the hf: prefix, so a path.
        assert_eq!(
            "hf/org/repo".parse::<ModelSource>().unwrap(),
            ModelSource::Path(PathBuf::from("hf/org/repo"))
        );
    }

    #[test]
    fn hugging_face() {
        assert_eq!(
            "hf:HuggingFaceTB/SmolLM2-135M-Instruct"
                .parse::<ModelSource>()
                .unwrap(),
            ModelSource::HuggingFace {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                file: None
            }
        );
        let s: ModelSource = "hf:org/repo:sub/model.Q4_0.gguf".parse().unwrap();
        assert_eq!(
            s,
            ModelSource::HuggingFace {
                repo: "org/repo".into(),
                file: Some("sub/model.Q4_0.gguf".into())
            }
        );
        assert_eq!(s.to_string(), "hf:org/repo:sub/model.Q4_0.gguf");
        for bad in [
            "hf:", "hf:org", "hf:/repo", "hf:org/", "hf:a/b/c", "hf:a/b:",
        ] {
            let err = bad.parse::<ModelSource>().unwrap_err();
            assert!(
                matches!(err, ModelError::InvalidSource { .. }),
                "{bad}: {err}"
            );
        }
    }
}
