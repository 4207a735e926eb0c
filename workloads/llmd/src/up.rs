//! `llmd up`: the whole stack on one machine — a cache-manager, prefill and decode workers,
//! and the scheduler in front — as child processes of this one, each running this same
//! binary, their logs prefixed with their names. Ctrl-C (or SIGTERM) stops them all.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Model source: `default`, a .gguf file, a safetensors directory, hf:ORG/REPO[:FILE]
    #[arg(long, env = "LLMD_MODEL")]
    pub model: Option<String>,
    /// Address the scheduler (and every component) listens on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The scheduler's port: the one address clients use
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Prefill workers (0: no disaggregation; decode workers then serve whole requests)
    #[arg(long, default_value_t = 1)]
    pub prefill: usize,
    /// Decode workers
    #[arg(long, default_value_t = 1)]
    pub decode: usize,
    /// CPU threads per worker (default: the machine's cores shared among the workers)
    #[arg(long)]
    pub threads: Option<usize>,
    /// KV cache size per worker: blocks (`4096`) or bytes (`2GiB`)
    #[arg(long)]
    pub kv_cache_memory: Option<String>,
    /// Extra arguments for the scheduler (e.g. `--profile round-robin`), one string
    #[arg(long, allow_hyphen_values = true)]
    pub scheduler_args: Option<String>,
    /// Extra arguments for every worker (e.g. `--max-num-seqs 8`), one string
    #[arg(long, allow_hyphen_values = true)]
    pub worker_args: Option<String>,
}

/// Set in the children's environment: they stop when `llmd up` dies, however it dies
/// (see [`die_with_parent`]).
pub const DIE_WITH_PARENT: &str = "LLMD_DIE_WITH_PARENT";

/// In a child of `llmd up`: asks the kernel for SIGTERM when the parent exits, so that a
/// killed `llmd up` leaves no servers behind.
pub fn die_with_parent() {
    if std::env::var_os(DIE_WITH_PARENT).is_none() {
        return;
    }
    std::env::remove_var(DIE_WITH_PARENT);
    if nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_ok()
        && nix::unistd::getppid().as_raw() == 1
    {
        // The parent was already gone before the request took effect.
        std::process::exit(1);
    }
}

/// A child process and its name.
struct Proc {
    name: String,
    child: Child,
}

/// Every child; stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
struct Stack {
    procs: Vec<Proc>,
}

