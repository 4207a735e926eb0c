//! The worker side: one PUB socket (bound, or connected to a cache-manager's bound SUB), a
//! replay buffer, and a ROUTER socket serving it — vLLM's `ZmqEventPublisher`, as a tokio task.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use llmd_protocol::{encode_batch, KvEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zeromq::{
    PubSocket, RouterSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, ZmqMessage,
};

use crate::{bind_address, KvEventsError, END_SEQ};

/// How the PUB socket reaches its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// Listen on the endpoint; subscribers connect (vLLM's default, `tcp://*:5557`).
    Bind,
    /// Connect to a subscriber's bound endpoint (llm-d: workers connect to the
    /// cache-manager), reconnecting whenever the connection drops.
    Connect,
}

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// `tcp://host:port`; `tcp://*:port` binds every interface.
    pub endpoint: String,
    pub mode: SocketMode,
    /// The topic frame of every message, usually [`crate::topic`].
    pub topic: String,
    /// Where to bind the ROUTER socket that serves missed batches; none disables replay.
    pub replay_endpoint: Option<String>,
    /// How many of the latest batches the replay socket can serve (vLLM: 10 000).
    pub buffer_steps: usize,
    /// Written into every batch; vLLM always stamps its rank (0 without data parallelism).
    pub data_parallel_rank: Option<i64>,
    /// Pause between connection attempts in [`SocketMode::Connect`].
    pub reconnect_interval: Duration,
    /// How long the task waits after its last batch before closing the sockets, so that
    /// batches already handed to ZMQ reach the wire (ZMQ's "linger").
    pub linger: Duration,
}

impl PublisherConfig {
    pub fn new(endpoint: impl Into<String>, mode: SocketMode, topic: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            mode,
            topic: topic.into(),
            replay_endpoint: None,
            buffer_steps: 10_000,
            data_parallel_rank: Some(0),
            reconnect_interval: Duration::from_secs(1),
            linger: Duration::from_millis(100),
        }
    }

    pub fn with_replay(mut self, endpoint: impl Into<String>) -> Self {
        self.replay_endpoint = Some(endpoint.into());
        self
    }
}

/// Counters returned when the publisher stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Batches numbered and buffered (the next sequence number).
    pub batches: u64,
    /// Batches not handed to ZMQ: sent while a connect-mode socket was (re)connecting, or
    /// refused by the socket. (A bound PUB with no subscribers drops silently, as in ZMQ.)
    pub unsent: u64,
    /// Replay requests answered.
    pub replays: u64,
}

pub struct Publisher;

/// A running publisher. Dropping the handle leaves the task running until the event
/// channel closes.
pub struct PublisherHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<PublisherStats>,
    endpoint: Option<String>,
    replay_endpoint: Option<String>,
}

impl PublisherHandle {
    /// The PUB socket's bound endpoint with its actual port (bind mode only).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The replay socket's bound endpoint with its actual port.
    pub fn replay_endpoint(&self) -> Option<&str> {
        self.replay_endpoint.as_deref()
    }

