//! Recognising a local model: a `.gguf` file or a safetensors model directory.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::{gguf, ModelError, ModelFormat, ResolvedModel};

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const INDEX: &str = "model.safetensors.index.json";
/// The safetensors format caps its JSON header at 100 MB.
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;
const WHAT_A_MODEL_IS: &str =
    "a model is a .gguf file or a directory with config.json, tokenizer.json and *.safetensors";

/// Inspects a local path; nothing is hashed (weights can be many GB).
pub(crate) fn inspect(path: &Path) -> Result<ResolvedModel, ModelError> {
    let meta = fs::metadata(path).map_err(|e| ModelError::open(path, e))?;
    if meta.is_dir() {
        return inspect_dir(path);
    }
    if !meta.is_file() {
        return Err(ModelError::not_a_model(
            path,
            format!("neither a file nor a directory; {WHAT_A_MODEL_IS}"),
        ));
    }
    if has_extension(path, "safetensors") {
        return Err(ModelError::not_a_model(
            path,
            "a lone .safetensors file is not a complete model; pass the directory that holds it \
             together with config.json and tokenizer.json",
        ));
    }
    let header = gguf::read_header(path)?;
    Ok(ResolvedModel {
        name: file_stem_name(path),
        format: ModelFormat::Gguf {
            file: path.to_path_buf(),
        },
        architecture: header.architecture,
        sha256: None,
    })
}

fn inspect_dir(dir: &Path) -> Result<ResolvedModel, ModelError> {
    let config = dir.join(CONFIG);
    let tokenizer = dir.join(TOKENIZER);
    let index = dir.join(INDEX);
    let listed = list_files(dir)?;
    let loose_shards: Vec<PathBuf> = listed
        .iter()
        .filter(|p| has_extension(p, "safetensors"))
        .cloned()
        .collect();

    if !config.is_file() && !tokenizer.is_file() && !index.is_file() && loose_shards.is_empty() {
        let ggufs: Vec<String> = listed
            .iter()
            .filter(|p| has_extension(p, "gguf"))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let reason = if ggufs.is_empty() {
            "neither a GGUF file nor a safetensors model directory (it has no config.json, \
             tokenizer.json or *.safetensors)"
                .to_string()
        } else {
            format!(
                "a directory, not a model; pass one of the GGUF files in it: {}",
                ggufs.join(", ")
            )
        };
        return Err(ModelError::not_a_model(dir, reason));
    }
    for (file, name) in [(&config, CONFIG), (&tokenizer, TOKENIZER)] {
        if !file.is_file() {
            return Err(ModelError::not_a_model(
                dir,
                format!(
                    "safetensors model directory has no {name} (it needs config.json, \
                     tokenizer.json and *.safetensors)"
                ),
            ));
        }
    }

    let shards = if index.is_file() {
        shards_from_index(dir, &index)?
    } else if loose_shards.is_empty() {
        return Err(ModelError::not_a_model(
            dir,
            "safetensors model directory has no *.safetensors weight files",
        ));
    } else {
        loose_shards
    };
    for shard in &shards {
        check_safetensors_header(shard)?;
    }

    let architecture = read_architecture(&config)?;
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    Ok(ResolvedModel {
        name: dir_name(dir),
        format: ModelFormat::Safetensors {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            tokenizer_config: optional(TOKENIZER_CONFIG),
            generation_config: optional(GENERATION_CONFIG),
            shards,
        },
        architecture,
        sha256: None,
    })
}

/// Regular files (symlinks followed, as in hub cache snapshots) in `dir`, sorted by name.
fn list_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
        let path = entry.map_err(|e| ModelError::io(dir, e))?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[derive(Deserialize)]
struct Index {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// The shard files `model.safetensors.index.json` names, each checked to exist.
fn shards_from_index(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| {
        ModelError::not_a_model(index, format!("not a valid safetensors index: {e}"))
    })?;
    let mut names: Vec<&str> = parsed.weight_map.values().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Err(ModelError::not_a_model(index, "weight_map lists no shards"));
    }
    let mut shards = Vec::with_capacity(names.len());
    let mut missing = Vec::new();
    for name in names {
        // Shards must be plain names inside `dir`; refuse paths that would escape it.
        let mut comps = Path::new(name).components();
        if !matches!(
            (comps.next(), comps.next()),
            (Some(Component::Normal(_)), None)
        ) {
            return Err(ModelError::not_a_model(
                index,
                format!("lists shard {name:?}, which is not a plain file name"),
            ));
        }
        let shard = dir.join(name);
        if !shard.is_file() {
            missing.push(name);
        }
        shards.push(shard);
    }
    if let Some(first) = missing.first() {
        let more = match missing.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        return Err(ModelError::not_a_model(
            index,
            format!("lists shard {first}, which is missing{more}"),
        ));
    }
    Ok(shards)
}

