//! The harness: runs the real charm binary for one event, as Juju's unit agent would (the
//! `JUJU_*` environment, `dispatch` as argv[0], the charm directory as working directory),
//! with the fake hook tools first on `PATH`, and reads back the state the tools kept.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::fake::{HookInfo, Record, World, STATE_ENV};
use super::meta::CharmMeta;
use super::{ActionOutcome, Output, Resource, State, Trigger};
use crate::context::{host_path, Event, FS_ROOT_VAR};
use crate::run::{PROBE_NAME, TOOL_NAMES};
use crate::types::Status;

/// The variable naming a fake-tool executable to use instead of the charm binary itself.
pub const TOOL_ENV: &str = "JUJU_CHARM_FAKE_TOOL";

/// Why a scenario could not be run (the charm failing is not one: see [`Output::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The harness could not be set up (tools, charmcraft.yaml, temp dirs).
    #[error("harness setup: {0}")]
    Setup(String),
    /// The scenario is one Juju could not produce (undeclared endpoint, no such relation…).
    #[error("scenario: {0}")]
    Scenario(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The charm ran past the harness's timeout and was killed.
    #[error("the charm ran for more than {timeout:?} and was killed; its stderr: {stderr}")]
    Timeout { timeout: Duration, stderr: String },
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
}

type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Runs a charm binary against scenarios. The machine root (where the charm's files and
/// unit files go) lives as long as the harness, so consecutive runs see earlier files.
pub struct Harness {
    charm: PathBuf,
    tool: Option<PathBuf>,
    meta: Option<CharmMeta>,
    charm_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    timeout: Duration,
    dir: tempfile::TempDir,
    runs: AtomicU32,
    tools: OnceLock<Result<(), String>>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("charm", &self.charm)
            .field("tool", &self.tool)
            .field("root", &self.root())
            .finish()
    }
}

impl Harness {
    /// A harness for the charm binary at `charm` (in a charm crate's integration tests:
    /// `env!("CARGO_BIN_EXE_<bin>")`).
    pub fn new(charm: impl Into<PathBuf>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("juju-charm-harness-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the harness directory", e))?;
        for sub in ["root", "bin", "home", "charm", "runs", "resources"] {
            let p = dir.path().join(sub);
            fs::create_dir_all(&p).map_err(|e| HarnessError::io(p.display().to_string(), e))?;
        }
        Ok(Harness {
            charm: charm.into(),
            tool: std::env::var_os(TOOL_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            meta: None,
            charm_dir: None,
            env: Vec::new(),
            timeout: Duration::from_secs(120),
            dir,
            runs: AtomicU32::new(0),
            tools: OnceLock::new(),
        })
    }

    /// Checks scenarios against this `charmcraft.yaml` and adds its config and action
    /// defaults; the application is named after the charm.
    pub fn charmcraft_yaml(mut self, path: impl AsRef<Path>) -> Result<Self> {
        self.meta = Some(CharmMeta::load(path)?);
        Ok(self)
    }

    /// As [`Harness::charmcraft_yaml`], from already parsed metadata.
    pub fn meta(mut self, meta: CharmMeta) -> Self {
        self.meta = Some(meta);
        self
    }

    /// The executable answering as the hook tools (default: the charm binary itself, or
    /// `$JUJU_CHARM_FAKE_TOOL`).
    pub fn tool(mut self, path: impl Into<PathBuf>) -> Self {
        self.tool = Some(path.into());
        self
    }

