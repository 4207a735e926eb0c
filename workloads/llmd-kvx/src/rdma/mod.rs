//! RDMA transport (feature `rdma`): the puller READs the payload out of the server's
//! registered memory over an RC queue pair; the TCP connection stays the control channel.
//!
//! Per transfer, on the TCP connection the TCP protocol uses:
//! 1. puller → server: `b"LLMDKVR1"`, request id, expectation (as in TCP), then its queue
//!    pair's endpoint (u32 length + JSON: QP number, PSN, LID, GID, MTU, READ depth).
//! 2. server → puller: status as in TCP, plus 2 = "no RDMA here" (clean: the puller pulls
//!    over TCP on the same connection). After a matching header, an offer (u32 length +
//!    JSON): the server's endpoint, the staged payload's address, length, rkey and CRC-32 —
//!    or `tcp: true` when it cannot stage (then the payload and CRC follow as in TCP).
//! 3. The puller connects its QP, posts the READs (128 KiB each, 32 posted), polls
//!    for their completions, checks the CRC and answers `K`, `E` (bad checksum), `F` (READ
//!    failed) or `T` (no room in its own staging: the server then streams the payload).
//!
//! Memory: the engine's KV pool is candle tensors whose storage candle owns and may move;
//! verbs needs memory pinned and registered for as long as remote reads may touch it. So each
//! node registers one staging buffer at start; the server copies an export into a free range
//! of it, the puller READs into a range of its own and copies out for the engine's import.

// Staging ranges are raw memory a NIC writes into: reading them is unsafe (see SAFETY).
#![allow(unsafe_code)]

mod verbs;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{client, server, KvBlob, KvExpect, KvSource, KvxError, Outcome, MAGIC_RDMA};
use verbs::{Device, Qp, QpEndpoint, Staging, MAX_OUTSTANDING, MAX_READ};

/// How long the server waits for the puller's verdict after an offer: READs of a large
/// export over a slow link take long, and a puller that gives up closes the connection.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    /// No usable device (none, no kernel support, port down, named one absent).
    #[error("{0}")]
    NoDevice(String),
    #[error("verbs: {0}")]
    Verbs(String),
    #[error("RDMA protocol: {0}")]
    Protocol(String),
}

/// The names of this machine's RDMA devices; empty when the kernel has no RDMA support
/// (libibverbs answers ENOSYS then, which means "none" here, not an error).
pub fn list_devices() -> Result<Vec<String>, RdmaError> {
    match ibverbs::devices() {
        Ok(list) => Ok(list
            .iter()
            .filter_map(|d| d.name().map(|n| n.to_string_lossy().into_owned()))
            .collect()),
        // ENOSYS: std maps it to `Unsupported`.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(Vec::new()),
        Err(e) => Err(RdmaError::NoDevice(format!(
            "cannot list RDMA devices: {e}"
        ))),
    }
}

/// Deliberate faults for tests of the fallback paths; never set outside tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Servers in this process offer a wrong rkey: the puller's READs fail.
    WrongRkey,
    /// Servers in this process destroy the offered queue pair and drop the connection
    /// right after the offer, as a server that dies while the puller reads.
    ServerGone,
}

static FAULT: AtomicU8 = AtomicU8::new(0);

static PULLED: AtomicU64 = AtomicU64::new(0);
static SERVED: AtomicU64 = AtomicU64::new(0);

/// Transfers this process completed with RDMA READs: (pulled, served). Counts only
/// payloads that moved by READ, not TCP fallbacks, so tests can tell which path ran.
pub fn transfer_counts() -> (u64, u64) {
    (
        PULLED.load(Ordering::Relaxed),
        SERVED.load(Ordering::Relaxed),
    )
}

/// Sets the fault servers in this process inject (tests only).
pub fn inject_fault(f: Fault) {
    FAULT.store(
        match f {
            Fault::None => 0,
            Fault::WrongRkey => 1,
            Fault::ServerGone => 2,
        },
        Ordering::SeqCst,
    );
}

fn fault() -> Fault {
    match FAULT.load(Ordering::SeqCst) {
        1 => Fault::WrongRkey,
        2 => Fault::ServerGone,
        _ => Fault::None,
    }
}