/// Checks the 8-byte header length and the opening brace, which catches truncated downloads
/// and Git LFS pointer files without reading the weights.
fn check_safetensors_header(path: &Path) -> Result<(), ModelError> {
    let mut file = File::open(path).map_err(|e| ModelError::open(path, e))?;
    let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let bad = |why: String| ModelError::not_a_model(path, format!("not a safetensors file: {why}"));
    if len < 9 {
        return Err(bad(format!("only {len} bytes long")));
    }
    let mut head = [0u8; 9];
    file.read_exact(&mut head)
        .map_err(|e| ModelError::io(path, e))?;
    if head.starts_with(b"version ") {
        return Err(bad(
            "it looks like a Git LFS pointer, not the weights (run `git lfs pull`)".into(),
        ));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[..8]);
    let header_len = u64::from_le_bytes(n);
    if !(2..=MAX_SAFETENSORS_HEADER).contains(&header_len) || header_len > len - 8 {
        return Err(bad(format!(
            "header length {header_len} does not fit a {len}-byte file"
        )));
    }
    if head[8] != b'{' {
        return Err(bad("header is not a JSON object".into()));
    }
    Ok(())
}

#[derive(Deserialize)]
struct ConfigProbe {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
}

/// `model_type` from config.json (e.g. "llama"), else the first of `architectures`.
fn read_architecture(config: &Path) -> Result<String, ModelError> {
    let text = fs::read_to_string(config).map_err(|e| ModelError::io(config, e))?;
    let probe: ConfigProbe = serde_json::from_str(&text)
        .map_err(|e| ModelError::not_a_model(config, format!("not a valid model config: {e}")))?;
    probe
        .model_type
        .filter(|s| !s.is_empty())
        .or_else(|| probe.architectures.and_then(|a| a.into_iter().next()))
        .ok_or_else(|| ModelError::not_a_model(config, "has neither model_type nor architectures"))
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn file_stem_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string())
}

