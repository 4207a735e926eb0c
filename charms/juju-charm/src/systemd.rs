//! The workload as a systemd service: the unit file (under a configurable root, so tests
//! never touch the real `/etc`) and `systemctl` (daemon-reload, enable --now, restart, stop,
//! disable, is-active).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::context::{host_path, FS_ROOT_VAR};
use crate::error::{Error, Result};
use crate::files::{remove_if_present, write_if_changed};

/// Where unit files go, relative to the root.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// What [`Systemd::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Unit file and state already as wanted.
    Unchanged,
    /// The service was not running and has been started.
    Started,
    /// The unit file changed and the running service has been restarted.
    Restarted,
}

/// systemd on this machine.
#[derive(Debug, Clone)]
pub struct Systemd {
    root: PathBuf,
    systemctl: PathBuf,
}

impl Default for Systemd {
    fn default() -> Self {
        Self::new()
    }
}

impl Systemd {
    /// Unit files under `/` (or under the root the test harness sets), `systemctl` from PATH.
    pub fn new() -> Self {
        let root = std::env::var_os(FS_ROOT_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        Self::with_root(root)
    }

    /// Unit files under `root` (`<root>/etc/systemd/system`).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Systemd {
            root: root.into(),
            systemctl: PathBuf::from("systemctl"),
        }
    }

    /// Another `systemctl` program.
    pub fn systemctl(mut self, program: impl Into<PathBuf>) -> Self {
        self.systemctl = program.into();
        self
    }

    /// The unit file's path: `<root>/etc/systemd/system/<name>.service`.
    pub fn unit_path(&self, name: &str) -> PathBuf {
        host_path(&self.root, Path::new(UNIT_DIR).join(unit_name(name)))
    }

    /// Writes the unit file; `true` when it changed (then daemon-reload before using it).
    pub fn write_unit(&self, name: &str, content: &str) -> Result<bool> {
        write_if_changed(&self.unit_path(name), content.as_bytes())
    }

    /// Removes the unit file; `true` when there was one.
    pub fn remove_unit(&self, name: &str) -> Result<bool> {
        remove_if_present(&self.unit_path(name))
    }

    /// `systemctl daemon-reload`.
    pub fn daemon_reload(&self) -> Result<()> {
        self.run(&["daemon-reload"]).map(drop)
    }

    /// `systemctl enable --now <unit>`: starts it now and at boot.
    pub fn enable_now(&self, name: &str) -> Result<()> {
        self.run(&["enable", "--now", &unit_name(name)]).map(drop)
    }

    /// `systemctl start <unit>`.
    pub fn start(&self, name: &str) -> Result<()> {
        self.run(&["start", &unit_name(name)]).map(drop)
    }

    /// `systemctl restart <unit>`.
    pub fn restart(&self, name: &str) -> Result<()> {
        self.run(&["restart", &unit_name(name)]).map(drop)
    }

    /// `systemctl stop <unit>`.
    pub fn stop(&self, name: &str) -> Result<()> {
        self.run(&["stop", &unit_name(name)]).map(drop)
    }

    /// `systemctl disable --now <unit>`: stops it and keeps it from starting at boot.
    pub fn disable_now(&self, name: &str) -> Result<()> {
        self.run(&["disable", "--now", &unit_name(name)]).map(drop)
    }

    /// `systemctl disable <unit>`.
    pub fn disable(&self, name: &str) -> Result<()> {
        self.run(&["disable", &unit_name(name)]).map(drop)
    }

    /// `systemctl is-active --quiet <unit>`: exit 0 means active, any other answer (3:
    /// inactive, failed, unknown unit) means not.
    pub fn is_active(&self, name: &str) -> Result<bool> {
        self.probe(&["is-active", "--quiet", &unit_name(name)])
    }

    /// `systemctl is-enabled --quiet <unit>`.
    pub fn is_enabled(&self, name: &str) -> Result<bool> {
        self.probe(&["is-enabled", "--quiet", &unit_name(name)])
    }

    /// Brings the service to "this unit file, enabled, running": writes the file, reloads
    /// systemd if it changed, starts it if it was not running, restarts it if it was
    /// running an older unit file.
    pub fn ensure(&self, name: &str, unit: &ServiceUnit) -> Result<Change> {
        let changed = self.write_unit(name, &unit.render()?)?;
        if changed {
            self.daemon_reload()?;
        }
        let active = self.is_active(name)?;
        if !active {
            self.enable_now(name)?;
            return Ok(Change::Started);
        }
        if changed {
            self.restart(name)?;
            return Ok(Change::Restarted);
        }
        Ok(Change::Unchanged)
    }

    /// Stops and disables the service and removes its unit file (for `remove`).
    pub fn remove(&self, name: &str) -> Result<()> {
        if self.unit_path(name).exists() {
            self.disable_now(name)?;
        }
        if self.remove_unit(name)? {
            self.daemon_reload()?;
        }
        Ok(())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.systemctl);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output().map_err(|e| Error::Systemctl {
            args: args.join(" "),
            code: None,
            stderr: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(Error::Systemctl {
                args: args.join(" "),
                code: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn probe(&self, args: &[&str]) -> Result<bool> {
        let status = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| Error::Systemctl {
                args: args.join(" "),
                code: None,
                stderr: e.to_string(),
            })?;
        Ok(status.success())
    }
}

/// `llmd-decode` → `llmd-decode.service`; a name with a unit type is kept.
pub fn unit_name(name: &str) -> String {
    const TYPES: [&str; 6] = [
        ".service", ".socket", ".timer", ".target", ".path", ".mount",
    ];
    if TYPES.iter().any(|t| name.ends_with(t)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

/// A simple `[Unit]`/`[Service]`/`[Install]` service file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUnit {
    pub description: String,
    /// The command as argv; quoted for systemd when rendered.
    pub exec_start: Vec<String>,
    pub after: Vec<String>,
    pub wants: Vec<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub working_directory: Option<String>,
    pub environment: Vec<(String, String)>,
    /// `Restart=` (default `on-failure`).
    pub restart: String,
    /// `RestartSec=` in seconds (default 5).
    pub restart_sec: u32,
    /// `TimeoutStopSec=`: how long a stop may drain in-flight work before SIGKILL.
    pub timeout_stop_sec: Option<u32>,
    /// More `[Service]` lines, as `key=value`, written as given.
    pub extra: Vec<(String, String)>,
    /// `WantedBy=` (default `multi-user.target`).
    pub wanted_by: String,
}

impl ServiceUnit {
    pub fn new<I, S>(description: impl Into<String>, exec_start: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ServiceUnit {
            description: description.into(),
            exec_start: exec_start.into_iter().map(Into::into).collect(),
            after: vec!["network-online.target".into()],
            wants: vec!["network-online.target".into()],
            user: None,
            group: None,
            working_directory: None,
            environment: Vec::new(),
            restart: "on-failure".into(),
            restart_sec: 5,
            timeout_stop_sec: None,
            extra: Vec::new(),
            wanted_by: "multi-user.target".into(),
        }
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
    pub fn working_directory(mut self, dir: impl Into<String>) -> Self {
        self.working_directory = Some(dir.into());
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.environment.push((key.into(), value.into()));
        self
    }
    pub fn timeout_stop_sec(mut self, secs: u32) -> Self {
        self.timeout_stop_sec = Some(secs);
        self
    }
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }

    /// The unit file text. Fails on a newline in any value (it would end the setting).
    pub fn render(&self) -> Result<String> {
        if self.exec_start.is_empty() {
            return Err(Error::Invalid("ServiceUnit: empty ExecStart".into()));
        }
        let mut lines = vec![
            "[Unit]".to_string(),
            format!("Description={}", self.description),
        ];
        if !self.wants.is_empty() {
            lines.push(format!("Wants={}", self.wants.join(" ")));
        }
        if !self.after.is_empty() {
            lines.push(format!("After={}", self.after.join(" ")));
        }
        lines.push(String::new());
        lines.push("[Service]".into());
        lines.push("Type=simple".into());
        let argv: Vec<String> = self.exec_start.iter().map(|a| quote_exec_arg(a)).collect();
        lines.push(format!("ExecStart={}", argv.join(" ")));
        if let Some(u) = &self.user {
            lines.push(format!("User={u}"));
        }
        if let Some(g) = &self.group {
            lines.push(format!("Group={g}"));
        }
        if let Some(d) = &self.working_directory {
            lines.push(format!("WorkingDirectory={}", escape_specifiers(d)));
        }
        for (k, v) in &self.environment {
            lines.push(format!(
                "Environment={}",
                quote(&escape_specifiers(&format!("{k}={v}")))
            ));
        }
        lines.push(format!("Restart={}", self.restart));
        lines.push(format!("RestartSec={}", self.restart_sec));
        if let Some(t) = self.timeout_stop_sec {
            lines.push(format!("TimeoutStopSec={t}"));
        }
        for (k, v) in &self.extra {
            lines.push(format!("{k}={v}"));
        }
        lines.push(String::new());
        lines.push("[Install]".into());
        lines.push(format!("WantedBy={}", self.wanted_by));
        lines.push(String::new());
        let text = lines.join("\n");
        if self.all_values().any(|v| v.contains(['\n', '\r', '\0'])) {
            return Err(Error::Invalid(format!(
                "unit {:?}: a value contains a line break",
                self.description
            )));
        }
        Ok(text)
    }

    fn all_values(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.description)
            .chain(&self.exec_start)
            .chain(&self.after)
            .chain(&self.wants)
            .chain(&self.user)
            .chain(&self.group)
            .chain(&self.working_directory)
            .chain(self.environment.iter().flat_map(|(k, v)| [k, v]))
            .chain(self.extra.iter().flat_map(|(k, v)| [k, v]))
    }
}

/// `%` starts a systemd specifier (`%h`, `%n`); a literal one is `%%`.
fn escape_specifiers(s: &str) -> String {
    s.replace('%', "%%")
}

/// Double-quotes a word when systemd would otherwise split or unescape it.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'));
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// One ExecStart argument: specifiers escaped, `$` escaped (systemd would expand
/// `$VAR` from the environment), quoted as needed.
fn quote_exec_arg(s: &str) -> String {
    quote(&escape_specifiers(s).replace('$', "$$"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_a_service_file() {
        let unit = ServiceUnit::new(
            "llmd decode worker",
            [
                "/opt/llmd/bin/llmd",
                "worker",
                "--config",
                "/etc/llmd/decode worker.yaml",
                "50%",
                "$HOME",
            ],
        )
        .user("llmd")
        .env("LLMD_LOG", "info")
        .env("HF_TOKEN", "a b\"c")
        .timeout_stop_sec(60);
        let text = unit.render().unwrap();
        assert!(
            text.starts_with("[Unit]\nDescription=llmd decode worker\n"),
            "{text}"
        );
        assert!(text.contains(
            "ExecStart=/opt/llmd/bin/llmd worker --config \"/etc/llmd/decode worker.yaml\" 50%% $$HOME\n"
        ));
        assert!(text.contains("User=llmd\n"));
        assert!(text.contains("Environment=LLMD_LOG=info\n"));
        assert!(text.contains("Environment=\"HF_TOKEN=a b\\\"c\"\n"));
        assert!(text.contains("Restart=on-failure\nRestartSec=5\nTimeoutStopSec=60\n"));
        assert!(text.ends_with("[Install]\nWantedBy=multi-user.target\n"));
        assert!(ServiceUnit::new("x", ["a\nb"]).render().is_err());
        assert!(ServiceUnit::new("x", Vec::<String>::new())
            .render()
            .is_err());
    }

    #[test]
    fn unit_paths_are_under_the_root() {
        let sd = Systemd::with_root("/tmp/r");
        assert_eq!(
            sd.unit_path("llmd"),
            PathBuf::from("/tmp/r/etc/systemd/system/llmd.service")
        );
        assert_eq!(
            sd.unit_path("a.timer"),
            PathBuf::from("/tmp/r/etc/systemd/system/a.timer")
        );
        assert_eq!(unit_name("x"), "x.service");
    }
}
