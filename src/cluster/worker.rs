//! `cloudswarm worker`: a load generator driven by a master over Locust's
//! protocol, a stock Locust master or cloudswarm's own. It connects as a
//! DEALER, says `client_ready` until acked, heartbeats every second (state,
//! CPU %, RSS), obeys `spawn` (absolute users per class, in timestamp order),
//! `stop` (stop, clean up, ready again) and `quit` (stop, report, clean up,
//! leave), and reports its figures every 3 s in Locust's format with the
//! exact histograms alongside ([`super::wire`]).
//!
//! Each spawn after a stop starts a run of its own: under cloudswarm's
//! master the master's run id, under a stock master a fresh one, printed.
//! The worker reconnects when the master goes away, and quits (cleaning up)
//! when the master has been silent for 60 s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use futures::StreamExt;
use rmpv::Value;
use tokio::sync::mpsc;
use zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketEvent, SocketOptions, SocketRecv,
    SocketSend, ZmqMessage,
};

use super::wire::{self, Holdings, Message, Spawn, map};
use crate::engine::{MAX_RATE, RunState};
use crate::error::config_err;
use crate::naming::RunId;
use crate::profile::{self, Profile};
use crate::session::{CleanupOutcome, Limits, Session, Spec};
use crate::signals;
use crate::stats::StatsData;
use crate::target::{Clients, TargetArgs};

/// Seconds between heartbeats, between stats reports, between
/// `client_ready`s until acked; how long the master may be silent.
const HEARTBEAT: Duration = Duration::from_secs(1);
const REPORT: Duration = Duration::from_secs(3);
const READY_EVERY: Duration = Duration::from_secs(5);
const READY_TRIES: u32 = 60;
const MASTER_SILENCE: Duration = Duration::from_secs(60);

/// Flags of `cloudswarm worker`.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Profile file (TOML) whose user classes a stock Locust master's spawn orders name; under cloudswarm's master, the master sends its profile with each run
    #[arg(long, short = 'f')]
    pub profile: Option<PathBuf>,
    /// The master's host name or address
    #[arg(long, default_value = "127.0.0.1")]
    pub master_host: String,
    /// The master's port
    #[arg(long, default_value_t = 5557)]
    pub master_port: u16,
    /// Token cloudswarm's master asks of its workers (its --worker-token); not for a stock Locust master
    #[arg(long, env = "CLOUDSWARM_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Serve Prometheus metrics on ADDR/metrics (e.g. 127.0.0.1:9464)
    #[arg(long, value_name = "ADDR")]
    pub metrics_bind: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `tcp://host:port`, with brackets around an IPv6 address.
fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

/// Locust's node id: `{hostname}_{32 hex digits}`; new for each process.
fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().replace('_', "-"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cloudswarm".into());
    let hex: String = (0..32)
        .map(|_| char::from_digit(rand::random_range(0..16u32), 16).unwrap_or('0'))
        .collect();
    format!("{host}_{hex}")
}

/// The process's CPU % since the last call and its resident memory in bytes.
struct Usage {
    last: Instant,
    cpu_s: f64,
}

impl Usage {
    fn cpu_seconds() -> f64 {
        // SAFETY: getrusage writes into the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return 0.0;
        }
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    }

    fn new() -> Usage {
        Usage {
            last: Instant::now(),
            cpu_s: Self::cpu_seconds(),
        }
    }

    fn sample(&mut self) -> (f64, u64) {
        let now = Self::cpu_seconds();
        let dt = self.last.elapsed().as_secs_f64().max(1e-3);
        let pct = ((now - self.cpu_s) / dt * 100.0).max(0.0);
        self.last = Instant::now();
        self.cpu_s = now;
        let rss = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
        (pct, rss * page)
    }
}

/// The connection to the master: the DEALER's halves and its events.
struct Link {
    tx: DealerSendHalf,
    rx: DealerRecvHalf,
    events: futures::channel::mpsc::Receiver<SocketEvent>,
}

