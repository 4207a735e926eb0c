//! Shared by the worker charms' harness tests: a charm directory holding the charm's
//! metadata and a stand-in `llmd` binary that answers `--version` and `model fetch` as the
//! real one does (the real one would download models; its service is tested end to end in
//! the workspace's e2e tests).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

/// Models the stand-in knows: `default` and `/models/other.gguf`; anything else fails with
/// the real binary's kind of one-line error.
pub const FAKE_LLMD: &str = r#"#!/bin/sh
case "$1" in
  --version) echo "llmd 0.1.0" ;;
  model)
    case "$3" in
      default) printf 'SmolLM2-135M-Instruct\tllama\t/var/lib/llmd/models/SmolLM2-135M-Instruct.Q4_1.gguf\n' ;;
      /models/other.gguf) printf 'other\tllama\t/models/other.gguf\n' ;;
      *) echo "error: model source $3: no such file" >&2; exit 1 ;;
    esac ;;
  *) echo "error: unexpected arguments $*" >&2; exit 2 ;;
esac
"#;

/// A charm directory for `name`: `metadata.yaml` and `bin/llmd`.
pub fn charm_dir(dir: &Path, name: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("metadata.yaml"), format!("name: {name}\n")).unwrap();
    let llmd = dir.join("bin/llmd");
    std::fs::write(&llmd, FAKE_LLMD).unwrap();
    std::fs::set_permissions(&llmd, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A harness for the charm binary `charm` (its `charmcraft.yaml` beside), run from a charm
/// directory made by [`charm_dir`] in `dir`.
pub fn harness(
    charm: &str,
    charmcraft: &str,
    dir: &Path,
    name: &str,
) -> juju_charm::testing::Harness {
    charm_dir(dir, name);
    juju_charm::testing::Harness::new(charm)
        .unwrap()
        .charmcraft_yaml(charmcraft)
        .unwrap()
        .charm_dir(dir)
}
