//! Packing a charm as charmcraft does for a machine charm with a prebuilt `dispatch`: a zip
//! (deflate, no directory entries, `dispatch` and the workload 0755, the rest 0644) holding
//! `dispatch`, `metadata.yaml`, `config.yaml`, `actions.yaml` (when there are actions),
//! `manifest.yaml`, and the workload binary at `bin/llmd`. charmcraft cannot pack Ubuntu
//! 24.04 charms on this Debian host (see `../shared/reference/juju.md`), so we write the
//! layout it produces.

use std::io::Write;
use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

/// What charmcraft version the manifest claims the layout of.
const CHARMCRAFT_VERSION: &str = "4.5.0";

#[derive(Debug)]
pub struct PackError(pub String);

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PackError {}

fn err(what: impl std::fmt::Display) -> PackError {
    PackError(what.to_string())
}

/// The packed files from a `charmcraft.yaml`: (`metadata.yaml`, `config.yaml`,
/// `actions.yaml` if any). Keys sorted, as charmcraft writes them.
pub fn charm_files(charmcraft: &str) -> Result<(String, String, Option<String>), PackError> {
    let doc: Value = serde_yaml_ng::from_str(charmcraft).map_err(err)?;
    let get = |k: &str| doc.get(k).cloned();
    let mut meta = std::collections::BTreeMap::new();
    for key in ["name", "summary", "description"] {
        let v = get(key).ok_or_else(|| err(format!("charmcraft.yaml has no {key}")))?;
        meta.insert(key.to_string(), v);
    }
    if let Some(t) = get("title") {
        meta.insert("display-name".into(), t);
    }
    for key in [
        "provides",
        "requires",
        "peers",
        "resources",
        "storage",
        "devices",
        "extra-bindings",
        "subordinate",
        "assumes",
    ] {
        if let Some(v) = get(key) {
            meta.insert(key.to_string(), v);
        }
    }
    let metadata = serde_yaml_ng::to_string(&meta).map_err(err)?;
    let mut options = Mapping::new();
    if let Some(o) = doc.get("config").and_then(|c| c.get("options")) {
        options.insert("options".into(), o.clone());
    } else {
        options.insert("options".into(), Value::Mapping(Mapping::new()));
    }
    let config = serde_yaml_ng::to_string(&options).map_err(err)?;
    let actions = match get("actions") {
        Some(a) => Some(serde_yaml_ng::to_string(&a).map_err(err)?),
        None => None,
    };
    Ok((metadata, config, actions))
}

/// `manifest.yaml` for an amd64 Ubuntu 24.04 charm.
pub fn manifest(started_at: &str) -> String {
    format!(
        "charmcraft-version: {CHARMCRAFT_VERSION}\ncharmcraft-started-at: '{started_at}'\nbases:\n- name: ubuntu\n  channel: '24.04'\n  architectures:\n  - amd64\nanalysis:\n  attributes:\n  - name: language\n    result: unknown\n  - name: framework\n    result: unknown\n"
    )
}

/// Writes `out` (a `.charm` file) from the charm's `charmcraft.yaml`, its dispatch binary
/// and the `llmd` binary.
pub fn pack(
    charmcraft_yaml: &Path,
    dispatch: &Path,
    workload: &Path,
    out: &Path,
    started_at: &str,
) -> Result<(), PackError> {
    let text = std::fs::read_to_string(charmcraft_yaml)
        .map_err(|e| err(format!("{}: {e}", charmcraft_yaml.display())))?;
    let (metadata, config, actions) = charm_files(&text)?;
    let file = std::fs::File::create(out).map_err(|e| err(format!("{}: {e}", out.display())))?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = |mode: u32| {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode)
    };
    let mut put = |name: &str, bytes: &[u8], mode: u32| -> Result<(), PackError> {
        zip.start_file(name, opts(mode)).map_err(err)?;
        zip.write_all(bytes).map_err(err)
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| err(format!("{}: {e}", p.display())));
    put("dispatch", &read(dispatch)?, 0o755)?;
    put("bin/llmd", &read(workload)?, 0o755)?;
    put("metadata.yaml", metadata.as_bytes(), 0o644)?;
    put("config.yaml", config.as_bytes(), 0o644)?;
    if let Some(a) = actions {
        put("actions.yaml", a.as_bytes(), 0o644)?;
    }
    put("manifest.yaml", manifest(started_at).as_bytes(), 0o644)?;
    zip.finish().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    #[test]
    fn packs_charmcraft_layout() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../llmd-decode/charmcraft.yaml"
        );
        let (d, w) = (dir.path().join("dispatch"), dir.path().join("llmd"));
        std::fs::write(&d, b"#!dispatch").unwrap();
        std::fs::write(&w, b"#!llmd").unwrap();
        let out = dir.path().join("llmd-decode.charm");
        pack(Path::new(yaml), &d, &w, &out, "2026-11-25T08:00:00.000000").unwrap();
        let mut z = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
        let mut names = Vec::new();
        for i in 0..z.len() {
            let f = z.by_index(i).unwrap();
            assert!(!f.is_dir());
            let mode = f.unix_mode().unwrap() & 0o777;
            let want = if matches!(f.name(), "dispatch" | "bin/llmd") {
                0o755
            } else {
                0o644
            };
            assert_eq!(mode, want, "{}", f.name());
            names.push(f.name().to_string());
        }
        assert_eq!(
            names,
            [
                "dispatch",
                "bin/llmd",
                "metadata.yaml",
                "config.yaml",
                "manifest.yaml"
            ]
        );
        let mut meta = String::new();
        z.by_name("metadata.yaml")
            .unwrap()
            .read_to_string(&mut meta)
            .unwrap();
        let m: Value = serde_yaml_ng::from_str(&meta).unwrap();
        assert_eq!(m["name"], "llmd-decode");
        assert_eq!(m["display-name"], "llmd decode worker");
        assert_eq!(m["provides"]["decode-worker"]["interface"], "llmd_decode");
        assert!(m.get("parts").is_none() && m.get("config").is_none());
        let mut cfg = String::new();
        z.by_name("config.yaml")
            .unwrap()
            .read_to_string(&mut cfg)
            .unwrap();
        let c: Value = serde_yaml_ng::from_str(&cfg).unwrap();
        assert_eq!(c["options"]["model-id"]["type"], "string");
    }
}