/// The directory's name; for a hub cache snapshot (`models--ORG--REPO/snapshots/<rev>`) the
/// repository name, since the revision hash makes a poor served name.
fn dir_name(dir: &Path) -> String {
    // `.` and `..` have no file name; canonicalize just to name them.
    let named = match dir.file_name() {
        Some(_) => dir.to_path_buf(),
        None => fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
    };
    let parent = named.parent();
    if parent
        .and_then(Path::file_name)
        .is_some_and(|n| n == "snapshots")
    {
        let repo_dir = parent.and_then(Path::parent).and_then(Path::file_name);
        if let Some(repo) = repo_dir
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("models--"))
            .and_then(|n| n.rsplit("--").next())
            .filter(|n| !n.is_empty())
        {
            return repo.to_string();
        }
    }
    named
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gguf::testutil;

    fn write(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
    }

    /// A minimal valid safetensors file: an empty JSON header.
    fn safetensors_bytes() -> Vec<u8> {
        let mut out = 2u64.to_le_bytes().to_vec();
        out.extend_from_slice(b"{}");
        out
    }

    fn st_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join(CONFIG),
            br#"{"model_type":"llama","architectures":["LlamaForCausalLM"]}"#,
        );
        write(&dir.path().join(TOKENIZER), b"{}");
        dir
    }

    #[test]
    fn gguf_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny-model.Q8_0.gguf");
        write(&path, &testutil::header("llama"));
        let m = inspect(&path).unwrap();
        assert_eq!(m.architecture, "llama");
        assert_eq!(m.name, "tiny-model.Q8_0");
        assert_eq!(m.format, ModelFormat::Gguf { file: path });
        assert_eq!(m.sha256, None);
    }

    #[test]
    fn truncated_and_garbage_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.gguf");
        let bytes = testutil::header("llama");
        write(&path, &bytes[..bytes.len() - 3]);
        let err = inspect(&path).unwrap_err().to_string();
        assert!(err.contains("truncated GGUF"), "{err}");
        assert!(err.contains("cut.gguf"), "{err}");

        let path = dir.path().join("random.bin");
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        write(&path, &noise);
        let err = inspect(&path).unwrap_err().to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
    }

    #[test]
    fn missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.gguf");
        let err = inspect(&path).unwrap_err();
        assert!(
            matches!(&err, ModelError::NotFound(p) if *p == path),
            "{err}"
        );
        assert!(err.to_string().contains("nope.gguf"));
    }

    #[test]
    fn safetensors_dir() {
        let dir = st_dir();
        write(&dir.path().join("model.safetensors"), &safetensors_bytes());
        write(&dir.path().join("generation_config.json"), b"{}");
        let m = inspect(dir.path()).unwrap();
        assert_eq!(m.architecture, "llama");
        let ModelFormat::Safetensors {
            shards,
            tokenizer_config,
            generation_config,
            ..
        } = &m.format
        else {
            panic!("{m:?}")
        };
        assert_eq!(shards, &[dir.path().join("model.safetensors")]);
        assert_eq!(tokenizer_config, &None);
        assert_eq!(
            generation_config,
            &Some(dir.path().join("generation_config.json"))
        );
        assert_eq!(
            m.name,
            dir.path().file_name().unwrap().to_string_lossy().as_ref()
        );
    }

    #[test]
    fn architectures_fallback() {
        let dir = st_dir();
        write(
            &dir.path().join(CONFIG),
            br#"{"architectures":["MistralForCausalLM"]}"#,
        );
        write(&dir.path().join("model.safetensors"), &safetensors_bytes());
        assert_eq!(
            inspect(dir.path()).unwrap().architecture,
            "MistralForCausalLM"
        );
        write(&dir.path().join(CONFIG), b"{}");
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("neither model_type nor architectures"),
            "{err}"
        );
    }

    #[test]
    fn missing_tokenizer_is_named() {
        let dir = st_dir();
        fs::remove_file(dir.path().join(TOKENIZER)).unwrap();
        write(&dir.path().join("model.safetensors"), &safetensors_bytes());
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no tokenizer.json"), "{err}");
    }

    #[test]
    fn loose_shards_sorted() {
        let dir = st_dir();
        for n in ["b.safetensors", "a.safetensors"] {
            write(&dir.path().join(n), &safetensors_bytes());
        }
        let m = inspect(dir.path()).unwrap();
        let ModelFormat::Safetensors { shards, .. } = m.format else {
            panic!()
        };
        assert_eq!(
            shards,
            vec![
                dir.path().join("a.safetensors"),
                dir.path().join("b.safetensors")
            ]
        );
    }

    #[test]
    fn sharded_index() {
        let dir = st_dir();
        write(
            &dir.path().join(INDEX),
            br#"{"metadata":{},"weight_map":{
                "a":"model-00002-of-00002.safetensors",
                "b":"model-00001-of-00002.safetensors",
                "c":"model-00001-of-00002.safetensors"}}"#,
        );
        write(
            &dir.path().join("model-00001-of-00002.safetensors"),
            &safetensors_bytes(),
        );
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model-00002-of-00002.safetensors, which is missing"),
            "{err}"
        );

        write(
            &dir.path().join("model-00002-of-00002.safetensors"),
            &safetensors_bytes(),
        );
        let m = inspect(dir.path()).unwrap();
        let ModelFormat::Safetensors { shards, .. } = m.format else {
            panic!()
        };
        assert_eq!(shards.len(), 2);
        assert!(shards[0].ends_with("model-00001-of-00002.safetensors"));

        write(
            &dir.path().join(INDEX),
            br#"{"weight_map":{"a":"../outside.safetensors"}}"#,
        );
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a plain file name"), "{err}");
    }

    #[test]
    fn bad_shard_header() {
        let dir = st_dir();
        write(
            &dir.path().join("model.safetensors"),
            b"version pointer-spec-v1\noid sha256:0\nsize 12\n",
        );
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Git LFS pointer"), "{err}");
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        write(&dir.path().join("model.safetensors"), &bytes);
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }

    #[test]
    fn neither() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("notes.txt"), b"hi");
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("neither a GGUF file nor a safetensors model directory"),
            "{err}"
        );
        write(&dir.path().join("m.gguf"), &testutil::header("llama"));
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("m.gguf"), "{err}");

        let lone = dir.path().join("w.safetensors");
        write(&lone, &safetensors_bytes());
        let err = inspect(&lone).unwrap_err().to_string();
        assert!(err.contains("lone .safetensors"), "{err}");
    }

    #[test]
    fn hub_snapshot_name() {
        let root = tempfile::tempdir().unwrap();
        let snap = root
            .path()
            .join("models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/abc123");
        fs::create_dir_all(&snap).unwrap();
        assert_eq!(dir_name(&snap), "SmolLM2-135M-Instruct");
        assert_eq!(dir_name(root.path()), {
            root.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        });
    }
}
