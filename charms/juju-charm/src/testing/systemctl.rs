//! A fake `systemctl`: unit files are the real files the charm wrote under the machine
//! root; whether a service is enabled, running and which unit file it loaded live in the
//! state. Answers, messages and exit codes follow systemd's (5: unit not found, 3: not
//! active), including the warning for a changed unit file without a daemon-reload.

use std::fs;
use std::path::Path;

use super::fake::{Reply, World};
use super::flags::{parse, Kind};
use super::Service;
use crate::context::host_path;
use crate::systemd::unit_name;

const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

fn unit_file(root: &Path, unit: &str) -> Option<String> {
    UNIT_DIRS
        .iter()
        .find_map(|d| fs::read_to_string(host_path(root, Path::new(d).join(unit))).ok())
}

struct Out {
    stdout: String,
    stderr: String,
}

/// `Err((exit code, message))` as systemctl prints it.
type Step = Result<(), (i32, String)>;

pub(crate) fn exec(w: &mut World, args: &[String]) -> Reply {
    let mut out = Out {
        stdout: String::new(),
        stderr: String::new(),
    };
    let code = match run(w, args, &mut out) {
        Ok(code) => code,
        Err((code, msg)) => {
            out.stderr.push_str(&msg);
            out.stderr.push('\n');
            code
        }
    };
    Reply {
        code,
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

fn run(w: &mut World, args: &[String], out: &mut Out) -> Result<i32, (i32, String)> {
    let p = parse(
        args,
        &[
            (&["now"], Kind::Bool),
            (&["quiet", "q"], Kind::Bool),
            (&["no-block"], Kind::Bool),
            (&["no-pager"], Kind::Bool),
            (&["no-reload"], Kind::Bool),
            (&["no-ask-password"], Kind::Bool),
            (&["system"], Kind::Bool),
            (&["force", "f"], Kind::Bool),
        ],
    )
    .map_err(|r| (1, format!("systemctl: {}", r.msg)))?;
    let Some((verb, units)) = p.pos.split_first() else {
        return Err((1, "systemctl: this fake needs a command".into()));
    };
    let units: Vec<String> = units.iter().map(|u| unit_name(u)).collect();
    let needs_units = !matches!(verb.as_str(), "daemon-reload");
    if needs_units && units.is_empty() {
        return Err((1, format!("Too few arguments for {verb}.")));
    }
    let now = p.flag("now");
    let quiet = p.flag("quiet");
    match verb.as_str() {
        "daemon-reload" => {
            daemon_reload(w);
            Ok(0)
        }
        "enable" | "disable" => {
            for u in &units {
                if unit_file(&w.hook.root, u).is_none() {
                    return Err((
                        1,
                        format!("Failed to {verb} unit: Unit file {u} does not exist."),
                    ));
                }
            }
            for u in &units {
                let enable = verb == "enable";
                let svc = w.state.services.entry(u.clone()).or_default();
                if svc.enabled != enable {
                    svc.enabled = enable;
                    let link = format!("/etc/systemd/system/multi-user.target.wants/{u}");
                    out.stderr.push_str(&if enable {
                        format!("Created symlink {link} → /etc/systemd/system/{u}.\n")
                    } else {
                        format!("Removed \"{link}\".\n")
                    });
                }
                if now {
                    if enable {
                        start(w, u, out).map_err(|(c, m)| (c, m.replace("start", "enable")))?;
                    } else {
                        stop(w, u)?;
                    }
                }
            }
            Ok(0)
        }
        "start" => each(&units, |u| start(w, u, out)),
        "stop" => each(&units, |u| stop(w, u)),
        "restart" | "reload-or-restart" => each(&units, |u| restart(w, u, out)),
        "try-restart" => each(&units, |u| {
            if w.state.services.get(u).is_some_and(|s| s.active) {
                restart(w, u, out)
            } else {
                Ok(())
            }
        }),
        "is-active" => {
            let mut all = true;
            for u in &units {
                let active = w.state.services.get(u).is_some_and(|s| s.active);
                all &= active;
                if !quiet {
                    out.stdout
                        .push_str(if active { "active\n" } else { "inactive\n" });
                }
            }
            Ok(if all { 0 } else { 3 })
        }
        "is-enabled" => {
            let mut all = true;
            for u in &units {
                let word = match w.state.services.get(u) {
                    Some(s) if s.enabled => "enabled",
                    _ if unit_file(&w.hook.root, u).is_some() => "disabled",
                    _ => "not-found",
                };
                all &= word == "enabled";
                if !quiet {
                    out.stdout.push_str(word);
                    out.stdout.push('\n');
                }
            }
            Ok(if all { 0 } else { 1 })
        }
        "status" => {
            let mut code = 0;
            for u in &units {
                match w.state.services.get(u) {
                    Some(s) => {
                        let state = if s.active {
                            "active (running)"
                        } else {
                            "inactive (dead)"
                        };
                        out.stdout
                            .push_str(&format!("● {u}\n     Active: {state}\n"));
                        if !s.active {
                            code = code.max(3);
                        }
                    }
                    None if unit_file(&w.hook.root, u).is_some() => {
                        out.stdout
                            .push_str(&format!("○ {u}\n     Active: inactive (dead)\n"));
                        code = code.max(3);
                    }
                    None => {
                        out.stderr
                            .push_str(&format!("Unit {u} could not be found.\n"));
                        code = 4;
                    }
                }
            }
            Ok(code)
        }
        other => Err((1, format!("Unknown command verb '{other}'."))),
    }
}

fn each(units: &[String], mut f: impl FnMut(&str) -> Step) -> Result<i32, (i32, String)> {
    for u in units {
        f(u)?;
    }
    Ok(0)
}

/// Loads every unit file as it is now (what `daemon-reload` makes systemd do).
fn daemon_reload(w: &mut World) {
    let dir = host_path(&w.hook.root, UNIT_DIRS[0]);
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".service") && e.path().is_file() {
                w.state.services.entry(name).or_default();
            }
        }
    }
    let root = w.hook.root.clone();
    for (name, svc) in w.state.services.iter_mut() {
        svc.loaded = unit_file(&root, name);
    }
}

