//! cloudswarm's master: drives workers (cloudswarm's, or stock Locust
//! ones) over Locust's protocol instead of a local engine. It binds a
//! ROUTER, acks workers (only those presenting the token, when one is
//! set), answers heartbeats and tracks liveness (a worker silent for about
//! 4 s is missing and its users move to the others; the last one missing
//! stops the run), splits users across live workers as absolute per-class
//! targets, ramps at the hatch rate, and merges the workers' reports into
//! one [`Stats`]: exact histogram values from cloudswarm workers, Locust's
//! buckets from others. Bad frames are counted and dropped, never fatal.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rmpv::Value;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::wire::{self, Body, Incoming, Spawn, map};
use crate::engine::{MAX_RATE, MAX_USERS, RunState, distribute};
use crate::naming::RunId;
use crate::profile::Profile;
use crate::resources::{Kind, KindCounts};
use crate::stats::Stats;

/// A worker is missing after this many 1 s ticks without a heartbeat (as Locust).
const LIVENESS: i32 = 3;

/// Flags of a master (`run --master`, `serve --master`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MasterArgs {
    /// Drive workers (`cloudswarm worker`, or stock Locust workers) instead of a local engine
    #[arg(long)]
    pub master: bool,
    /// Address the master listens on for workers; anything but loopback must be firewalled to the workers
    #[arg(long, default_value = "127.0.0.1")]
    pub master_bind_host: String,
    /// Port the master listens on for workers
    #[arg(long, default_value_t = 5557)]
    pub master_bind_port: u16,
    /// Workers to wait for before a headless run starts
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub expect_workers: u64,
    /// Longest wait for --expect-workers (default: no limit)
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub expect_workers_max_wait: Option<Duration>,
    /// Only workers presenting this token may join (cloudswarm workers' --worker-token); unset, stock Locust workers can join too
    #[arg(long, env = "CLOUDSWARM_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
}

impl MasterArgs {
    /// Where and how the master listens.
    pub fn config(&self) -> MasterConfig {
        MasterConfig {
            bind_host: self.master_bind_host.clone(),
            bind_port: self.master_bind_port,
            token: self.worker_token.clone().filter(|t| !t.is_empty()),
        }
    }

    /// What to say about exposure: the protocol is unauthenticated and
    /// unencrypted, so a master off loopback must be firewalled.
    pub fn warnings(&self) -> Vec<String> {
        let loopback = self
            .master_bind_host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
            || self.master_bind_host == "localhost";
        let mut out = vec![];
        if !loopback {
            out.push(format!(
                "WARNING: the master listens on {}:{}: Locust's protocol is neither authenticated nor encrypted; allow only the workers to reach this port (firewall or security group)",
                self.master_bind_host, self.master_bind_port
            ));
            if self.worker_token.is_none() {
                out.push(
                    "WARNING: no --worker-token: any host that reaches the port can join as a worker"
                        .into(),
                );
            }
        }
        out
    }
}

/// Where and how the master listens.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub bind_host: String,
    pub bind_port: u16,
    /// Workers must present it (`cloudswarm_hello`) before `client_ready`.
    pub token: Option<String>,
}

/// One worker, as the Workers tab and the report show it (Locust's field names).
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub id: String,
    pub index: u64,
    pub state: String,
    pub user_count: u64,
    pub cpu_usage: f64,
    pub memory_usage: u64,
    /// Requests per second over its last report.
    pub rps: f64,
    pub num_requests: u64,
    pub num_failures: u64,
    /// Seconds since its last heartbeat.
    pub last_heartbeat_s: f64,
    pub missing: bool,
    /// True for a cloudswarm worker (exact histograms).
    pub exact: bool,
}

struct Node {
    index: u64,
    state: String,
    classes: Vec<(String, u64)>,
    cpu: f64,
    mem: u64,
    last_heartbeat: Instant,
    liveness: i32,
    missing: bool,
    exact: bool,
    requests: u64,
    failures: u64,
    rps: f64,
    last_report: Instant,
    /// Its run's resources, and what its clean-up left.
    held: wire::Holdings,
    /// Said `client_stopped` (or `client_ready`) since the last stop.
    stopped: bool,
    /// What this worker was last told to run (per class, profile order).
    assigned: Vec<u64>,
    /// It was given users in the current run.
    ran: bool,
    /// It reported figures of the current run (a cloudswarm worker: a
    /// stock one says no run id).
    reported_run: bool,
    /// The arrival rates it was last told (its share of the open classes').
    rates: Vec<(String, f64)>,
    /// Its ZeroMQ identity, and the answer to its heartbeats, ready to send.
    identity: bytes::Bytes,
    heartbeat_reply: bytes::Bytes,
}