/// One opened RDMA device and its registered staging buffer, shared by the server and the
/// puller of a worker.
pub struct RdmaNode {
    dev: Arc<Device>,
    staging: Staging,
    /// Ranges in use, (offset, length), sorted by offset.
    used: Mutex<Vec<(usize, usize)>>,
}

impl std::fmt::Debug for RdmaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaNode")
            .field("device", &self.dev.name)
            .field("staging_bytes", &self.staging.len())
            .finish()
    }
}

impl RdmaNode {
    /// Opens `device` (or the first device that opens with an active port) and registers
    /// `staging_bytes` of staging memory.
    pub fn open(device: Option<&str>, staging_bytes: usize) -> Result<Arc<RdmaNode>, RdmaError> {
        let dev = match device {
            Some(name) => Device::open(name)?,
            None => {
                let names = list_devices()?;
                let mut last = RdmaError::NoDevice("no RDMA devices".into());
                let mut found = None;
                for n in &names {
                    match Device::open(n) {
                        Ok(d) => {
                            found = Some(d);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                found.ok_or(last)?
            }
        };
        let staging = Staging::new(dev.clone(), staging_bytes)?;
        Ok(Arc::new(RdmaNode {
            dev,
            staging,
            used: Mutex::new(Vec::new()),
        }))
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.dev.name
    }

    /// Registered staging bytes.
    pub fn staging_bytes(&self) -> usize {
        self.staging.len()
    }

    /// Staging bytes held by transfers in progress (0 when none is).
    pub fn staging_in_use(&self) -> usize {
        self.used
            .lock()
            .map(|u| u.iter().map(|r| r.1).sum())
            .unwrap_or(0)
    }

    /// A free range of `len` bytes (64-byte aligned), first fit.
    fn alloc(self: &Arc<Self>, len: usize) -> Option<StagingRange> {
        let want = len.max(1).checked_add(63)? & !63;
        let mut used = self.used.lock().ok()?;
        let mut at = 0usize;
        let mut pos = used.len();
        for (i, &(off, l)) in used.iter().enumerate() {
            if off - at >= want {
                pos = i;
                break;
            }
            at = off + l;
        }
        if pos == used.len() && self.staging.len().saturating_sub(at) < want {
            return None;
        }
        used.insert(pos, (at, want));
        Some(StagingRange {
            node: self.clone(),
            off: at,
            len,
        })
    }
}

/// A range of a node's staging buffer held by one transfer; freed on drop.
struct StagingRange {
    node: Arc<RdmaNode>,
    off: usize,
    len: usize,
}

impl Drop for StagingRange {
    fn drop(&mut self) {
        if let Ok(mut u) = self.node.used.lock() {
            u.retain(|r| r.0 != self.off);
        }
    }
}

/// The server's answer after a matching header.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    /// The payload follows on the TCP connection instead.
    tcp: bool,
    endpoint: Option<QpEndpoint>,
    addr: u64,
    rkey: u32,
    len: u64,
    crc: u32,
}

fn rdma_err(e: RdmaError) -> KvxError {
    KvxError::Rdma(e.to_string())
}

// ---------------------------------------------------------------- server side

/// Reports a fetched transfer's end exactly once, also when the serving task is cancelled
/// (runtime shutdown): whoever pinned the blocks must hear of it.
struct Finish<'a> {
    source: &'a dyn KvSource,
    id: &'a str,
    done: bool,
}

impl Finish<'_> {
    fn report(mut self, outcome: Outcome) {
        self.done = true;
        self.source.finished(self.id, outcome);
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.source
                .finished(self.id, Outcome::Aborted("the transfer was cut off".into()));
        }
    }
}

/// Copies the export into staging and prepares a QP towards the puller.
fn stage(
    node: &Arc<RdmaNode>,
    data: &[u8],
    remote: &QpEndpoint,
) -> Result<(StagingRange, Qp, u32), RdmaError> {
    let range = node
        .alloc(data.len())
        .ok_or_else(|| RdmaError::Verbs("staging memory is full".into()))?;
    // SAFETY: the range is ours alone, and no QP has been given its address yet.
    let dst = unsafe { node.staging.slice_mut(range.off, range.len) };
    dst.copy_from_slice(data);
    let crc = crc32fast::hash(dst);
    let qp = Qp::new(node.dev.clone())?;
    qp.connect(remote)?;
    Ok((range, qp, crc))
}