impl Stack {
    /// Starts `llmd ARGS` as `name`, prefixing its stderr lines; returns the line starting
    /// with `ready` (after the prefix), which servers print once listening.
    fn spawn(&mut self, name: &str, args: &[String], ready: &str) -> anyhow::Result<String> {
        let exe = std::env::current_exe().context("cannot find the llmd binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .env(DIE_WITH_PARENT, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, rx) = mpsc::channel();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                let _ = tx.send(line);
            }
        });
        self.procs.push(Proc {
            name: name.to_string(),
            child,
        });
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(ready) {
                        // Keep draining so the child never blocks on a full pipe.
                        std::thread::spawn(move || while rx.recv().is_ok() {});
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("{name} exited before it was ready (its log is above)")
                }
            }
            if let Some(p) = self.procs.last_mut() {
                if let Ok(Some(st)) = p.child.try_wait() {
                    anyhow::bail!("{name} exited ({st}) before it was ready (its log is above)");
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "{name} did not start in time");
        }
    }

    /// The first child that has exited, if any.
    fn exited(&mut self) -> Option<String> {
        self.procs
            .iter_mut()
            .find_map(|p| match p.child.try_wait() {
                Ok(Some(st)) => Some(format!("{} exited ({st})", p.name)),
                _ => None,
            })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The scheduler first (started last), so no new request reaches a stopping worker.
        for p in self.procs.iter().rev() {
            if let Ok(pid) = i32::try_from(p.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in self.procs.iter_mut().rev() {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

/// A port free now on `host` (the OS picks it); for the KV event socket, which workers
/// must know before the cache-manager reports anything.
fn free_port(host: &str) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((host, 0))
        .with_context(|| format!("cannot bind a port on {host}"))?;
    Ok(l.local_addr()?.port())
}

pub fn run(a: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.decode >= 1, "--decode must be at least 1");
    let source_arg = a.model.clone().unwrap_or_else(|| "default".to_string());
    // Fetch once here, so the workers find the model in the local store.
    let source = llmd_models::ModelSource::parse_opt(Some(&source_arg))?;
    let model = llmd_models::resolve(&source, &llmd_models::FetchOptions::from_env())?;
    llmd_engine::Architecture::parse(&model.architecture)?;
    let workers = a.prefill + a.decode;
    let threads = match a.threads {
        Some(t) => t.max(1),
        None => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / workers).max(1)
        }
    };

    // Catch SIGINT/SIGTERM from the start, so that they stop the children (the stack's
    // drop) rather than kill this process and orphan them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term) = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;

    let mut stack = Stack { procs: Vec::new() };
    let host = a.host.clone();
    let events_port = free_port(&host)?;
    let events = format!("tcp://{host}:{events_port}");
    let cm = stack.spawn(
        "cache-manager",
        &[
            "cache-manager".into(),
            "--host".into(),
            host.clone(),
            "--port".into(),
            "0".into(),
            "--events-bind".into(),
            events.clone(),
        ],
        "llmd cache-manager: ",
    )?;
    let mut worker_flags = Vec::new();
    for (role, n) in [("prefill", a.prefill), ("decode", a.decode)] {
        for i in 0..n {
            let mut args: Vec<String> = vec![
                "worker".into(),
                "--model".into(),
                source_arg.clone(),
                "--role".into(),
                role.into(),
                "--host".into(),
                host.clone(),
                "--port".into(),
                "0".into(),
                "--threads".into(),
                threads.to_string(),
                "--kv-events-endpoint".into(),
                events.clone(),
            ];
            if let Some(kv) = &a.kv_cache_memory {
                args.extend(["--kv-cache-memory".into(), kv.clone()]);
            }
            if let Some(extra) = &a.worker_args {
                args.extend(extra.split_whitespace().map(str::to_string));
            }
            let url = stack.spawn(&format!("{role}-{i}"), &args, "llmd worker: ")?;
            worker_flags.push(format!("--worker={role}={url}"));
        }
    }
    let mut args: Vec<String> = vec![
        "scheduler".into(),
        "--host".into(),
        host.clone(),
        "--port".into(),
        a.port.to_string(),
        "--cache-manager".into(),
        cm.clone(),
    ];
    args.extend(worker_flags);
    if let Some(extra) = &a.scheduler_args {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    let url = stack.spawn("scheduler", &args, "llmd scheduler: ")?;
    wait_healthy(&url, &mut stack)?;
    let name = served_model(&url).unwrap_or(model.name.clone());
    eprintln!(
        "llmd up: ready at {url} — {name}; {} prefill and {} decode worker(s), cache-manager {cm}\n  curl {url}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\nPress Ctrl-C to stop.",
        a.prefill, a.decode
    );
    let exited = rt.block_on(async {
        loop {
            tokio::select! {
                _ = int.recv() => return None,
                _ = term.recv() => return None,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(why) = stack.exited() {
                        return Some(why);
                    }
                }
            }
        }
    });
    if let Some(why) = exited {
        anyhow::bail!("{why}; stopping the stack");
    }
    eprintln!("llmd up: stopping");
    drop(stack);
    Ok(())
}

/// Waits until the scheduler reports every worker healthy.
fn wait_healthy(url: &str, stack: &mut Stack) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(why) = stack.exited() {
            anyhow::bail!("{why} before the stack was ready");
        }
        if let Ok(v) = get_json(&format!("{url}/health")) {
            if v["status"] == "ok" && v["healthy_workers"] == v["workers"] {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the workers did not become healthy in time"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn served_model(url: &str) -> Option<String> {
    let v = get_json(&format!("{url}/v1/models")).ok()?;
    v["data"][0]["id"].as_str().map(str::to_string)
}

/// A blocking GET (this process runs no server of its own).
fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()?
        .json()?)
}