struct Inner {
    nodes: BTreeMap<String, Node>,
    indexes: HashMap<String, u64>,
    /// Nodes that presented the token.
    hello: std::collections::HashSet<String>,
    state: RunState,
    run_id: Option<RunId>,
    /// Users wanted in all, the hatch rate, and where the ramp is now.
    target: u64,
    rate: f64,
    ramp: f64,
    last_ts: f64,
    stop_timeout: f64,
    /// Frames dropped as malformed or unwanted.
    dropped: u64,
    exceptions: Vec<String>,
    /// Most users at once during the run.
    peak: u64,
    /// The run's profile, and its text (sent with each spawn).
    profile: Option<(Arc<Profile>, Arc<str>)>,
    /// Refusals logged so far (the rest are only counted).
    refusals_logged: u32,
    /// The (run id, profile) whose info gauge is 1.
    info: Option<(String, String)>,
    /// The open classes' arrival rate in all (per second, split between
    /// them as their profile rates are); None: the profile's rates.
    arrival: Option<f64>,
    /// The worker (by index) whose clean-up also took what the run's
    /// missing workers (by index) made, by the run's tag and marker.
    sweep: Option<(u64, Vec<u64>)>,
}

/// The master of a distributed run.
pub struct Master {
    /// The current run's figures (a new [`Stats`] per run).
    stats: Mutex<Stats>,
    endpoint: String,
    token: Option<String>,
    inner: Mutex<Inner>,
    /// Frames to send: (identity, payload).
    out: mpsc::Sender<(bytes::Bytes, bytes::Bytes)>,
    /// Wakes whoever waits for workers to join or stop.
    changed: Notify,
    pub started: Instant,
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Each class's arrival rate in all (per second, profile order; None for a
/// closed class): `total` split between the open classes as their profile
/// rates are, or the profile's rates when there is no `total`.
fn class_rates(profile: &Profile, total: Option<f64>) -> Vec<Option<f64>> {
    let base: f64 = profile
        .users
        .iter()
        .filter_map(|u| Some(u.arrival.as_ref()?.rate))
        .sum();
    profile
        .users
        .iter()
        .map(|u| {
            let r = u.arrival.as_ref()?.rate;
            Some(match total {
                Some(t) if base > 0.0 => t * r / base,
                _ => r,
            })
        })
        .collect()
}

/// A worker's share of each open class's rate: as its share of the class's
/// users (a worker with none of them gets no rate: it has no arrivals).
fn worker_rates(
    profile: &Profile,
    rates: &[Option<f64>],
    classes: &[u64],
    share: &[u64],
) -> Vec<(String, f64)> {
    profile
        .users
        .iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let (r, all, mine) = (rates.get(i).copied()??, *classes.get(i)?, *share.get(i)?);
            (mine > 0 && all > 0).then(|| (u.name.clone(), r * mine as f64 / all as f64))
        })
        .collect()
}

/// Users dealt round-robin to `workers`, class after class with the deal
/// going on where the last class stopped: each worker's total differs from
/// another's by at most one, and so does each class's share.
pub fn split(classes: &[u64], workers: usize) -> Vec<Vec<u64>> {
    let mut out = vec![vec![0u64; classes.len()]; workers];
    if workers == 0 {
        return out;
    }
    let mut next = 0usize;
    for (c, &n) in classes.iter().enumerate() {
        let w = workers as u64;
        // n / w each, then the remainder one by one from where the deal is.
        for share in out.iter_mut() {
            share[c] = n / w;
        }
        for _ in 0..(n % w) {
            out[next][c] += 1;
            next = (next + 1) % workers;
        }
    }
    out
}