/// The unit as systemd would run it: loaded on first use if systemd never saw it; a
/// changed file is not picked up without daemon-reload (systemd warns).
fn load<'a>(
    w: &'a mut World,
    unit: &str,
    verb: &str,
    out: &mut Out,
) -> Result<&'a mut Service, (i32, String)> {
    let file = unit_file(&w.hook.root, unit);
    let svc = w.state.services.entry(unit.to_string()).or_default();
    match (&svc.loaded, file) {
        (None, None) => {
            // Do not leave an entry for a unit that does not exist.
            if !svc.enabled && !svc.active && svc.starts == 0 {
                w.state.services.remove(unit);
            }
            return Err((
                5,
                format!("Failed to {verb} {unit}: Unit {unit} not found."),
            ));
        }
        (None, Some(f)) => svc.loaded = Some(f),
        (Some(loaded), Some(f)) if *loaded != f => {
            out.stderr.push_str(&format!(
                "Warning: The unit file, source configuration file or drop-ins of {unit} changed on disk. Run 'systemctl daemon-reload' to reload units.\n"
            ));
        }
        _ => {}
    }
    w.state
        .services
        .get_mut(unit)
        .ok_or_else(|| (5, format!("Unit {unit} not found.")))
}

fn start(w: &mut World, unit: &str, out: &mut Out) -> Step {
    let svc = load(w, unit, "start", out)?;
    if !svc.active {
        svc.active = true;
        svc.starts += 1;
    }
    Ok(())
}

fn restart(w: &mut World, unit: &str, out: &mut Out) -> Step {
    let svc = load(w, unit, "restart", out)?;
    svc.active = true;
    svc.restarts += 1;
    Ok(())
}

fn stop(w: &mut World, unit: &str) -> Step {
    match w.state.services.get_mut(unit) {
        Some(svc) => {
            if svc.active {
                svc.active = false;
                svc.stops += 1;
            }
            Ok(())
        }
        None if unit_file(&w.hook.root, unit).is_some() => Ok(()),
        None => Err((5, format!("Failed to stop {unit}: Unit {unit} not loaded."))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sc(w: &mut World, args: &[&str]) -> Reply {
        exec(w, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn services_follow_systemd() {
        let root = tempfile::tempdir().unwrap();
        let mut w = World::default();
        w.hook.root = root.path().to_path_buf();
        let r = sc(&mut w, &["start", "demo"]);
        assert_eq!(r.code, 5);
        assert_eq!(
            r.stderr,
            "Failed to start demo.service: Unit demo.service not found.\n"
        );
        assert!(w.state.services.is_empty());
        assert_eq!(sc(&mut w, &["enable", "--now", "demo.service"]).code, 1);

        let file = host_path(root.path(), "/etc/systemd/system/demo.service");
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, "v1").unwrap();
        assert_eq!(sc(&mut w, &["daemon-reload"]).code, 0);
        let r = sc(&mut w, &["enable", "--now", "demo.service"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let s = &w.state.services["demo.service"];
        assert!(s.enabled && s.active);
        assert_eq!((s.starts, s.loaded.as_deref()), (1, Some("v1")));
        assert_eq!(sc(&mut w, &["is-active", "demo"]).stdout, "active\n");
        assert_eq!(sc(&mut w, &["is-active", "--quiet", "demo"]).code, 0);

        fs::write(&file, "v2").unwrap();
        let r = sc(&mut w, &["restart", "demo"]);
        assert!(r.stderr.contains("changed on disk"), "{}", r.stderr);
        assert_eq!(
            w.state.services["demo.service"].loaded.as_deref(),
            Some("v1")
        );
        sc(&mut w, &["daemon-reload"]);
        assert_eq!(
            w.state.services["demo.service"].loaded.as_deref(),
            Some("v2")
        );

        assert_eq!(sc(&mut w, &["disable", "--now", "demo"]).code, 0);
        let s = &w.state.services["demo.service"];
        assert!(!s.enabled && !s.active);
        assert_eq!((s.stops, s.restarts), (1, 1));
        let r = sc(&mut w, &["is-active", "demo"]);
        assert_eq!((r.code, r.stdout.as_str()), (3, "inactive\n"));
        assert_eq!(sc(&mut w, &["frobnicate", "demo"]).code, 1);
        assert_eq!(sc(&mut w, &["--bogus", "start", "demo"]).code, 1);
    }
}