    /// Publishes what is already queued in the channel, then closes the sockets.
    pub async fn shutdown(self) -> Result<PublisherStats, KvEventsError> {
        // An error means the task has already ended; joining it is all that is left.
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Waits for the task to end (the event channel closed, or a shutdown).
    pub async fn join(self) -> Result<PublisherStats, KvEventsError> {
        self.task
            .await
            .map_err(|e| KvEventsError::Task(e.to_string()))
    }
}

type Buffer = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

impl Publisher {
    /// Binds what must be bound (errors are returned here, not later), then runs until
    /// `events` closes or [`PublisherHandle::shutdown`]. Each received `Vec` becomes one
    /// batch with the next sequence number. Must be called within a tokio runtime.
    pub async fn spawn(
        config: PublisherConfig,
        events: mpsc::UnboundedReceiver<Vec<KvEvent>>,
    ) -> Result<PublisherHandle, KvEventsError> {
        let (stop, stop_rx) = watch::channel(false);
        // The replay task has its own stop: it must also end when the channel closes.
        let (replay_stop, replay_stop_rx) = watch::channel(false);
        let buffer: Buffer = Arc::new(Mutex::new(VecDeque::new()));

        let mut replay_endpoint = None;
        let mut replay_task = None;
        if let Some(ep) = &config.replay_endpoint {
            let mut router = RouterSocket::new();
            let bound =
                router
                    .bind(&bind_address(ep))
                    .await
                    .map_err(|source| KvEventsError::Socket {
                        op: "bind replay socket",
                        endpoint: ep.clone(),
                        source,
                    })?;
            replay_endpoint = Some(bound.to_string());
            replay_task = Some(tokio::spawn(serve_replay(
                router,
                buffer.clone(),
                replay_stop_rx,
            )));
        }

        let mut endpoint = None;
        let link = match config.mode {
            SocketMode::Bind => {
                let mut socket = PubSocket::new();
                let bound =
                    socket
                        .bind(&bind_address(&config.endpoint))
                        .await
                        .map_err(|source| KvEventsError::Socket {
                            op: "bind",
                            endpoint: config.endpoint.clone(),
                            source,
                        })?;
                endpoint = Some(bound.to_string());
                Link::Up(socket, None)
            }
            SocketMode::Connect => Link::Connecting(spawn_connect(
                config.endpoint.clone(),
                config.reconnect_interval,
            )),
        };
        tracing::info!(
            topic = %config.topic,
            endpoint = %config.endpoint,
            mode = ?config.mode,
            replay = ?replay_endpoint,
            "KV event publisher started"
        );

        let task = tokio::spawn(
            Running {
                topic: Bytes::from(config.topic.clone().into_bytes()),
                config,
                buffer,
                link,
                stats: PublisherStats::default(),
            }
            .run(events, stop_rx, replay_task.map(|task| (task, replay_stop))),
        );
        Ok(PublisherHandle {
            stop,
            task,
            endpoint,
            replay_endpoint,
        })
    }
}

type Monitor = futures_util::stream::BoxStream<'static, SocketEvent>;

enum Link {
    /// A socket, and in connect mode the monitor that reports its peer leaving.
    Up(PubSocket, Option<Monitor>),
    Connecting(JoinHandle<(PubSocket, Monitor)>),
}

struct Running {
    config: PublisherConfig,
    topic: Bytes,
    buffer: Buffer,
    link: Link,
    stats: PublisherStats,
}

impl Running {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Vec<KvEvent>>,
        mut stop: watch::Receiver<bool>,
        replay: Option<(JoinHandle<u64>, watch::Sender<bool>)>,
    ) -> PublisherStats {
        // False once the handle is dropped without a shutdown: then only the channel's
        // closing ends the task.
        let mut stoppable = true;
        loop {
            tokio::select! {
                // Batches first: a stop request publishes what is already queued below.
                biased;
                batch = events.recv() => match batch {
                    Some(batch) => self.publish(batch).await,
                    None => break,
                },
                changed = stop.changed(), if stoppable => {
                    if changed.is_err() {
                        stoppable = false;
                        continue;
                    }
                    while let Ok(batch) = events.try_recv() {
                        self.publish(batch).await;
                    }
                    break;
                }
                next = link_change(&mut self.link) => {
                    self.link = match next {
                        Some(up) => {
                            tracing::info!(endpoint = %self.config.endpoint, "KV event publisher connected");
                            up
                        }
                        None => {
                            tracing::warn!(endpoint = %self.config.endpoint, "KV event subscriber went away; reconnecting");
                            Link::Connecting(spawn_connect(
                                self.config.endpoint.clone(),
                                self.config.reconnect_interval,
                            ))
                        }
                    };
                }
            }
        }
        // Let the socket flush what it has queued before it is dropped.
        tokio::time::sleep(self.config.linger).await;
        if let Link::Connecting(task) = &self.link {
            task.abort();
        }
        if let Some((mut task, stop)) = replay {
            let _ = stop.send(true);
            // A reply stuck on a client that stopped reading must not hold shutdown up.
            match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
                Ok(Ok(n)) => self.stats.replays = n,
                Ok(Err(_)) => {}
                Err(_) => task.abort(),
            }
        }
        tracing::info!(topic = %self.config.topic, stats = ?self.stats, "KV event publisher stopped");
        self.stats
    }

    async fn publish(&mut self, events: Vec<KvEvent>) {
        let seq = self.stats.batches;
        self.stats.batches += 1;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let payload = Bytes::from(encode_batch(ts, &events, self.config.data_parallel_rank));
        let sent = match &mut self.link {
            Link::Up(socket, _) => {
                let frames = vec![
                    self.topic.clone(),
                    Bytes::copy_from_slice(&seq.to_be_bytes()),
                    payload.clone(),
                ];
                match ZmqMessage::try_from(frames) {
                    Ok(message) => match socket.send(message).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(seq, error = %e, "KV event batch not sent");
                            false
                        }
                    },
                    Err(_) => false,
                }
            }
            Link::Connecting(_) => false,
        };
        if !sent {
            self.stats.unsent += 1;
        }
        // Buffered whether or not it went out: a subscriber that missed it can replay it.
        if self.config.buffer_steps > 0 {
            let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            if buffer.len() == self.config.buffer_steps {
                buffer.pop_front();
            }
            buffer.push_back((seq, payload));
        }
    }
}