impl Link {
    async fn open(endpoint: &str, node_id: &str) -> Result<Link, String> {
        let mut opts = SocketOptions::default();
        let id = zeromq::util::PeerIdentity::try_from(node_id.as_bytes().to_vec())
            .map_err(|e| e.to_string())?;
        opts.peer_identity(id);
        opts.connect_timeout(Duration::from_secs(5));
        let mut s = DealerSocket::with_options(opts);
        let events = s.monitor();
        s.connect(endpoint).await.map_err(|e| e.to_string())?;
        let (tx, rx) = s.split();
        Ok(Link { tx, rx, events })
    }

    /// Sends one message; false when the link is broken.
    async fn send(&mut self, m: &Message) -> bool {
        let frame = ZmqMessage::from(m.encode());
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.tx.send(frame)).await,
            Ok(Ok(()))
        )
    }
}

/// What the worker's background jobs tell its loop.
enum Job {
    Prepared(Result<Session>),
    /// The users reached a spawn's targets (or stopped trying): per class.
    Spawned(Vec<(String, u64)>),
    Stopped(Arc<Session>, CleanupOutcome),
}

/// Where the worker's current run is.
enum Phase {
    Idle,
    Preparing,
    Running(Arc<Session>),
    Stopping(Arc<Session>),
}

/// Everything the worker keeps across runs.
struct Worker {
    args: WorkerArgs,
    /// The profile of the next (or current) run: from -f, or from cloudswarm's master.
    profile: Option<Profile>,
    /// Where it came from (a path, or `master:<name>`), and the master's text of it.
    profile_path: PathBuf,
    profile_text: Option<String>,
    clients: Clients,
    node_id: String,
    endpoint: String,
    link: Option<Link>,
    phase: Phase,
    /// Targets of the latest accepted spawn (profile order).
    want: Vec<u64>,
    /// The arrival rate per class (profile order) the last spawn gave.
    rates: Vec<Option<f64>>,
    last_spawn: f64,
    stop_timeout: Duration,
    index: Option<u64>,
    acked: bool,
    last_master: Option<Instant>,
    jobs_tx: mpsc::UnboundedSender<Job>,
    usage: Usage,
    /// Everything reported so far, over all runs.
    total: StatsData,
    reports: u64,
    runs: Vec<(RunId, CleanupOutcome)>,
    /// What the last run's clean-up left (reported until the next run).
    left: Option<Option<u64>>,
    /// The engine `/metrics` observes.
    current: Arc<arc_swap::ArcSwapOption<crate::engine::Engine>>,
}

/// Runs a worker until the master says `quit` (or a signal, or the master's
/// silence); returns the exit code: 0, or 1 when resources were left.
pub async fn worker(args: WorkerArgs) -> Result<i32> {
    signals::take_over();
    let profile = match &args.profile {
        Some(p) => Some(profile::load(p).map_err(|e| config_err(e.to_string()))?),
        None => None,
    };
    let clients = args
        .target
        .clients()
        .await
        .map_err(|e| config_err(e.to_string()))?;
    let current: Arc<arc_swap::ArcSwapOption<crate::engine::Engine>> = Arc::default();
    if let Some(addr) = args.metrics_bind {
        crate::metrics::install();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| config_err(format!("--metrics-bind {addr}: {e}")))?;
        eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
        let c = current.clone();
        tokio::spawn(crate::metrics::serve_with(listener, move || {
            if let Some(engine) = c.load_full() {
                crate::metrics::observe(&engine, &engine.profile.name);
            }
            String::new()
        }));
    }
    let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel();
    let node_id = node_id();
    let endpoint = endpoint(&args.master_host, args.master_port);
    let profile_path = args.profile.clone().unwrap_or_default();
    eprintln!(
        "cloudswarm worker {node_id}: profile {}, master {endpoint}",
        match &profile {
            Some(p) => format!(
                "{} ({} user classes)",
                profile_path.display(),
                p.users.len()
            ),
            None => "from the master".into(),
        }
    );
    let mut w = Worker {
        args,
        profile,
        profile_path,
        profile_text: None,
        clients,
        node_id,
        endpoint,
        link: None,
        phase: Phase::Idle,
        want: vec![],
        rates: vec![],
        last_spawn: f64::NEG_INFINITY,
        stop_timeout: Duration::ZERO,
        index: None,
        acked: false,
        last_master: None,
        jobs_tx,
        usage: Usage::new(),
        total: StatsData::default(),
        reports: 0,
        runs: vec![],
        left: None,
        current,
    };
    w.run(&mut jobs_rx).await
}