/// Answers one RDMA request (its id, expectation and the puller's endpoint already read);
/// `Ok(true)` when the connection is clean for another request.
pub(crate) async fn serve(
    s: &mut TcpStream,
    source: &dyn KvSource,
    node: &Arc<RdmaNode>,
    id: &str,
    expect: &KvExpect,
    endpoint: &[u8],
) -> std::io::Result<bool> {
    let Ok(remote) = serde_json::from_slice::<QpEndpoint>(endpoint) else {
        tracing::warn!("KV transfer: unreadable RDMA endpoint; closing");
        return Ok(false);
    };
    let blob = match source.fetch(id).await {
        Ok(b) => b,
        Err(msg) => {
            server::write_status(s, 1, &msg).await?;
            return Ok(true);
        }
    };
    let fin = Finish {
        source,
        id,
        done: false,
    };
    if let Some((outcome, clean)) = server::send_header(s, &blob, expect).await? {
        fin.report(outcome);
        return Ok(clean);
    }
    // The copy, checksum and QP set-up block: off the async threads.
    let staged = {
        let (node, data) = (node.clone(), blob.data.clone());
        tokio::task::spawn_blocking(move || stage(&node, &data, &remote))
            .await
            .unwrap_or_else(|e| Err(RdmaError::Verbs(format!("the staging task failed: {e}"))))
    };
    let (range, qp, crc) = match staged {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "KV transfer: cannot serve over RDMA; streaming over TCP");
            write_offer(
                s,
                &Offer {
                    tcp: true,
                    endpoint: None,
                    addr: 0,
                    rkey: 0,
                    len: blob.data.len() as u64,
                    crc: 0,
                },
            )
            .await?;
            let (outcome, clean) = server::stream_payload(s, &blob).await?;
            fin.report(outcome);
            return Ok(clean);
        }
    };
    let mut offer = Offer {
        tcp: false,
        endpoint: Some(qp.endpoint()),
        addr: node.staging.addr(range.off),
        rkey: node.staging.rkey(),
        len: blob.data.len() as u64,
        crc,
    };
    match fault() {
        Fault::None => {}
        Fault::WrongRkey => offer.rkey ^= 0x5a5a_5a5a,
        Fault::ServerGone => {
            // The QP the offer names is destroyed first, so no READ can ever succeed.
            drop(qp);
            write_offer(s, &offer).await?;
            drop(range);
            fin.report(Outcome::Aborted(
                "fault injected: the server went away after its offer".into(),
            ));
            return Ok(false);
        }
    }
    write_offer(s, &offer).await?;
    let verdict = tokio::time::timeout(VERDICT_TIMEOUT, s.read_u8()).await;
    // The QP goes before the range it exposes is reused.
    drop(qp);
    drop(range);
    let (outcome, clean) = match verdict {
        Ok(Ok(b'K')) => {
            SERVED.fetch_add(1, Ordering::Relaxed);
            (
                Outcome::Delivered {
                    bytes: blob.data.len(),
                },
                true,
            )
        }
        Ok(Ok(b'E')) => (
            Outcome::Aborted("the puller saw a bad checksum".into()),
            false,
        ),
        Ok(Ok(b'F')) => (
            Outcome::Aborted("the puller's RDMA READ failed".into()),
            false,
        ),
        Ok(Ok(b'T')) => server::stream_payload(s, &blob).await?,
        Ok(Ok(other)) => (
            Outcome::Aborted(format!("unexpected verdict byte {other}")),
            false,
        ),
        Ok(Err(e)) => (Outcome::Aborted(format!("connection failed: {e}")), false),
        Err(_) => (Outcome::Aborted("no verdict from the puller".into()), false),
    };
    fin.report(outcome);
    Ok(clean)
}