/// Resolves when the connect-mode link changes: `Some` with the socket once a connection
/// attempt succeeds, `None` when the connected peer goes away (or a connect task died).
/// Never resolves for a bound socket.
async fn link_change(link: &mut Link) -> Option<Link> {
    match link {
        Link::Connecting(task) => match task.await {
            Ok((socket, monitor)) => Some(Link::Up(socket, Some(monitor))),
            // The connect task only ends with a socket; if it panicked, start over rather
            // than stay silent forever.
            Err(e) => {
                tracing::error!(error = %e, "KV event connect task failed");
                None
            }
        },
        Link::Up(_, Some(monitor)) => loop {
            match monitor.next().await {
                Some(SocketEvent::Disconnected(_)) | None => return None,
                Some(_) => {}
            }
        },
        Link::Up(_, None) => std::future::pending().await,
    }
}

/// Connects a fresh PUB socket, retrying until it succeeds. A fresh socket per attempt,
/// because the `zeromq` crate's PUB does not reconnect by itself.
fn spawn_connect(endpoint: String, interval: Duration) -> JoinHandle<(PubSocket, Monitor)> {
    tokio::spawn(async move {
        let mut attempts = 0u64;
        loop {
            let mut options = SocketOptions::default();
            options.connect_timeout(interval.max(Duration::from_millis(500)));
            let mut socket = PubSocket::with_options(options);
            // Monitor before connecting, so a disconnect right after is not missed.
            let monitor: Monitor = socket.monitor().boxed();
            match socket.connect(&endpoint).await {
                Ok(()) => return (socket, monitor),
                Err(e) => {
                    attempts += 1;
                    // The first failure is news; repeats while the peer is down are not.
                    if attempts == 1 {
                        tracing::warn!(%endpoint, error = %e, "cannot connect KV event publisher; retrying");
                    } else {
                        tracing::debug!(%endpoint, error = %e, attempts, "KV event publisher still connecting");
                    }
                    tokio::time::sleep(interval).await;
                }
            }
        }
    })
}

/// Answers replay requests from the buffer until stopped; returns how many it answered.
async fn serve_replay(
    mut router: RouterSocket,
    buffer: Buffer,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut served = 0;
    loop {
        let request = tokio::select! {
            _ = stop.changed() => break,
            request = router.recv() => request,
        };
        let frames = match request {
            Ok(message) => message.into_vec(),
            Err(e) => {
                tracing::debug!(error = %e, "replay socket receive error");
                // `NoMessage` can repeat while no peer is connected; do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // [identity, empty delimiter, start seq]: a REQ client adds the delimiter itself,
        // a DEALER client sends it. A DEALER that leaves it out gets replies without it.
        let (identity, delimiter, start) = match frames.as_slice() {
            [id, empty, start] if empty.is_empty() => (id.clone(), true, start),
            [id, start] => (id.clone(), false, start),
            _ => {
                tracing::warn!(frames = frames.len(), "invalid replay request");
                continue;
            }
        };
        // vLLM reads any length as a big-endian unsigned integer; 8 bytes is the norm.
        if start.len() > 8 {
            tracing::warn!(len = start.len(), "invalid replay start sequence");
            continue;
        }
        let start = start.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64);
        let batches: Vec<(u64, Bytes)> = buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(seq, _)| *seq >= start)
            .cloned()
            .collect();
        tracing::debug!(start, batches = batches.len(), "serving KV event replay");
        let replies = batches
            .into_iter()
            .map(|(seq, payload)| (Bytes::copy_from_slice(&seq.to_be_bytes()), payload))
            .chain([(Bytes::from_static(&END_SEQ), Bytes::new())]);
        for (seq, payload) in replies {
            let mut frames = vec![identity.clone()];
            if delimiter {
                frames.push(Bytes::new());
            }
            frames.extend([seq, payload]);
            let Ok(message) = ZmqMessage::try_from(frames) else {
                break;
            };
            if let Err(e) = router.send(message).await {
                tracing::warn!(error = %e, "replay client went away mid-reply");
                break;
            }
        }
        served += 1;
    }
    served
}