/// What woke the worker's loop.
enum Wake {
    Frame(Option<Vec<u8>>),
    Disconnected,
    Heartbeat,
    Report,
    Ready,
    Job(Job),
    Signal,
}

impl Worker {
    async fn run(&mut self, jobs: &mut mpsc::UnboundedReceiver<Job>) -> Result<i32> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut report = tokio::time::interval(REPORT);
        let mut ready = tokio::time::interval(READY_EVERY);
        let mut ready_tries = 0u32;
        let shutdown = signals::shutdown();
        tokio::pin!(shutdown);
        loop {
            let wake = {
                let link = self.link.as_mut();
                let (rx, events) = match link {
                    Some(l) => (Some(&mut l.rx), Some(&mut l.events)),
                    None => (None, None),
                };
                tokio::select! {
                    m = async { rx.expect("guarded").recv().await }, if rx.is_some() => {
                        Wake::Frame(m.ok().and_then(|m| m.into_vec().pop().map(|b| b.to_vec())))
                    }
                    e = async { events.expect("guarded").next().await }, if events.is_some() => {
                        match e {
                            Some(SocketEvent::Disconnected(_)) | None => Wake::Disconnected,
                            Some(_) => continue,
                        }
                    }
                    _ = heartbeat.tick() => Wake::Heartbeat,
                    _ = report.tick() => Wake::Report,
                    _ = ready.tick() => Wake::Ready,
                    Some(j) = jobs.recv() => Wake::Job(j),
                    _ = &mut shutdown => Wake::Signal,
                }
            };
            match wake {
                Wake::Frame(Some(bytes)) => match Message::decode(&bytes) {
                    Ok(m) => {
                        if let Some(reason) = self.on_message(m).await {
                            return Ok(self.quit(&reason, jobs).await);
                        }
                    }
                    Err(e) => tracing::warn!("dropped a message from the master: {e}"),
                },
                Wake::Frame(None) | Wake::Disconnected => {
                    if self.link.take().is_some() {
                        eprintln!("worker: lost the master at {}; reconnecting", self.endpoint);
                    }
                }
                Wake::Heartbeat => {
                    if let Some(t) = self.last_master
                        && t.elapsed() > MASTER_SILENCE
                    {
                        let reason = format!(
                            "the master at {} has been silent for {} s",
                            self.endpoint,
                            MASTER_SILENCE.as_secs()
                        );
                        return Ok(self.quit(&reason, jobs).await);
                    }
                    if self.link.is_some() {
                        self.heartbeat().await;
                    }
                }
                Wake::Report => {
                    if self.link.is_some() {
                        self.report().await;
                    }
                }
                Wake::Ready => {
                    if !self.acked {
                        ready_tries += 1;
                        if ready_tries > READY_TRIES && self.last_master.is_none() {
                            eprintln!(
                                "error: no master answered at {} in {} s",
                                self.endpoint,
                                READY_TRIES as u64 * READY_EVERY.as_secs()
                            );
                            return Ok(self.quit("no master", jobs).await.max(1));
                        }
                    } else {
                        ready_tries = 0;
                    }
                    if self.link.is_none() {
                        self.connect(true).await;
                    } else if !self.acked {
                        self.client_ready().await;
                    }
                }
                Wake::Job(j) => self.on_job(j).await,
                Wake::Signal => return Ok(self.quit("interrupted", jobs).await),
            }
        }
    }

    /// Opens the link (again); says ready when `ready`, so a master that
    /// restarted knows this worker (not after a master's `reconnect`).
    async fn connect(&mut self, ready: bool) {
        match Link::open(&self.endpoint, &self.node_id).await {
            Ok(l) => {
                self.link = Some(l);
                if ready {
                    self.acked = false;
                    self.client_ready().await;
                }
            }
            Err(e) => tracing::info!("cannot reach the master at {}: {e}", self.endpoint),
        }
    }

    async fn send(&mut self, kind: &str, data: Value) -> bool {
        let m = Message::new(kind, data, &self.node_id);
        match self.link.as_mut() {
            Some(l) => {
                if l.send(&m).await {
                    return true;
                }
                eprintln!(
                    "worker: cannot send to the master at {}; reconnecting",
                    self.endpoint
                );
                self.link = None;
                false
            }
            None => false,
        }
    }

    async fn client_ready(&mut self) {
        if let Some(t) = self.args.worker_token.clone() {
            self.send("cloudswarm_hello", map([("token", Value::from(t))]))
                .await;
        }
        self.send("client_ready", Value::from(wire::VERSION_ANY))
            .await;
    }

    /// Tells the master something went wrong (its log shows it) and logs it here.
    async fn exception(&mut self, msg: String) {
        eprintln!("worker: {msg}");
        self.send(
            "exception",
            map([
                ("msg", Value::from(msg.as_str())),
                ("traceback", Value::from("")),
            ]),
        )
        .await;
    }

    fn state(&self) -> &'static str {
        match &self.phase {
            Phase::Idle => "ready",
            Phase::Preparing => "spawning",
            Phase::Running(s) | Phase::Stopping(s) => match s.engine.state() {
                RunState::Ready | RunState::Hatching => "spawning",
                RunState::Running => "running",
                RunState::Stopping => "stopping",
                RunState::CleaningUp => "cleanup",
                RunState::Stopped => "stopped",
            },
        }
    }

    async fn heartbeat(&mut self) {
        let (cpu, rss) = self.usage.sample();
        let data = map([
            ("state", Value::from(self.state())),
            ("current_cpu_usage", Value::F64(cpu)),
            ("current_memory_usage", Value::from(rss)),
        ]);
        self.send("heartbeat", data).await;
    }

    fn session(&self) -> Option<&Arc<Session>> {
        match &self.phase {
            Phase::Running(s) | Phase::Stopping(s) => Some(s),
            _ => None,
        }
    }

    /// Sends the figures recorded since the last report (kept for the next
    /// one if the master cannot be reached).
    async fn report(&mut self) {
        let (delta, classes, run_id, resources) = match self.session() {
            Some(s) => (
                s.ctx.stats.take(),
                s.engine.user_counts(),
                s.run_id.to_string(),
                s.tracker.counts().into_iter().collect(),
            ),
            None => (
                StatsData::default(),
                self.zero_classes(),
                String::new(),
                vec![],
            ),
        };
        let creating = match self.session() {
            Some(s) => resources
                .iter()
                .map(|(k, _): &(crate::resources::Kind, _)| (*k, s.tracker.pending(*k)))
                .collect(),
            None => vec![],
        };
        let held = Holdings {
            resources,
            creating,
            left: self.left,
        };
        let data = wire::stats_report(&delta, &classes, &run_id, &held);
        if self.send("stats", data).await {
            self.total.merge(&delta);
            self.reports += 1;
        } else if let Some(s) = self.session() {
            s.ctx.stats.lock().merge(&delta);
        }
    }

    fn zero_classes(&self) -> Vec<(String, u64)> {
        self.profile.as_ref().map_or_else(Vec::new, |p| {
            p.users.iter().map(|u| (u.name.clone(), 0)).collect()
        })
    }

    /// Takes the profile cloudswarm's master sent (between runs only).
    async fn take_profile(&mut self, name: &str, text: &str) -> bool {
        if self.profile_text.as_deref() == Some(text) {
            return true;
        }
        if !matches!(self.phase, Phase::Idle) {
            self.exception("the master changed the profile during a run: spawn ignored".into())
                .await;
            return false;
        }
        let path = PathBuf::from(format!("master:{name}"));
        match profile::parse(&path, text) {
            Ok(p) => {
                self.profile = Some(p);
                self.profile_path = path;
                self.profile_text = Some(text.to_string());
                true
            }
            Err(e) => {
                self.exception(format!(
                    "the master's profile {name} is not valid here: {e}"
                ))
                .await;
                false
            }
        }
    }

    /// Handles one message; answers a reason to quit.
    async fn on_message(&mut self, m: Message) -> Option<String> {
        if m.node_id != self.node_id {
            tracing::warn!("dropped a `{}` addressed to {}", m.kind, m.node_id);
            return None;
        }
        self.last_master = Some(Instant::now());
        match m.kind.as_str() {
            "ack" => {
                self.acked = true;
                self.index = wire::get(&m.data, "index")
                    .and_then(wire::count)
                    .filter(|&i| i < crate::naming::MAX_WORKER_INDEX);
                eprintln!(
                    "worker: joined the master at {} (index {})",
                    self.endpoint,
                    self.index.unwrap_or(0)
                );
            }
            "heartbeat" => {}
            "spawn" => self.on_spawn(&m.data).await,
            "stop" => {
                // cloudswarm's master may hand this worker the name ranges
                // of workers of the run that went missing, to sweep too.
                let ext = wire::get(&m.data, wire::EXT);
                let sweep_for: Vec<u64> = match ext.and_then(|e| wire::get(e, "sweep_for")) {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(wire::count)
                        .filter(|&i| i < crate::naming::MAX_WORKER_INDEX)
                        .take(1024)
                        .collect(),
                    _ => vec![],
                };
                self.stop_sweeping_for(&sweep_for).await
            }
            "quit" => return Some("the master said quit".into()),
            "reconnect" => {
                self.link = None;
                self.connect(false).await;
            }
            "spawning_complete" | "update_user_class" => {}
            other => tracing::info!("ignored a `{other}` from the master"),
        }
        None
    }

    async fn on_spawn(&mut self, data: &Value) {
        self.send("spawning", Value::Nil).await;
        let spawn = match Spawn::parse(data) {
            Ok(s) => s,
            Err(e) => return self.exception(format!("bad spawn order: {e}")).await,
        };
        if spawn.timestamp <= self.last_spawn {
            tracing::info!("dropped a spawn older than the last one");
            return;
        }
        self.last_spawn = spawn.timestamp;
        self.stop_timeout = Duration::from_secs_f64(spawn.stop_timeout.min(86_400.0));
        if let Some((name, text)) = &spawn.profile
            && !self.take_profile(name, text).await
        {
            return;
        }
        let Some(profile) = self.profile.as_ref() else {
            return self
                .exception(
                    "no profile: a worker under a stock Locust master needs -f PROFILE".into(),
                )
                .await;
        };
        let mut targets = vec![0u64; profile.users.len()];
        let mut unknown = vec![];
        for (name, n) in &spawn.classes {
            match profile.users.iter().position(|u| &u.name == name) {
                Some(i) => targets[i] = *n,
                None if *n > 0 => unknown.push(format!("{name} ({n})")),
                None => {}
            }
        }
        let rates = profile
            .users
            .iter()
            .map(|u| {
                let r = spawn.arrival_rates.iter().find(|(c, _)| *c == u.name);
                r.filter(|_| u.arrival.is_some()).map(|(_, r)| *r)
            })
            .collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = profile.users.iter().map(|u| u.name.as_str()).collect();
            let msg = format!(
                "spawn names user classes profile {} does not have: {} (its classes: {}); those users are not started",
                self.profile_path.display(),
                unknown.join(", "),
                known.join(", ")
            );
            self.exception(msg).await;
        }
        self.want = targets;
        self.rates = rates;
        match &self.phase {
            Phase::Idle => {
                self.phase = Phase::Preparing;
                self.prepare(spawn.run_id);
            }
            Phase::Preparing => {}
            Phase::Running(s) => {
                if let Some(r) = &spawn.run_id
                    && *r != s.run_id
                {
                    // A master that does not know this run (it restarted, or
                    // another took over): stop and clean up this one first;
                    // once ready again, the master sends its own run.
                    eprintln!(
                        "worker: the master runs {r}: stopping run {} first",
                        s.run_id
                    );
                    return self.stop().await;
                }
                let s = s.clone();
                match s.engine.set_class_targets(self.want.clone(), MAX_RATE) {
                    Ok(()) => {
                        self.apply_rates(&s).await;
                        self.watch_spawn(s)
                    }
                    Err(e) => self.exception(format!("spawn refused: {e}")).await,
                }
            }
            Phase::Stopping(_) => {
                self.exception("spawn while stopping: ignored".into()).await;
            }
        }
    }

    /// Prepares a run in the background (preflight, journal): the
    /// heartbeats go on meanwhile.
    fn prepare(&self, run_id: Option<RunId>) {
        let Some(profile) = self.profile.clone() else {
            return;
        };
        let (clients, limits) = (self.clients.clone(), self.args.limits.clone());
        let path = self.profile_path.clone();
        // Workers under one run id each name from their own range, and
        // their clean-ups claim only that range (and their journals).
        let name_base = crate::naming::worker_names(self.index.unwrap_or(0)).start() - 1;
        let own_names_only = run_id.is_some();
        let tx = self.jobs_tx.clone();
        tokio::spawn(async move {
            let spec = Spec {
                profile_path: &path,
                clients,
                state_dir: limits.state_dir(),
                caps: limits.caps(),
                max_inflight: limits.max_inflight as usize,
                run_id,
                name_base,
                own_names_only,
            };
            let _ = tx.send(Job::Prepared(Session::prepare(profile, spec).await));
        });
    }

    /// Sets the open classes' arrival rates the last spawn gave (its share
    /// of the master's rate); a class it gave none keeps its rate.
    async fn apply_rates(&mut self, s: &Session) {
        if self.rates.iter().any(Option::is_some)
            && let Err(e) = s.engine.set_class_arrival_rates(self.rates.clone())
        {
            self.exception(format!("arrival rates refused: {e}")).await;
        }
    }

    /// Says `spawning_complete` once the users reach the targets (or after 10 s).
    fn watch_spawn(&self, s: Arc<Session>) {
        let want: u64 = self.want.iter().sum();
        let tx = self.jobs_tx.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            while s.engine.user_count() != want && t0.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = tx.send(Job::Spawned(s.engine.user_counts()));
        });
    }

    async fn on_job(&mut self, j: Job) {
        match j {
            Job::Prepared(Ok(s)) => {
                let s = Arc::new(s);
                self.left = None;
                eprintln!(
                    "worker: run {} started (journal {})",
                    s.run_id,
                    s.tracker.journal_path().display()
                );
                self.current.store(Some(s.engine.clone()));
                match s.start_classes(self.want.clone(), MAX_RATE) {
                    Ok(()) => {
                        self.apply_rates(&s).await;
                        self.watch_spawn(s.clone())
                    }
                    Err(e) => self.exception(format!("spawn refused: {e}")).await,
                }
                self.phase = Phase::Running(s);
            }
            Job::Prepared(Err(e)) => {
                self.phase = Phase::Idle;
                self.last_spawn = f64::NEG_INFINITY;
                self.exception(format!("cannot start the run: {e:#}")).await;
                // Ready again: the master may send the next spawn.
                self.send("client_stopped", Value::Nil).await;
                self.client_ready().await;
            }
            Job::Spawned(classes) => {
                if matches!(self.phase, Phase::Running(_)) {
                    let users: u64 = classes.iter().map(|(_, n)| n).sum();
                    let counts = Value::Map(
                        classes
                            .iter()
                            .map(|(c, n)| (Value::from(c.as_str()), Value::from(*n)))
                            .collect(),
                    );
                    self.send(
                        "spawning_complete",
                        map([
                            ("user_classes_count", counts),
                            ("user_count", Value::from(users)),
                        ]),
                    )
                    .await;
                }
            }
            Job::Stopped(s, outcome) => {
                self.report_run_end(&s, &outcome);
                self.left = Some(outcome.leaked);
                self.report().await;
                self.runs.push((s.run_id.clone(), outcome));
                self.phase = Phase::Idle;
                self.last_spawn = f64::NEG_INFINITY;
                self.send("client_stopped", Value::Nil).await;
                self.client_ready().await;
            }
        }
    }

    /// `stop`: users stop within the stop timeout, the run cleans up in the
    /// background (heartbeats say `stopping`, then `cleanup`), then the
    /// worker is ready again.
    async fn stop(&mut self) {
        self.stop_sweeping_for(&[]).await
    }

    /// [`Self::stop`], the clean-up also taking what the run's tag or
    /// marker proves of the names of workers `missing` (by index).
    async fn stop_sweeping_for(&mut self, missing: &[u64]) {
        let Phase::Running(s) = &self.phase else {
            if matches!(self.phase, Phase::Idle) {
                self.send("client_stopped", Value::Nil).await;
                self.client_ready().await;
            }
            return;
        };
        let s = s.clone();
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(u64::to_string).collect();
            eprintln!(
                "worker: the clean-up also takes what missing worker(s) {} made (by the run's tag and marker)",
                list.join(", ")
            );
            for &i in missing {
                s.tracker.widen_scope(crate::naming::worker_names(i));
            }
        }
        self.phase = Phase::Stopping(s.clone());
        s.mark_stopping();
        let (stop_timeout, cleanup_timeout) = (self.stop_timeout, self.args.limits.cleanup_timeout);
        let tx = self.jobs_tx.clone();
        tokio::spawn(async move {
            s.stop(stop_timeout).await;
            let progress = |m: &str| eprintln!("worker clean-up: {m}");
            let outcome = s.clean_up(cleanup_timeout, &progress).await;
            let _ = tx.send(Job::Stopped(s, outcome));
        });
    }

    fn report_run_end(&self, s: &Session, outcome: &CleanupOutcome) {
        let deleted: Vec<String> = outcome
            .deleted
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        eprintln!(
            "worker: run {} ended; clean-up deleted {}; left in the cloud: {}",
            s.run_id,
            if deleted.is_empty() {
                "nothing".into()
            } else {
                deleted.join(", ")
            },
            outcome
                .leaked
                .map_or("unknown (the cloud could not be listed)".into(), |n| n
                    .to_string())
        );
        for (k, ids) in &outcome.left {
            eprintln!("worker clean-up: still in the cloud: {k} {}", ids.join(" "));
        }
    }

    /// Leaves: users stop, the last figures and `quit` go to the master
    /// first (a stock master waits half a second for them), then the run
    /// cleans up and the worker prints what it did.
    async fn quit(&mut self, reason: &str, jobs: &mut mpsc::UnboundedReceiver<Job>) -> i32 {
        eprintln!("worker: quitting ({reason})");
        if matches!(self.phase, Phase::Preparing) {
            // The run being prepared may have made its journal: wait for it,
            // then stop it like any other.
            self.phase = Phase::Idle;
            while let Some(j) = jobs.recv().await {
                if let Job::Prepared(r) = j {
                    if let Ok(s) = r {
                        self.phase = Phase::Running(Arc::new(s));
                    }
                    break;
                }
            }
        }
        if let Phase::Running(s) = &self.phase {
            let s = s.clone();
            s.mark_stopping();
            s.stop(self.stop_timeout).await;
        }
        if self.link.is_some() {
            self.report().await;
            self.send("quit", Value::Nil).await;
        }
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Running(s) => {
                let progress = |m: &str| eprintln!("worker clean-up: {m}");
                let outcome = s
                    .clean_up(self.args.limits.cleanup_timeout, &progress)
                    .await;
                self.report_run_end(&s, &outcome);
                self.runs.push((s.run_id.clone(), outcome));
            }
            Phase::Stopping(_) => {
                // The background clean-up is under way: wait for its outcome.
                while let Some(j) = jobs.recv().await {
                    if let Job::Stopped(s, outcome) = j {
                        self.report_run_end(&s, &outcome);
                        self.runs.push((s.run_id.clone(), outcome));
                        break;
                    }
                }
            }
            _ => {}
        }
        let snap = self.total.snapshot();
        println!("{}", crate::output::summary_table(&snap));
        let t = &snap.total;
        println!(
            "worker {}: reported {} requests, {} failures in {} stats reports",
            self.node_id, t.num_requests, t.num_failures, self.reports
        );
        let mut code = 0;
        for (run, outcome) in &self.runs {
            let left = match outcome.leaked {
                Some(0) => "nothing left".to_string(),
                Some(n) => {
                    code = 1;
                    format!("{n} left: run `cloudswarm cleanup --run-id {run}`")
                }
                None => {
                    code = 1;
                    format!("unknown what is left: run `cloudswarm cleanup --run-id {run}`")
                }
            };
            println!("run {run}: {left}");
        }
        code
    }
}