async fn write_offer(s: &mut TcpStream, offer: &Offer) -> std::io::Result<()> {
    let j = serde_json::to_vec(offer).map_err(std::io::Error::other)?;
    let mut m = Vec::with_capacity(4 + j.len());
    m.extend_from_slice(&(j.len() as u32).to_be_bytes());
    m.extend_from_slice(&j);
    s.write_all(&m).await
}

// ---------------------------------------------------------------- puller side

/// Pulls `request_id` from `addr` with RDMA READs into `node`'s staging memory. A server
/// without RDMA, or one that cannot stage the export, sends it over TCP instead; a local
/// verbs failure before the request pulls over TCP. Bounded by `timeout` as a whole.
pub async fn pull(
    node: &Arc<RdmaNode>,
    addr: &str,
    request_id: &str,
    expect: &KvExpect,
    timeout: Duration,
) -> Result<KvBlob, KvxError> {
    let deadline = Instant::now() + timeout;
    tokio::time::timeout(
        timeout,
        pull_inner(node, addr, request_id, expect, deadline),
    )
    .await
    .map_err(|_| KvxError::Timeout(timeout))?
}

async fn pull_inner(
    node: &Arc<RdmaNode>,
    addr: &str,
    request_id: &str,
    expect: &KvExpect,
    deadline: Instant,
) -> Result<KvBlob, KvxError> {
    let qp = match Qp::new(node.dev.clone()) {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create an RDMA queue pair; pulling over TCP");
            return client::pull_inner(addr, request_id, expect).await;
        }
    };
    let ep = serde_json::to_vec(&qp.endpoint()).map_err(|e| KvxError::Protocol(e.to_string()))?;
    let mut req = client::request_bytes(MAGIC_RDMA, request_id, expect)?;
    req.extend_from_slice(&(ep.len() as u32).to_be_bytes());
    req.extend_from_slice(&ep);
    let (mut s, status) = client::send_request(addr, &req).await?;
    if status == 2 {
        // Refused (no RDMA there): the message, then a clean connection for a TCP pull.
        let msg = client::read_message(&mut s).await?;
        tracing::debug!(%addr, %msg, "KV server has no RDMA; pulling over TCP");
        client::give_back(addr, s);
        return client::pull_inner(addr, request_id, expect).await;
    }
    let header = match client::read_header(&mut s, status, request_id, expect).await {
        Ok(h) => h,
        Err(e) => {
            if client::left_clean(&e) {
                client::give_back(addr, s);
            }
            return Err(e);
        }
    };
    let len = s
        .read_u32()
        .await
        .map_err(|e| client::eof_as_truncated(e, "offer length"))? as usize;
    if len > client::MAX_HEADER {
        return Err(KvxError::Protocol(format!("a {len}-byte offer")));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| client::eof_as_truncated(e, "offer"))?;
    let offer: Offer =
        serde_json::from_slice(&buf).map_err(|e| KvxError::Protocol(format!("bad offer: {e}")))?;
    if offer.len != header.payload_len {
        return Err(KvxError::Protocol(format!(
            "the offer has {} bytes, the header {}",
            offer.len, header.payload_len
        )));
    }
    if offer.tcp {
        return finish_tcp(addr, s, header).await;
    }
    let (Some(remote), Ok(plen)) = (offer.endpoint.clone(), usize::try_from(offer.len)) else {
        return Err(KvxError::Protocol(
            "an RDMA offer without an endpoint".into(),
        ));
    };
    let Some(range) = node.alloc(plen) else {
        tracing::debug!(
            bytes = plen,
            "RDMA staging full; asking for the payload over TCP"
        );
        s.get_mut().write_u8(b'T').await?;
        return finish_tcp(addr, s, header).await;
    };
    let node2 = node.clone();
    let cancel = Arc::new(AtomicBool::new(false));
    let cancel2 = cancel.clone();
    let mut task = tokio::task::spawn_blocking(move || {
        let r = read_all(
            &node2,
            &qp,
            &range,
            &remote,
            (offer.addr, offer.rkey),
            deadline,
            &cancel2,
        );
        // Destroying the QP ends all DMA into the range before anything reads it.
        drop(qp);
        r.map(|()| {
            // SAFETY: the range is ours and its QP is gone, so nothing writes into it.
            let data = unsafe { node2.staging.slice(range.off, range.len) };
            (crc32fast::hash(data), data.to_vec())
        })
    });
    // The server sends nothing while we READ: anything on the connection, above all its
    // end, means the server is gone, and its memory with it; stop instead of waiting for
    // the READs to time out.
    let joined = tokio::select! {
        r = &mut task => r,
        ended = s.read_u8() => {
            cancel.store(true, Ordering::SeqCst);
            tracing::debug!(?ended, "KV server connection ended during the RDMA READs");
            // Wait for the task: it owns the QP and the range the READs target.
            (&mut task).await
        }
    };
    let read = joined.map_err(|e| KvxError::Rdma(format!("the READ task failed: {e}")))?;
    match read {
        Err(e) => {
            let _ = s.get_mut().write_u8(b'F').await;
            Err(rdma_err(e))
        }
        Ok((computed, _)) if computed != offer.crc => {
            let _ = s.get_mut().write_u8(b'E').await;
            Err(KvxError::Checksum {
                got: offer.crc,
                computed,
            })
        }
        Ok((_, data)) => {
            s.get_mut().write_u8(b'K').await?;
            PULLED.fetch_add(1, Ordering::Relaxed);
            client::give_back(addr, s);
            Ok(KvBlob {
                header,
                data: data.into(),
            })
        }
    }
}