impl Master {
    /// Binds the ROUTER and starts serving workers.
    pub async fn bind(cfg: MasterConfig) -> anyhow::Result<Arc<Master>> {
        let mut socket = RouterSocket::new();
        let host = if cfg.bind_host.contains(':') && !cfg.bind_host.starts_with('[') {
            format!("[{}]", cfg.bind_host)
        } else {
            cfg.bind_host.clone()
        };
        let ep = socket
            .bind(&format!("tcp://{host}:{}", cfg.bind_port))
            .await
            .map_err(|e| {
                crate::error::config_err(format!(
                    "--master-bind {}:{}: {e}",
                    cfg.bind_host, cfg.bind_port
                ))
            })?;
        let (mut tx, mut rx) = socket.split();
        let mut tx_now = tx.clone();
        let (out, mut out_rx) = mpsc::channel::<(bytes::Bytes, bytes::Bytes)>(4096);
        let master = Arc::new(Master {
            stats: Mutex::new(Stats::new()),
            endpoint: ep.to_string(),
            token: cfg.token,
            inner: Mutex::new(Inner {
                nodes: BTreeMap::new(),
                indexes: HashMap::new(),
                hello: Default::default(),
                state: RunState::Ready,
                run_id: None,
                target: 0,
                rate: 1.0,
                ramp: 0.0,
                last_ts: 0.0,
                stop_timeout: 0.0,
                dropped: 0,
                exceptions: vec![],
                peak: 0,
                profile: None,
                refusals_logged: 0,
                info: None,
                arrival: None,
                sweep: None,
            }),
            out,
            changed: Notify::new(),
            started: Instant::now(),
        });
        // One sender: a worker whose queue is full delays others by at most 200 ms.
        tokio::spawn(async move {
            while let Some((to, payload)) = out_rx.recv().await {
                let mut frame = ZmqMessage::from(payload);
                frame.push_front(to);
                let _ = tokio::time::timeout(Duration::from_millis(200), tx.send(frame)).await;
            }
        });
        let me = Arc::downgrade(&master);
        tokio::spawn(async move {
            loop {
                let got = rx.recv().await;
                let Some(m) = me.upgrade() else { break };
                match got {
                    Ok(frames) => {
                        let Some((to, payload)) = m.on_frames(frames.into_vec()) else {
                            continue;
                        };
                        // A heartbeat's answer goes out at once when nothing
                        // is queued before it (the peer's own queue nearly
                        // always takes it); else after the queue, in order.
                        if m.out.capacity() == m.out.max_capacity() {
                            let mut frame = ZmqMessage::from(payload.clone());
                            frame.push_front(to.clone());
                            if tx_now.send(frame).now_or_never().is_some() {
                                continue;
                            }
                        }
                        m.send_frame(to, payload);
                    }
                    Err(e) => {
                        tracing::debug!("master: receive error: {e}");
                        m.lock().dropped += 1;
                    }
                }
            }
        });
        let me = Arc::downgrade(&master);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(m) = me.upgrade() else { break };
                m.tick();
            }
        });
        Ok(master)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current run's figures.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the Prometheus gauge of workers by state.
    pub fn observe(&self) {
        let mut by: BTreeMap<&str, u64> = [
            "ready", "spawning", "running", "stopping", "cleanup", "stopped", "missing",
        ]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
        for w in self.workers() {
            let st = if w.missing {
                "missing"
            } else {
                w.state.as_str()
            };
            if let Some(n) = by.get_mut(st) {
                *n += 1;
            }
        }
        for (state, n) in by {
            metrics::gauge!("cloudswarm_workers", "state" => state).set(n as f64);
        }
        // What an engine's gauges say, summed over the workers.
        let (profile, run_id) = {
            let g = self.lock();
            (g.profile.clone(), g.run_id.clone())
        };
        let Some((profile, _)) = profile else { return };
        for (class, n) in self.user_counts(&profile) {
            metrics::gauge!("cloudswarm_users", "class" => class).set(n as f64);
        }
        let (target, rate) = self.target();
        metrics::gauge!("cloudswarm_target_users").set(target as f64);
        metrics::gauge!("cloudswarm_spawn_rate").set(rate);
        let res = self.resources();
        let creating = self.creating();
        for k in Kind::ALL {
            let c = res.get(&k).copied().unwrap_or_default();
            let kind = k.as_str().replace(' ', "_");
            metrics::gauge!("cloudswarm_resources", "kind" => kind.clone(), "state" => "alive")
                .set(c.alive as f64);
            metrics::gauge!("cloudswarm_resources", "kind" => kind.clone(), "state" => "creating")
                .set(creating.get(&k).copied().unwrap_or(0) as f64);
            metrics::counter!("cloudswarm_resources_created_total", "kind" => kind.clone())
                .absolute(c.created);
            metrics::counter!("cloudswarm_resources_deleted_total", "kind" => kind)
                .absolute(c.deleted);
        }
        if let Some(r) = run_id {
            let now = (r.to_string(), profile.name.clone());
            let before = self.lock().info.replace(now.clone());
            if let Some(old) = before.filter(|b| *b != now) {
                crate::metrics::sink::run_gauges(&old.0, &old.1, false, false);
            }
            let active = matches!(
                self.state(),
                RunState::Hatching | RunState::Running | RunState::Stopping
            );
            crate::metrics::sink::run_gauges(&now.0, &now.1, true, active);
        }
    }

    /// Where workers connect (`tcp://host:port`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn send(&self, to: &str, kind: &str, data: Value) {
        let payload = wire::envelope(kind, &data, to);
        self.send_frame(
            bytes::Bytes::copy_from_slice(to.as_bytes()),
            bytes::Bytes::from(payload),
        );
    }

    fn send_frame(&self, to: bytes::Bytes, payload: bytes::Bytes) {
        // A full queue drops the message rather than stall the master.
        let _ = self.out.try_send((to, payload));
    }

    /// Frames that were dropped as malformed or unwanted.
    pub fn dropped_frames(&self) -> u64 {
        self.lock().dropped
    }

    /// The last exceptions workers reported.
    pub fn exceptions(&self) -> Vec<String> {
        self.lock().exceptions.clone()
    }

    /// Handles a frame; answers the reply to send, if any (to a heartbeat:
    /// (identity, payload)).
    fn on_frames(&self, frames: Vec<bytes::Bytes>) -> Option<(bytes::Bytes, bytes::Bytes)> {
        let [identity, payload] = frames.as_slice() else {
            self.lock().dropped += 1;
            return None;
        };
        let m = match Incoming::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("master: dropped a frame: {e}");
                self.lock().dropped += 1;
                return None;
            }
        };
        // The envelope's node id must be the sender's own identity.
        if identity.as_ref() != m.node_id.as_bytes() {
            self.lock().dropped += 1;
            return None;
        }
        let mut reply = None;
        self.on_message(identity, m, &mut reply);
        reply
    }

    fn on_message(
        &self,
        identity: &bytes::Bytes,
        m: Incoming<'_>,
        reply: &mut Option<(bytes::Bytes, bytes::Bytes)>,
    ) {
        let id = m.node_id;
        let nil = Value::Nil;
        let data = match &m.body {
            Body::Other(v) => v,
            _ => &nil,
        };
        let mut g = self.lock();
        let known = g.nodes.contains_key(id);
        match m.kind {
            "cloudswarm_hello" => {
                let token = wire::get(data, "token").and_then(Value::as_str);
                match (&self.token, token) {
                    (Some(want), Some(t)) if same(want, t) => {
                        g.hello.insert(id.to_string());
                    }
                    _ => g.dropped += 1,
                }
            }
            "client_ready" => {
                if self.token.is_some() && !g.hello.contains(id) {
                    g.dropped += 1;
                    g.refusals_logged += 1;
                    if g.refusals_logged <= 10 {
                        eprintln!(
                            "master: refused worker {}: it did not present the worker token{}",
                            id.escape_debug(),
                            if g.refusals_logged == 10 {
                                " (further refusals are only counted)"
                            } else {
                                ""
                            }
                        );
                    }
                    return;
                }
                if matches!(data, Value::Nil) || data.as_str() == Some("") {
                    g.dropped += 1;
                    return;
                }
                if g.nodes.len() >= 10_000 && !known {
                    g.dropped += 1;
                    return;
                }
                let next = g.indexes.len() as u64;
                let index = *g.indexes.entry(id.to_string()).or_insert(next);
                let classes = g.profile.as_ref().map_or(0, |p| p.0.users.len());
                match g.nodes.get_mut(id) {
                    // Ready again after a stop (or a reconnect): its figures stay.
                    Some(n) => {
                        n.state = "ready".into();
                        n.stopped = true;
                        n.missing = false;
                        n.liveness = LIVENESS;
                        n.last_heartbeat = Instant::now();
                        n.assigned = vec![0; classes];
                    }
                    None => {
                        g.nodes.insert(
                            id.to_string(),
                            Node {
                                index,
                                state: "ready".into(),
                                classes: vec![],
                                cpu: 0.0,
                                mem: 0,
                                last_heartbeat: Instant::now(),
                                liveness: LIVENESS,
                                missing: false,
                                exact: true,
                                requests: 0,
                                failures: 0,
                                rps: 0.0,
                                last_report: Instant::now(),
                                held: Default::default(),
                                stopped: true,
                                assigned: vec![0; classes],
                                ran: false,
                                reported_run: false,
                                rates: vec![],
                                identity: identity.clone(),
                                heartbeat_reply: bytes::Bytes::from(wire::envelope(
                                    "heartbeat",
                                    &Value::Nil,
                                    id,
                                )),
                            },
                        );
                    }
                }
                self.send(id, "ack", map([("index", Value::from(index))]));
                eprintln!(
                    "master: worker {id} joined (index {index}); {} ready",
                    g.nodes.values().filter(|n| !n.missing).count()
                );
                if matches!(g.state, RunState::Hatching | RunState::Running) {
                    self.rebalance(&mut g);
                }
                self.changed.notify_waiters();
            }
            _ if !known => {
                g.dropped += 1;
                if matches!(m.kind, "spawning" | "spawning_complete") {
                    self.send(id, "quit", Value::Nil);
                }
            }
            "heartbeat" => {
                let Body::Heartbeat(h) = &m.body else {
                    return;
                };
                // Its first 20 characters.
                let state = match h.state.char_indices().nth(20) {
                    Some((cut, _)) => &h.state[..cut],
                    None => h.state,
                };
                let (cpu, mem) = (h.cpu, h.mem);
                let (healed, answer) = {
                    let n = g.nodes.get_mut(id).expect("known");
                    if n.state != state {
                        n.state = state.to_string();
                    }
                    if n.cpu <= 90.0 && cpu > 90.0 {
                        eprintln!(
                            "master: worker {id} uses {cpu:.0}% CPU: its figures may describe the load generator, not the cloud"
                        );
                    }
                    n.cpu = cpu;
                    n.mem = mem;
                    n.last_heartbeat = Instant::now();
                    n.liveness = LIVENESS;
                    let healed = n.missing;
                    n.missing = false;
                    (healed, (n.identity.clone(), n.heartbeat_reply.clone()))
                };
                *reply = Some(answer);
                if healed {
                    eprintln!("master: worker {id} is back");
                    if matches!(g.state, RunState::Hatching | RunState::Running) {
                        self.rebalance(&mut g);
                    }
                }
            }
            "stats" => match m.body {
                Body::Stats(mut r) => {
                    let same_run = !r.run_id.is_empty()
                        && g.run_id.as_ref().is_some_and(|c| c.as_str() == r.run_id);
                    let n = g.nodes.get_mut(id).expect("known");
                    let (requests, failures) = r.totals();
                    n.requests += requests;
                    n.failures += failures;
                    let dt = n.last_report.elapsed().as_secs_f64().max(0.5);
                    n.rps = requests as f64 / dt;
                    n.last_report = Instant::now();
                    n.exact = r.exact;
                    n.classes = std::mem::take(&mut r.classes);
                    if same_run {
                        n.held = std::mem::take(&mut r.held);
                        n.reported_run = true;
                    }
                    drop(g);
                    r.add_to(&mut self.stats().lock());
                }
                // A `stats` frame's body is its report (a bad one is refused whole).
                _ => g.dropped += 1,
            },
            "spawning" => {}
            "spawning_complete" => {
                if let Some(Value::Map(c)) = wire::get(data, "user_classes_count") {
                    let n = g.nodes.get_mut(id).expect("known");
                    n.classes = c
                        .iter()
                        .take(1000)
                        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), wire::count(v)?)))
                        .collect();
                }
            }
            "client_stopped" => {
                let n = g.nodes.get_mut(id).expect("known");
                n.stopped = true;
                n.classes.iter_mut().for_each(|c| c.1 = 0);
                self.changed.notify_waiters();
            }
            "exception" => {
                let msg = wire::get(data, "msg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(500)
                    .collect::<String>();
                eprintln!("master: worker {id} reports: {msg}");
                g.exceptions.push(format!("{id}: {msg}"));
                if g.exceptions.len() > 50 {
                    g.exceptions.remove(0);
                }
            }
            "quit" => {
                eprintln!("master: worker {id} quit");
                g.nodes.remove(id);
                if matches!(g.state, RunState::Hatching | RunState::Running) {
                    self.rebalance(&mut g);
                }
                self.changed.notify_waiters();
            }
            "logs" | "locustfile" => {}
            other => {
                tracing::debug!("master: unknown message type `{other}` from {id}");
                g.dropped += 1;
            }
        }
    }

    /// Once a second: liveness, the ramp, the history.
    fn tick(&self) {
        let mut g = self.lock();
        let mut lost = vec![];
        for (id, n) in g.nodes.iter_mut() {
            n.liveness -= 1;
            if n.liveness < 0 && !n.missing {
                n.missing = true;
                n.state = "missing".into();
                lost.push(id.clone());
            }
        }
        let running = matches!(g.state, RunState::Hatching | RunState::Running);
        for id in &lost {
            eprintln!(
                "master: worker {id} is missing (no heartbeat for {} s)",
                LIVENESS + 1
            );
        }
        if running {
            if !lost.is_empty() && g.nodes.values().all(|n| n.missing) {
                eprintln!("master: every worker is missing: stopping the run");
                g.state = RunState::Stopping;
                self.changed.notify_waiters();
            } else {
                let before = g.ramp;
                if g.ramp < g.target as f64 {
                    g.ramp = (g.ramp + g.rate).min(g.target as f64);
                } else {
                    g.ramp = g.target as f64;
                }
                if g.ramp >= g.target as f64 && g.state == RunState::Hatching {
                    g.state = RunState::Running;
                }
                if !lost.is_empty() || before.floor() != g.ramp.floor() {
                    self.rebalance(&mut g);
                }
            }
        }
        if !lost.is_empty() {
            self.changed.notify_waiters();
        }
        let users = Self::users_of(&g);
        g.peak = g.peak.max(users);
        drop(g);
        if running {
            self.stats().lock().history_tick(users);
        }
    }

    fn users_of(g: &Inner) -> u64 {
        g.nodes
            .values()
            .filter(|n| !n.missing)
            .map(|n| n.classes.iter().map(|c| c.1).sum::<u64>())
            .sum()
    }

    /// Tells each live worker its share of the users the ramp is at.
    fn rebalance(&self, g: &mut Inner) {
        let Some((profile, text)) = g.profile.clone() else {
            return;
        };
        let spec: Vec<(u32, Option<u32>)> = profile
            .users
            .iter()
            .map(|c| (c.weight, c.fixed_count))
            .collect();
        let classes = distribute(&spec, g.ramp.floor() as u64);
        let mut live: Vec<(u64, String)> = g
            .nodes
            .iter()
            .filter(|(_, n)| !n.missing)
            .map(|(id, n)| (n.index, id.clone()))
            .collect();
        live.sort();
        let live: Vec<String> = live.into_iter().map(|(_, id)| id).collect();
        let shares = split(&classes, live.len());
        let rates = class_rates(&profile, g.arrival);
        let ts = now_unix().max(g.last_ts + 1e-3);
        g.last_ts = ts;
        let run_id = g.run_id.clone();
        let stop_timeout = g.stop_timeout;
        let mut line = vec![];
        for (id, share) in live.iter().zip(shares) {
            let n = g.nodes.get_mut(id).expect("live");
            line.push(format!("{} {}", n.index, share.iter().sum::<u64>()));
            let arrival_rates = worker_rates(&profile, &rates, &classes, &share);
            if n.assigned == share && n.rates == arrival_rates && !n.stopped {
                continue;
            }
            n.assigned = share.clone();
            n.rates = arrival_rates.clone();
            n.stopped = false;
            n.ran = true;
            let spawn = Spawn {
                timestamp: ts,
                classes: profile
                    .users
                    .iter()
                    .zip(&share)
                    .map(|(u, c)| (u.name.clone(), *c))
                    .collect(),
                stop_timeout,
                run_id: run_id.clone(),
                profile: Some((profile.name.clone(), text.to_string())),
                arrival_rates,
            };
            self.send(id, "spawn", spawn.to_value());
        }
        eprintln!(
            "master: {} users over {} workers (index users): {}",
            g.ramp.floor(),
            live.len(),
            line.join(", ")
        );
    }

    /// Sets the open classes' arrival rate in all (per second), split
    /// between them as their profile rates are, and between the workers as
    /// their users are.
    pub fn set_arrival_rate(&self, total: f64) -> Result<(), String> {
        let mut g = self.lock();
        let Some((profile, _)) = g.profile.clone() else {
            return Err("no run".into());
        };
        if profile.users.iter().all(|u| u.arrival.is_none()) {
            return Err(
                "the profile has no open class: an arrival rate needs a class with arrival_rate"
                    .into(),
            );
        }
        if !(total.is_finite() && total > 0.0 && total <= crate::units::MAX_ARRIVAL_RATE) {
            return Err(format!("an arrival rate must be above zero, got {total}"));
        }
        if matches!(
            g.state,
            RunState::Stopping | RunState::CleaningUp | RunState::Stopped
        ) {
            return Err("the run is stopping".into());
        }
        g.arrival = Some(total);
        if matches!(g.state, RunState::Hatching | RunState::Running) {
            self.rebalance(&mut g);
        }
        Ok(())
    }

    /// Waits until every live worker that runs users has sent a report
    /// since now (or `limit` passes): the merged figures then hold what
    /// the workers measured up to about now.
    pub async fn fresh_reports(&self, limit: Duration) {
        let since = Instant::now();
        let deadline = since + limit;
        while Instant::now() < deadline {
            let fresh = self
                .lock()
                .nodes
                .values()
                .filter(|n| !n.missing && n.assigned.iter().any(|&u| u > 0))
                .all(|n| n.last_report > since);
            if fresh {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each open class's arrival rate in all (per second), as the status
    /// line says it.
    pub fn arrival_rates(&self) -> Vec<(String, f64)> {
        let g = self.lock();
        let Some((profile, _)) = &g.profile else {
            return vec![];
        };
        let rates = class_rates(profile, g.arrival);
        profile
            .users
            .iter()
            .zip(rates)
            .filter_map(|(u, r)| Some((u.name.clone(), r?)))
            .collect()
    }

    /// Waits until `n` workers are ready (or `limit` passes): how many are.
    pub async fn wait_for_workers(&self, n: usize, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            let have = self.live_workers();
            if have >= n || tokio::time::Instant::now() >= deadline {
                return have;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    pub fn live_workers(&self) -> usize {
        self.lock().nodes.values().filter(|n| !n.missing).count()
    }

    /// Starts a run of `profile` (whose TOML text goes to the workers):
    /// `users` at `rate` per second over the live workers, and the open
    /// classes at `arrival` per second in all (None: the profile's rates).
    pub fn start(
        &self,
        run_id: RunId,
        profile: (Arc<Profile>, Arc<str>),
        stats: Stats,
        (users, rate): (u64, f64),
        arrival: Option<f64>,
        stop_timeout: f64,
    ) -> Result<(), String> {
        let mut g = self.lock();
        if g.nodes.values().all(|n| n.missing) {
            return Err("no worker has joined the master".into());
        }
        if matches!(
            g.state,
            RunState::Hatching | RunState::Running | RunState::Stopping | RunState::CleaningUp
        ) {
            return Err("a run is going on".into());
        }
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        g.state = RunState::Ready;
        g.peak = 0;
        let classes = profile.0.users.len();
        g.profile = Some(profile);
        for n in g.nodes.values_mut() {
            n.assigned = vec![0; classes];
        }
        g.run_id = Some(run_id);
        g.stop_timeout = stop_timeout;
        for n in g.nodes.values_mut() {
            n.ran = false;
            n.held = Default::default();
            n.reported_run = false;
            n.rates = vec![];
        }
        g.ramp = 0.0;
        g.arrival = None;
        g.sweep = None;
        drop(g);
        self.set_target(users, rate)?;
        if let Some(r) = arrival {
            self.set_arrival_rate(r)?;
        }
        let mut g = self.lock();
        g.state = RunState::Hatching;
        g.ramp = g.rate.min(g.target as f64);
        self.rebalance(&mut g);
        Ok(())
    }

    /// Changes the users wanted and the hatch rate.
    pub fn set_target(&self, users: u64, rate: f64) -> Result<(), String> {
        if users > MAX_USERS {
            return Err(format!("at most {MAX_USERS} users, got {users}"));
        }
        if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
            return Err(format!(
                "hatch rate must be above 0 and at most {MAX_RATE} users/s, got {rate}"
            ));
        }
        let mut g = self.lock();
        if matches!(
            g.state,
            RunState::Stopping | RunState::CleaningUp | RunState::Stopped
        ) {
            return Err("the run is stopping".into());
        }
        g.target = users;
        g.rate = rate;
        if g.ramp > users as f64 {
            g.ramp = users as f64;
            if matches!(g.state, RunState::Hatching | RunState::Running) {
                self.rebalance(&mut g);
            }
        } else if g.state == RunState::Running && g.ramp < users as f64 {
            g.state = RunState::Hatching;
        }
        Ok(())
    }

    pub fn state(&self) -> RunState {
        self.lock().state
    }

    pub fn run_id(&self) -> Option<RunId> {
        self.lock().run_id.clone()
    }

    /// True when every worker went missing during the run.
    pub fn all_missing(&self) -> bool {
        self.lock().state == RunState::Stopping
    }

    /// Resolves when the run stops by itself (every worker missing).
    pub async fn stopped_by_itself(&self) {
        loop {
            let notified = self.changed.notified();
            if self.all_missing() {
                return;
            }
            notified.await;
        }
    }

    /// The users the workers run now.
    pub fn user_count(&self) -> u64 {
        Self::users_of(&self.lock())
    }

    /// Users per class of `profile`, summed over the workers' reports.
    pub fn user_counts(&self, profile: &Profile) -> Vec<(String, u64)> {
        let g = self.lock();
        profile
            .users
            .iter()
            .map(|u| {
                let n = g
                    .nodes
                    .values()
                    .filter(|n| !n.missing)
                    .flat_map(|n| n.classes.iter())
                    .filter(|(c, _)| *c == u.name)
                    .map(|(_, k)| k)
                    .sum();
                (u.name.clone(), n)
            })
            .collect()
    }

    /// Most users the workers ran at once.
    pub fn peak_users(&self) -> u64 {
        self.lock().peak
    }

    /// The users wanted and the hatch rate.
    pub fn target(&self) -> (u64, f64) {
        let g = self.lock();
        (g.target, g.rate)
    }

    /// The workers, by index.
    pub fn workers(&self) -> Vec<WorkerView> {
        let g = self.lock();
        let mut v: Vec<WorkerView> = g
            .nodes
            .iter()
            .map(|(id, n)| WorkerView {
                id: id.clone(),
                index: n.index,
                state: n.state.clone(),
                user_count: n.classes.iter().map(|c| c.1).sum(),
                cpu_usage: n.cpu,
                memory_usage: n.mem,
                rps: n.rps,
                num_requests: n.requests,
                num_failures: n.failures,
                last_heartbeat_s: n.last_heartbeat.elapsed().as_secs_f64(),
                missing: n.missing,
                exact: n.exact,
            })
            .collect();
        v.sort_by_key(|w| w.index);
        v
    }

    /// The run's resources, summed over the workers' reports.
    pub fn resources(&self) -> BTreeMap<Kind, KindCounts> {
        let g = self.lock();
        let mut out: BTreeMap<Kind, KindCounts> = BTreeMap::new();
        for n in g.nodes.values() {
            for (k, c) in &n.held.resources {
                let e = out.entry(*k).or_default();
                e.created += c.created;
                e.deleted += c.deleted;
                e.alive += c.alive;
            }
        }
        out
    }

    /// Creates the workers have sent and not yet seen answered, per kind.
    pub fn creating(&self) -> BTreeMap<Kind, u64> {
        let g = self.lock();
        let mut out: BTreeMap<Kind, u64> = BTreeMap::new();
        for n in g.nodes.values().filter(|n| !n.missing) {
            for (k, c) in &n.held.creating {
                *out.entry(*k).or_default() += c;
            }
        }
        out
    }

    /// What the workers' clean-ups left in the cloud: None when unknown (a
    /// worker went missing, or could not list the cloud).
    pub fn left(&self) -> Option<u64> {
        let g = self.lock();
        let mut sum = 0;
        let swept = |i: u64| g.sweep.as_ref().is_some_and(|(_, m)| m.contains(&i));
        for n in g.nodes.values().filter(|n| n.ran) {
            match n.held.left {
                Some(Some(k)) if !n.missing => sum += k,
                // Its sweeper's count covers it.
                _ if n.missing && swept(n.index) => {}
                _ => return None,
            }
        }
        Some(sum)
    }

    /// Which worker (by index) also cleaned up for the run's missing
    /// workers (by index), if one was told to.
    pub fn swept_for_missing(&self) -> Option<(u64, Vec<u64>)> {
        self.lock().sweep.clone()
    }

    /// Stops the run: every live worker stops its users and cleans up; waits
    /// (up to `limit`) until each says it stopped or goes missing,
    /// telling `progress` who is still at it.
    pub async fn stop(&self, limit: Duration, progress: &(dyn Fn(&str) + Sync)) {
        {
            let mut g = self.lock();
            g.state = RunState::Stopping;
            // What workers that went missing made is left to one cloudswarm
            // worker that ran: its clean-up takes their names too.
            let missing: Vec<u64> = g
                .nodes
                .values()
                .filter(|n| n.missing && n.ran)
                .map(|n| n.index)
                .collect();
            let sweeper = g
                .nodes
                .iter()
                .filter(|(_, n)| !n.missing && n.ran && n.reported_run)
                .min_by_key(|(_, n)| n.index)
                .map(|(id, n)| (id.clone(), n.index))
                .filter(|_| !missing.is_empty());
            g.sweep = sweeper.as_ref().map(|(_, i)| (*i, missing.clone()));
            let ids: Vec<String> = g.nodes.keys().cloned().collect();
            for id in ids {
                let n = g.nodes.get_mut(&id).expect("listed");
                if !n.missing {
                    n.stopped = false;
                    n.assigned.iter_mut().for_each(|a| *a = 0);
                    let data = match &sweeper {
                        Some((s, _)) if *s == id => map([(
                            wire::EXT,
                            map([(
                                "sweep_for",
                                Value::Array(missing.iter().map(|&i| Value::from(i)).collect()),
                            )]),
                        )]),
                        _ => Value::Nil,
                    };
                    self.send(&id, "stop", data);
                }
            }
            if let Some((i, m)) = &g.sweep {
                let m: Vec<String> = m.iter().map(u64::to_string).collect();
                progress(&format!(
                    "worker {i} also cleans up what missing worker(s) {} made",
                    m.join(", ")
                ));
            }
            g.state = RunState::CleaningUp;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let mut last_said = tokio::time::Instant::now();
        loop {
            let notified = self.changed.notified();
            let busy: Vec<String> = {
                let g = self.lock();
                g.nodes
                    .iter()
                    .filter(|(_, n)| !n.missing && !n.stopped)
                    .map(|(_, n)| format!("{} ({})", n.index, n.state))
                    .collect()
            };
            if busy.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                progress(&format!(
                    "gave up waiting for workers {}: their runs stay in their journals",
                    busy.join(", ")
                ));
                break;
            }
            if last_said.elapsed() >= Duration::from_secs(5) {
                progress(&format!(
                    "waiting for workers {} to clean up",
                    busy.join(", ")
                ));
                last_said = tokio::time::Instant::now();
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
        // The last reports (sent right before client_stopped) are in.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.stats().lock().history_tick(0);
        self.lock().state = RunState::Stopped;
    }

    /// Tells every worker to quit.
    pub fn quit(&self) {
        let ids: Vec<String> = self.lock().nodes.keys().cloned().collect();
        for id in ids {
            self.send(&id, "quit", Value::Nil);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_dealt_evenly_by_worker_and_by_class() {
        let s = split(&[5, 3, 2], 3);
        let totals: Vec<u64> = s.iter().map(|w| w.iter().sum()).collect();
        assert_eq!(totals, vec![4, 3, 3]);
        for c in 0..3 {
            let per: Vec<u64> = s.iter().map(|w| w[c]).collect();
            let (lo, hi) = (per.iter().min().unwrap(), per.iter().max().unwrap());
            assert!(hi - lo <= 1, "class {c}: {per:?}");
            assert_eq!(per.iter().sum::<u64>(), [5, 3, 2][c]);
        }
        assert_eq!(split(&[4], 1), vec![vec![4]]);
        assert!(split(&[4], 0).is_empty());
        assert_eq!(split(&[0, 0], 2), vec![vec![0, 0], vec![0, 0]]);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd") && !same("abc", "ab") && !same("", "a"));
    }
}