    /// `JUJU_CHARM_DIR` and the working directory (default: an empty directory).
    pub fn charm_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.charm_dir = Some(path.into());
        self
    }

    /// An extra environment variable for the charm.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// How long one event may run (default 120 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The machine root: `/etc/x` on the machine is `root()/etc/x`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A file on the machine now (machine path), as text.
    pub fn read_file(&self, path: impl AsRef<Path>) -> Option<String> {
        fs::read_to_string(host_path(&self.root(), path)).ok()
    }

    fn charm_dir_path(&self) -> PathBuf {
        self.charm_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("charm"))
    }

    /// Links every tool name to the tool executable and checks that it answers as one.
    fn ensure_tools(&self) -> Result<()> {
        self.tools
            .get_or_init(|| self.link_tools())
            .clone()
            .map_err(HarnessError::Setup)
    }

    fn link_tools(&self) -> Result<(), String> {
        let tool = self.tool.clone().unwrap_or_else(|| self.charm.clone());
        let tool = fs::canonicalize(&tool).map_err(|e| format!("tool {}: {e}", tool.display()))?;
        let bin = self.dir.path().join("bin");
        for name in TOOL_NAMES {
            std::os::unix::fs::symlink(&tool, bin.join(name))
                .map_err(|e| format!("linking {name}: {e}"))?;
        }
        let out = Command::new(bin.join(PROBE_NAME))
            .env_clear()
            .env(STATE_ENV, self.dir.path().join("probe"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", tool.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.starts_with("juju-charm-fake-tool") {
            return Ok(());
        }
        Err(format!(
            "{} does not answer as the fake hook tools (exit {:?}: {}). A charm binary does when its main \
             calls juju_charm::run first and juju-charm is a dev-dependency with features = [\"testing\"]; \
             otherwise pass Harness::tool(<juju-charm-fake-tool>) or set {TOOL_ENV}",
            tool.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }

    /// Fires one event at the charm with the Juju state `state`, and returns the state
    /// after with everything the charm did. A charm that fails is an [`Output`] with a
    /// non-zero exit code (and, for a hook, Juju's error status); an `Err` means the
    /// scenario itself could not be run.
    pub fn run(&self, trigger: impl Into<Trigger>, state: &State) -> Result<Output> {
        let trigger = trigger.into();
        self.ensure_tools()?;
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let run_dir = self.dir.path().join("runs").join(n.to_string());
        fs::create_dir_all(&run_dir)
            .map_err(|e| HarnessError::io(run_dir.display().to_string(), e))?;

        let mut before = self.resolve(state)?;
        if let Some(meta) = &self.meta {
            meta.check(&before, &trigger)
                .map_err(HarnessError::Scenario)?;
        }
        let hook = self.hook_info(&trigger, &before)?;
        for (path, content) in std::mem::take(&mut before.files) {
            let p = host_path(&self.root(), &path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| HarnessError::io(parent.display().to_string(), e))?;
            }
            fs::write(&p, content).map_err(|e| HarnessError::io(p.display().to_string(), e))?;
        }
        let files_before = snapshot(&self.root())?;

        let state_path = run_dir.join("state.json");
        let world = World {
            state: before.clone(),
            hook: hook.clone(),
            record: Record::default(),
        };
        write_json(&state_path, &world)?;

        let (exit_code, stdout, stderr) =
            self.spawn(&trigger, &before, &hook, &state_path, &run_dir)?;

        let text = fs::read_to_string(&state_path)
            .map_err(|e| HarnessError::io("reading the state back", e))?;
        let world: World = serde_json::from_str(&text)
            .map_err(|e| HarnessError::Setup(format!("state file: {e}")))?;
        let (files_written, files_removed) = diff(&self.root(), &files_before)?;
        Ok(finish(
            trigger,
            before,
            hook,
            world,
            exit_code,
            stdout,
            stderr,
            files_written,
            files_removed,
        ))
    }

    /// Names and ids filled in as Juju would have them.
    fn resolve(&self, state: &State) -> Result<State> {
        let mut s = state.clone();
        if s.app.is_empty() {
            s.app = match (&self.meta, s.unit.split_once('/')) {
                (_, Some((app, _))) => app.to_string(),
                (Some(m), None) => m.name.clone(),
                (None, None) => "charm".to_string(),
            };
        }
        if s.unit.is_empty() {
            s.unit = format!("{}/0", s.app);
        }
        if !s.unit.starts_with(&format!("{}/", s.app)) {
            return Err(HarnessError::Scenario(format!(
                "unit {:?} is not of application {:?}",
                s.unit, s.app
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for rel in &mut s.relations {
            let id = rel
                .id
                .ok_or_else(|| HarnessError::Scenario("a relation without an id".into()))?;
            if !seen.insert(id) {
                return Err(HarnessError::Scenario(format!(
                    "two relations with id {id}"
                )));
            }
            if rel.peer {
                rel.remote_app = s.app.clone();
                // Peer units given by number only (`/1`) belong to this application.
                rel.remote_units = std::mem::take(&mut rel.remote_units)
                    .into_iter()
                    .map(|(u, bag)| match u.strip_prefix('/') {
                        Some(n) => (format!("{}/{n}", s.app), bag),
                        None => (u, bag),
                    })
                    .collect();
                rel.remote_units.remove(&s.unit);
            }
            for unit in rel.remote_units.keys() {
                if !unit.starts_with(&format!("{}/", rel.remote_app)) {
                    return Err(HarnessError::Scenario(format!(
                        "unit {unit:?} on {} is not of the remote application {:?}",
                        rel.reference(),
                        rel.remote_app
                    )));
                }
            }
        }
        Ok(s)
    }

    fn hook_info(&self, trigger: &Trigger, state: &State) -> Result<HookInfo> {
        let scenario = |m: String| HarnessError::Scenario(m);
        let mut hook = HookInfo {
            config: match &self.meta {
                Some(m) => m.config_with_defaults(&state.config),
                None => state.config.clone(),
            },
            root: self.root(),
            bindings: self.meta.as_ref().map(CharmMeta::bindings),
            ..HookInfo::default()
        };
        let event = &trigger.event;
        if *event == Event::LeaderElected && !state.leader {
            return Err(scenario(
                "leader-elected runs only on the leader: State::leader(true)".into(),
            ));
        }
        match event.relation_endpoint() {
            None => {
                if trigger.relation_id.is_some()
                    || trigger.remote_unit.is_some()
                    || trigger.departing_unit.is_some()
                {
                    return Err(scenario(format!(
                        "{} is not a relation event",
                        event.name()
                    )));
                }
            }
            Some(endpoint) => {
                let rel = match trigger.relation_id {
                    Some(id) => state
                        .relation_by_id(id)
                        .filter(|r| r.endpoint == endpoint)
                        .ok_or_else(|| {
                            scenario(format!("no relation {endpoint}:{id} in the state"))
                        })?,
                    None => {
                        let mut on = state.relations.iter().filter(|r| r.endpoint == endpoint);
                        match (on.next(), on.next()) {
                            (Some(r), None) => r,
                            (None, _) => return Err(scenario(format!("no relation on {endpoint:?} in the state"))),
                            (Some(_), Some(_)) => {
                                return Err(scenario(format!(
                                    "several relations on {endpoint:?}: say which with Trigger::relation_id"
                                )))
                            }
                        }
                    }
                };
                let with_unit = matches!(
                    event,
                    Event::RelationJoined(_)
                        | Event::RelationChanged(_)
                        | Event::RelationDeparted(_)
                );
                let remote_unit = match &trigger.remote_unit {
                    Some(u) => Some(u.clone()),
                    None if with_unit => rel.remote_units.keys().next().cloned(),
                    None => None,
                };
                if let Some(u) = &remote_unit {
                    if !rel.remote_units.contains_key(u) {
                        return Err(scenario(format!(
                            "remote unit {u:?} is not in {}",
                            rel.reference()
                        )));
                    }
                }
                if with_unit && remote_unit.is_none() {
                    return Err(scenario(format!(
                        "{} needs a remote unit in {}",
                        event.name(),
                        rel.reference()
                    )));
                }
                if let Event::RelationDeparted(_) = event {
                    let departing = trigger
                        .departing_unit
                        .clone()
                        .or_else(|| remote_unit.clone());
                    if let Some(d) = &departing {
                        if !rel.remote_units.contains_key(d) && *d != state.unit {
                            return Err(scenario(format!(
                                "departing unit {d:?} is not in {}",
                                rel.reference()
                            )));
                        }
                    }
                    hook.departing_unit = departing;
                } else if trigger.departing_unit.is_some() {
                    return Err(scenario("only -departed has a departing unit".into()));
                }
                hook.relation_id = rel.id;
                hook.remote_app = Some(rel.remote_app.clone());
                hook.remote_unit = remote_unit;
                hook.broken = matches!(event, Event::RelationBroken(_));
            }
        }
        match event {
            Event::Action(name) => {
                hook.action = Some(name.clone());
                hook.params = match &self.meta {
                    Some(m) => m.params_with_defaults(name, &trigger.params),
                    None => trigger.params.clone(),
                };
            }
            _ if !trigger.params.is_empty() => {
                return Err(scenario(format!(
                    "{} is not an action: it takes no params",
                    event.name()
                )))
            }
            _ => {}
        }
        for (name, res) in &state.resources {
            let path = match res {
                Resource::Path(p) => p.clone(),
                Resource::Content(bytes) => {
                    let dir = self.dir.path().join("resources").join(name);
                    fs::create_dir_all(&dir)
                        .map_err(|e| HarnessError::io(dir.display().to_string(), e))?;
                    let p = dir.join(name);
                    fs::write(&p, bytes)
                        .map_err(|e| HarnessError::io(p.display().to_string(), e))?;
                    p
                }
            };
            hook.resources.insert(name.clone(), path);
        }
        Ok(hook)
    }

    fn spawn(
        &self,
        trigger: &Trigger,
        state: &State,
        hook: &HookInfo,
        state_path: &Path,
        run_dir: &Path,
    ) -> Result<(i32, String, String)> {
        let charm_dir = self.charm_dir_path();
        let event = &trigger.event;
        let inherited =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        let mut cmd = Command::new(&self.charm);
        cmd.arg0(charm_dir.join("dispatch"))
            .current_dir(&charm_dir)
            .env_clear()
            .env(
                "PATH",
                format!("{}:{inherited}", self.dir.path().join("bin").display()),
            )
            .env("HOME", self.dir.path().join("home"))
            .env("LANG", "C.UTF-8")
            .env("JUJU_DISPATCH_PATH", event.dispatch_path())
            .env("JUJU_UNIT_NAME", &state.unit)
            .env("JUJU_MODEL_NAME", &state.model)
            .env("JUJU_MODEL_UUID", &state.model_uuid)
            .env("JUJU_VERSION", "3.6.8")
            .env("JUJU_MACHINE_ID", "0")
            .env("JUJU_CHARM_DIR", &charm_dir)
            .env("CHARM_DIR", &charm_dir)
            .env(FS_ROOT_VAR, self.root())
            .env(STATE_ENV, state_path);
        // What a developer's environment needs to reach a test binary (coverage, backtraces).
        for key in [
            "TMPDIR",
            "RUST_BACKTRACE",
            "RUST_LOG",
            "LLVM_PROFILE_FILE",
            "CARGO_LLVM_COV",
        ] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        if !event.is_action() {
            cmd.env("JUJU_HOOK_NAME", event.name());
        }
        if let (Some(endpoint), Some(id)) = (event.relation_endpoint(), hook.relation_id) {
            cmd.env("JUJU_RELATION", endpoint)
                .env("JUJU_RELATION_ID", format!("{endpoint}:{id}"));
            if let Some(a) = &hook.remote_app {
                cmd.env("JUJU_REMOTE_APP", a);
            }
            if let Some(u) = &hook.remote_unit {
                cmd.env("JUJU_REMOTE_UNIT", u);
            }
            if let Some(d) = &hook.departing_unit {
                cmd.env("JUJU_DEPARTING_UNIT", d);
            }
        }
        if let Event::Action(name) = event {
            cmd.env("JUJU_ACTION_NAME", name)
                .env("JUJU_ACTION_UUID", "1");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out_path = run_dir.join("stdout");
        let err_path = run_dir.join("stderr");
        let file = |p: &Path| {
            fs::File::create(p).map_err(|e| HarnessError::io(p.display().to_string(), e))
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file(&out_path)?))
            .stderr(Stdio::from(file(&err_path)?));
        let mut child = cmd.spawn().map_err(|e| {
            HarnessError::io(format!("starting the charm {}", self.charm.display()), e)
        })?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| HarnessError::io("waiting for the charm", e))?
            {
                break status;
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Timeout {
                    timeout: self.timeout,
                    stderr: fs::read_to_string(&err_path).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let read = |p: &Path| {
            fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        // Killed by a signal: report it as a shell would (128 + n is not portable; -1 is clear).
        Ok((
            status.code().unwrap_or(-1),
            read(&out_path),
            read(&err_path),
        ))
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    trigger: Trigger,
    before: State,
    hook: HookInfo,
    world: World,
    exit_code: i32,
    stdout: String,
    stderr: String,
    files_written: BTreeMap<PathBuf, Vec<u8>>,
    files_removed: Vec<PathBuf>,
) -> Output {
    let mut state = world.state;
    let record = world.record;
    let event = trigger.event;
    let mut action = None;
    if event.is_action() {
        let mut outcome: ActionOutcome = record.action;
        if exit_code != 0 && outcome.failure.is_none() {
            outcome.failure = Some(format!("exit status {exit_code}"));
        }
        action = Some(outcome);
    } else if exit_code != 0 {
        // As Juju: a failed hook's relation data, stored state, ports and version are not
        // committed, and the unit shows the error.
        for rel in &mut state.relations {
            if let Some(old) = before.relations.iter().find(|r| r.id == rel.id) {
                rel.local_unit_data = old.local_unit_data.clone();
                rel.local_app_data = old.local_app_data.clone();
            }
        }
        state.stored = before.stored.clone();
        state.opened_ports = before.opened_ports.clone();
        state.app_version = before.app_version.clone();
        state.unit_status = Status::error(format!("hook failed: \"{}\"", event.name()));
    } else if let Some(id) = hook.relation_id {
        match &event {
            Event::RelationDeparted(_) => {
                if let (Some(d), Some(rel)) = (&hook.departing_unit, state.relation_mut(id)) {
                    rel.remote_units.remove(d);
                }
            }
            Event::RelationBroken(_) => state.relations.retain(|r| r.id != Some(id)),
            _ => {}
        }
    }
    Output {
        event,
        unit_status: state.unit_status.clone(),
        app_status: state.app_status.clone(),
        state,
        status_history: record.status_history,
        logs: record.logs,
        calls: record.calls,
        action,
        files_written,
        files_removed,
        exit_code,
        stdout,
        stderr,
    }
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes =
        serde_json::to_vec(value).map_err(|e| HarnessError::Setup(format!("state file: {e}")))?;
    fs::write(path, bytes).map_err(|e| HarnessError::io(path.display().to_string(), e))
}

/// Machine path → (length, hash) of every file under the root.
type Snapshot = BTreeMap<PathBuf, (u64, u64)>;

fn snapshot(root: &Path) -> Result<Snapshot> {
    let mut out = Snapshot::new();
    walk(root, root, &mut |machine, real| {
        let bytes = fs::read(real).map_err(|e| HarnessError::io(real.display().to_string(), e))?;
        out.insert(machine, (bytes.len() as u64, digest(&bytes)));
        Ok(())
    })?;
    Ok(out)
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Files written (machine path → content) and files removed since a snapshot.
type Changes = (BTreeMap<PathBuf, Vec<u8>>, Vec<PathBuf>);

fn diff(root: &Path, before: &Snapshot) -> Result<Changes> {
    let mut written = BTreeMap::new();
    let mut seen = Vec::new();
    walk(root, root, &mut |machine, real| {
        let bytes = fs::read(real).map_err(|e| HarnessError::io(real.display().to_string(), e))?;
        if before.get(&machine) != Some(&(bytes.len() as u64, digest(&bytes))) {
            written.insert(machine.clone(), bytes);
        }
        seen.push(machine);
        Ok(())
    })?;
    let removed = before
        .keys()
        .filter(|p| !seen.contains(p))
        .cloned()
        .collect();
    Ok((written, removed))
}

fn walk(root: &Path, dir: &Path, f: &mut dyn FnMut(PathBuf, &Path) -> Result<()>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| HarnessError::io(dir.display().to_string(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| HarnessError::io(dir.display().to_string(), e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| HarnessError::io(path.display().to_string(), e))?;
        if kind.is_dir() {
            walk(root, &path, f)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            f(Path::new("/").join(rel), &path)?;
        }
    }
    Ok(())
}