async fn finish_tcp(
    addr: &str,
    mut s: BufReader<TcpStream>,
    header: crate::KvLayoutHeader,
) -> Result<KvBlob, KvxError> {
    let data = client::read_payload(&mut s, &header).await?;
    client::give_back(addr, s);
    Ok(KvBlob {
        header,
        data: data.into(),
    })
}

/// Connects the QP and READs `range.len` bytes from `remote_addr` into the range: posts up
/// to `MAX_OUTSTANDING` READs at a time and polls until all complete, one fails, or the
/// deadline passes. Runs on a blocking thread (it busy-polls).
fn read_all(
    node: &RdmaNode,
    qp: &Qp,
    range: &StagingRange,
    remote: &QpEndpoint,
    (remote_addr, rkey): (u64, u32),
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<(), RdmaError> {
    qp.connect(remote)?;
    let reads: Vec<(usize, u64, u32)> = (0..range.len)
        .step_by(MAX_READ)
        .map(|o| {
            let l = (range.len - o).min(MAX_READ);
            (range.off + o, remote_addr + o as u64, l as u32)
        })
        .collect();
    let mut wc = vec![ibverbs_sys::ibv_wc::default(); MAX_OUTSTANDING];
    let (mut posted, mut done, mut idle) = (0usize, 0usize, 0u32);
    while done < reads.len() {
        let room = MAX_OUTSTANDING - (posted - done);
        let upto = (posted + room).min(reads.len());
        if upto > posted {
            // SAFETY: the staging buffer outlives the QP (the node is held by the caller),
            // and the range is not read until the QP is destroyed.
            unsafe {
                qp.post_reads(&node.staging, rkey, &reads[posted..upto], posted as u64)?;
            }
            posted = upto;
        }
        let n = qp.poll(&mut wc)?;
        for c in &wc[..n] {
            if let Some((status, vendor)) = c.error() {
                return Err(RdmaError::Verbs(format!(
                    "RDMA READ {} failed: status {status} (vendor error {vendor})",
                    c.wr_id()
                )));
            }
        }
        done += n;
        if n == 0 {
            if cancel.load(Ordering::SeqCst) {
                return Err(RdmaError::Verbs(format!(
                    "the server went away with {} of {} RDMA READs pending",
                    reads.len() - done,
                    reads.len()
                )));
            }
            if Instant::now() >= deadline {
                return Err(RdmaError::Verbs(format!(
                    "{} of {} RDMA READs still pending at the deadline",
                    reads.len() - done,
                    reads.len()
                )));
            }
            // Spin briefly for low latency, then sleep so a software RDMA provider (and the
            // rest of the machine) gets the CPU.
            idle += 1;
            if idle < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        } else {
            idle = 0;
        }
    }
    Ok(())
}
