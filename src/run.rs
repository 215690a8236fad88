//! The headless run (`cloudswarm run`): preflight, hatch, status lines, load
//! shape (run time or stages), stop, clean-up, then the summary, CSV, JSON and
//! SLA verdicts. The SLAs (the profile's and `--sla`) are judged every second
//! while the run goes; `--abort-on-sla-failure` stops it at the first breach.
//! Every run is kept in the state directory (`output::kept`: a snapshot
//! every few seconds, the reports at the end); `--baseline` compares it
//! with an earlier one, `--html` and `--junit` write reports for CI.
//! Exit codes: 0 all SLAs held (and no gated regression), 1 an SLA failed
//! (or broke and stopped the run) or the run regressed, 2 usage or
//! configuration error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;

use crate::cluster::master::{Master, MasterArgs};
use crate::engine::{Engine, MAX_RATE, MAX_USERS, RunState};
use crate::error::config_err;
use crate::output::compare::GateArgs;
use crate::output::finish::Keep;
use crate::output::kept;
use crate::output::report::{Report, report_so_far};
use crate::output::sla::{self, Monitor, Sla, SlaStatus};
use crate::output::{self, RunFacts};
use crate::profile;
use crate::resources::Kind;
use crate::session::{Limits, Session, Spec};
use crate::signals;
use crate::stats::Stats;
use crate::target::TargetArgs;

/// One stage of a load shape, held for `duration`: a user target (with
/// its hatch rate), or an arrival rate for the open classes (users stay as
/// they are).
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Users to hold; None for a `rate=` stage.
    pub users: Option<u64>,
    pub duration: Duration,
    /// Hatch rate (users per second).
    pub rate: Option<f64>,
    /// Arrivals per second of all open classes together, for a `rate=`
    /// stage (see [`Engine::set_arrival_rate`]).
    pub arrival_rate: Option<f64>,
}

/// A load shape: stages run in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape(pub Vec<Stage>);

impl Shape {
    /// True when a stage sets an arrival rate.
    pub fn sets_arrival_rate(&self) -> bool {
        self.0.iter().any(|s| s.arrival_rate.is_some())
    }
}

/// Parses `10:30s,50:2m,0:30s` (users:duration[:rate], comma separated),
/// and arrival-rate stages `rate=10/s:1m` among them.
pub fn parse_stages(s: &str) -> Result<Shape, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let f: Vec<&str> = part.split(':').collect();
        if let Some(r) = f[0].trim().strip_prefix("rate=") {
            if f.len() != 2 {
                return Err(format!(
                    "stage `{part}` is not rate=ARRIVALS:DURATION (e.g. rate=10/s:1m): a rate= stage keeps the users as they are, so it has no user count or hatch rate"
                ));
            }
            let arrival_rate =
                crate::units::parse_rate(r).map_err(|e| format!("stage `{part}`: {e}"))?;
            let duration =
                crate::units::parse_duration(f[1]).map_err(|e| format!("stage `{part}`: {e}"))?;
            out.push(Stage {
                users: None,
                duration,
                rate: None,
                arrival_rate: Some(arrival_rate),
            });
            continue;
        }
        if f.iter().skip(1).any(|x| x.contains("rate=")) {
            return Err(format!(
                "stage `{part}`: an arrival rate is a stage of its own, rate=ARRIVALS:DURATION (e.g. 10:30s,rate=20/s:1m)"
            ));
        }
        if !(2..=3).contains(&f.len()) {
            return Err(format!(
                "stage `{part}` is not USERS:DURATION[:RATE] (e.g. 10:30s or 50:2m:5) or rate=ARRIVALS:DURATION (e.g. rate=20/s:1m)"
            ));
        }
        let users: u64 = f[0]
            .parse()
            .map_err(|_| format!("stage `{part}`: `{}` is not a user count", f[0]))?;
        if users > MAX_USERS {
            return Err(format!(
                "stage `{part}`: {users} users; at most {MAX_USERS}"
            ));
        }
        let duration =
            crate::units::parse_duration(f[1]).map_err(|e| format!("stage `{part}`: {e}"))?;
        let rate = match f.get(2) {
            Some(r) => {
                let v = r
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| format!("stage `{part}`: `{r}` is not a hatch rate"))?;
                if v > MAX_RATE {
                    return Err(format!(
                        "stage `{part}`: hatch rate {r}; at most {MAX_RATE} users/s"
                    ));
                }
                Some(v)
            }
            None => None,
        };
        out.push(Stage {
            users: Some(users),
            duration,
            rate,
            arrival_rate: None,
        });
    }
    if out.is_empty() {
        return Err("--stages is empty (e.g. \"10:30s,50:2m,0:30s\")".into());
    }
    Ok(Shape(out))
}

/// Flags of `cloudswarm run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Profile file (TOML), e.g. profiles/burn-in.toml
    #[arg(long, short = 'f')]
    pub profile: PathBuf,
    /// Number of users
    #[arg(short = 'u', long = "users", default_value_t = 1)]
    pub users: u64,
    /// Hatch rate (users started per second)
    #[arg(
        short = 'r',
        long = "hatch-rate",
        alias = "spawn-rate",
        default_value_t = 1.0
    )]
    pub rate: f64,
    /// Stop after this long (e.g. 30s, 5m, 1h30m); default: until Ctrl-C
    #[arg(short = 't', long = "run-time", value_parser = crate::units::parse_duration)]
    pub run_time: Option<Duration>,
    /// Load shape USERS:DURATION[:RATE],... (e.g. "10:30s,50:2m,0:30s"), with arrival-rate stages rate=ARRIVALS:DURATION for open classes (e.g. "rate=10/s:1m,rate=50/s:5m", users from -u); ends the run after the last stage
    #[arg(long, value_parser = parse_stages)]
    pub stages: Option<Shape>,
    /// Write PREFIX_stats.csv, PREFIX_failures.csv and PREFIX_stats_history.csv
    #[arg(long, value_name = "PREFIX")]
    pub csv: Option<String>,
    /// Write the JSON report to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the self-contained HTML report to FILE (opens offline)
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write a JUnit XML report to FILE: a test case per SLA and per regression check
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Compare with this run at the end: a run id kept in the state directory, or a JSON report's path
    #[arg(long, value_name = "RUN_OR_REPORT")]
    pub baseline: Option<String>,
    #[command(flatten)]
    pub gate: GateArgs,
    /// Keep at most N runs in the state directory, this one included: the oldest are deleted when a run starts (0: keep all)
    #[arg(long, default_value_t = kept::DEFAULT_KEEP_RUNS, value_name = "N")]
    pub keep_runs: usize,
    /// SLA judged every second and at the end, e.g. "p95(ec2:RunInstances)<2s", "failure_rate<1%", over the last minutes "p95[5m](ec2:RunInstances)<2s"; repeatable, added to the profile's `sla = [...]`
    #[arg(long = "sla", value_name = "EXPR")]
    pub sla: Vec<String>,
    /// Stop the run at the first SLA breach (clean up, write the reports, exit 1)
    #[arg(long)]
    pub abort_on_sla_failure: bool,
    /// Capacity search START:STEP:HOLD (e.g. 1/s:1/s:2m): raise the open classes' arrival rate step by step until a step breaks an SLA, a limit below, or saturates the generator; report the highest rate that held
    #[arg(long, value_name = "START:STEP:HOLD", value_parser = crate::capacity::parse_plan)]
    pub find_max: Option<crate::capacity::Plan>,
    /// --find-max: the failure rate a step may not exceed
    #[arg(long, default_value = "1%", value_parser = crate::capacity::parse_ratio)]
    pub find_max_failure_rate: f64,
    /// --find-max: the throttle rate a step may not exceed
    #[arg(long, default_value = "1%", value_parser = crate::capacity::parse_ratio)]
    pub find_max_throttle_rate: f64,
    /// Leave created resources in place (they stay in the run's journal)
    #[arg(long)]
    pub keep_resources: bool,
    #[command(flatten)]
    pub limits: Limits,
    /// Serve Prometheus metrics on ADDR/metrics during the run (e.g. 127.0.0.1:9464)
    #[arg(long, value_name = "ADDR")]
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// Seconds between status lines (0: none; at most 86400)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub status_every: u64,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub master: MasterArgs,
}

/// Runs a headless swarm; returns the process exit code.
pub async fn run(args: RunArgs) -> Result<i32> {
    signals::take_over();
    let (profile, slas, baseline) = validate(&args)?;
    // The baseline is read: pruning may delete its folder now.
    kept::prune_for_new_run(&args.limits.state_dir(), args.keep_runs);
    if args.master.master {
        return run_master(args, profile, slas, baseline).await;
    }
    let clients = args
        .target
        .clients()
        .await
        .map_err(|e| config_err(e.to_string()))?;
    let spec = Spec {
        profile_path: &args.profile,
        clients,
        state_dir: args.limits.state_dir(),
        caps: args.limits.caps(),
        max_inflight: args.limits.max_inflight as usize,
        run_id: None,
        name_base: 0,
        own_names_only: false,
    };
    let session = Session::prepare(profile, spec).await?;
    let info = &session.ctx.clients.info;
    eprintln!(
        "cloudswarm run {}: profile {} against EC2 {} / S3 {} (region {}); journal {}",
        session.run_id,
        args.profile.display(),
        info.ec2_endpoint,
        info.s3_endpoint,
        info.region,
        session.tracker.journal_path().display()
    );
    if let Some(addr) = args.metrics_bind {
        serve_metrics(addr, &session).await?;
    }
    let t0 = Instant::now();
    let monitor = Monitor::new(slas.clone(), session.started_at);
    let keep = keep(&args, &session.run_id, baseline)?;
    let target = info.clone();
    // Until the end, the run's folder holds a snapshot of the report so far.
    let snapshot = || {
        let facts = RunFacts {
            run_id: &session.run_id,
            profile: &session.engine.profile.name,
            profile_text: &keep.profile_text,
            target: &target,
            started_at: session.started_at,
            ended_at: None,
            duration_s: t0.elapsed().as_secs_f64(),
            users: session.engine.peak_users(),
            resources: &session.tracker.counts(),
            leaked: None,
        };
        report_so_far(&facts, &session.ctx.stats, &monitor)
    };
    let work = async {
        let driven = drive(&args, &session, &monitor, &slas, t0).await?;
        let peak_users = session.engine.peak_users();
        stop(&args, &session).await;
        let duration_s = t0.elapsed().as_secs_f64();
        // The SLAs' final verdicts are of the load, not of the clean-up.
        monitor.evaluate_final(&session.ctx.stats, crate::output::report::unix_now());
        let ended = finish(&args, &session).await;
        Ok::<_, anyhow::Error>((driven, peak_users, duration_s, ended))
    };
    let (driven, peak_users, duration_s, ended) =
        kept::while_snapshotting(keep.run.as_ref(), snapshot, work).await?;
    let facts = RunFacts {
        run_id: &session.run_id,
        profile: &session.engine.profile.name,
        profile_text: &keep.profile_text,
        target: &target,
        started_at: session.started_at,
        ended_at: Some(crate::output::report::unix_now()),
        duration_s,
        users: peak_users,
        resources: &session.tracker.counts(),
        leaked: ended.leaked,
    };
    report(
        &args,
        &session,
        &facts,
        &ended.failed,
        &monitor,
        driven,
        &keep,
    )
}

/// What the run keeps and compares with (`output::finish::Keep`).
fn keep(args: &RunArgs, run_id: &crate::naming::RunId, baseline: Option<Report>) -> Result<Keep> {
    Keep::new(&args.profile, &args.limits.state_dir(), run_id, baseline).map_err(config_err)
}

/// Checks what can be checked before anything is sent: the profile, the
/// SLAs, the user count and rate, that the reports can be written, and
/// the baseline (read now: a run regresses against what it was then).
fn validate(args: &RunArgs) -> Result<(profile::Profile, Vec<Sla>, Option<Report>)> {
    let profile = profile::load(&args.profile).map_err(|e| config_err(e.to_string()))?;
    let slas = sla::for_run(&profile, &args.profile, &args.sla).map_err(config_err)?;
    if args.abort_on_sla_failure && slas.is_empty() {
        bail!(config_err(format!(
            "--abort-on-sla-failure needs an SLA: give --sla EXPR or `sla = [...]` in {}",
            args.profile.display()
        )));
    }
    if args.users > MAX_USERS {
        bail!(config_err(format!("-u: at most {MAX_USERS} users")));
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= MAX_RATE) {
        bail!(config_err(format!(
            "-r: the hatch rate must be above 0 and at most {MAX_RATE}"
        )));
    }
    if args.find_max.is_some() {
        if args.stages.is_some() {
            bail!(config_err(
                "--find-max sets the arrival rate itself: leave out --stages"
            ));
        }
        if profile.users.iter().all(|u| u.arrival.is_none()) {
            bail!(config_err(format!(
                "--find-max raises an arrival rate, but no class of {} has one: give a class `arrival_rate = \"1/s\"` (its users are the pool)",
                args.profile.display()
            )));
        }
    }
    if args.stages.as_ref().is_some_and(Shape::sets_arrival_rate)
        && profile.users.iter().all(|u| u.arrival.is_none())
    {
        bail!(config_err(format!(
            "--stages sets an arrival rate (rate=), but no class of {} has an arrival_rate: rate= stages drive open classes only",
            args.profile.display()
        )));
    }
    // The reports are written at the end: find a bad path now, not after the run.
    let outputs = args
        .csv
        .iter()
        .flat_map(|p| output::csv_paths(p, !slas.is_empty()))
        .map(|p| ("--csv", p))
        .chain(args.json.iter().map(|p| ("--json", p.clone())))
        .chain(args.html.iter().map(|p| ("--html", p.clone())))
        .chain(args.junit.iter().map(|p| ("--junit", p.clone())));
    for (flag, path) in outputs {
        output::check_writable(&path).map_err(|e| config_err(format!("{flag}: {e:#}")))?;
    }
    if args.gate.gates() && args.baseline.is_none() {
        bail!(config_err(
            "--max-regression and --max-failure-increase judge a comparison: give --baseline RUN_OR_REPORT"
        ));
    }
    let baseline = match &args.baseline {
        Some(b) => Some(
            kept::resolve(&args.limits.state_dir(), b)
                .map_err(|e| config_err(format!("--baseline: {e}")))?,
        ),
        None => None,
    };
    Ok((profile, slas, baseline))
}

/// `--metrics-bind`: Prometheus metrics of the run on their own port.
async fn serve_metrics(addr: std::net::SocketAddr, session: &Session) -> Result<()> {
    crate::metrics::install();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| config_err(format!("--metrics-bind {addr}: {e}")))?;
    eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
    let engine = session.engine.clone();
    tokio::spawn(crate::metrics::serve(
        listener,
        engine.clone(),
        engine.profile.name.clone(),
    ));
    Ok(())
}

/// How a run's load ended early, if it did.
#[derive(Default)]
struct Driven {
    /// A stage the engine refused (exit 2).
    stage_error: Option<String>,
    /// The SLA whose breach stopped the run (`--abort-on-sla-failure`).
    aborted: Option<SlaStatus>,
    /// The capacity search's answer (`--find-max`).
    capacity: Option<crate::capacity::Outcome>,
}

/// Judges the SLAs once a second while the run goes (their statuses and
/// Prometheus gauges); resolves at the first breach when the run is to
/// stop on it, never otherwise.
async fn watch_slas(monitor: &Monitor, stats: &Stats, abort: bool) -> SlaStatus {
    if monitor.is_empty() {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(broke) = monitor.evaluate(stats, false) {
            eprintln!("{}", broke.describe());
            if abort {
                return broke;
            }
        }
    }
}

/// Runs the load shape (users and rate, or `--stages`) with a status line
/// every `--status-every` seconds, until the run time, the last stage, a
/// signal or (with `--abort-on-sla-failure`) an SLA's breach. A stage the
/// engine refuses ends the run: its message comes back.
async fn drive(
    args: &RunArgs,
    session: &Session,
    monitor: &Monitor,
    slas: &[Sla],
    t0: Instant,
) -> Result<Driven> {
    let engine = session.engine.clone();
    let shape: Vec<Stage> = args.stages.as_ref().map_or_else(Vec::new, |s| s.0.clone());
    // Users from the first stage (-u when it is a rate= stage), the
    // arrival rate from the first stage if it sets one (or the profile's).
    let first = shape.first().map_or((args.users, args.rate), |st| {
        (st.users.unwrap_or(args.users), st.rate.unwrap_or(args.rate))
    });
    if let Some(r) = shape.first().and_then(|st| st.arrival_rate) {
        engine
            .set_arrival_rate(r)
            .map_err(|e| config_err(format!("--stages: stage 1: {e}")))?;
    }
    if let Some(plan) = &args.find_max {
        engine
            .set_arrival_rate(plan.start)
            .map_err(|e| config_err(format!("--find-max: {e}")))?;
    }
    session.start(first.0, first.1).map_err(config_err)?;
    let e = engine.clone();
    Ok(until_stop(
        args,
        slas,
        monitor,
        &*engine,
        (
            &shape,
            |users, rate| engine.set_target(users, rate),
            |r| engine.set_arrival_rate(r),
        ),
        std::future::pending(),
        move || status_line(&e, t0),
    )
    .await)
}

/// What a run (the local engine, or a master over its workers) follows
/// until it is to stop: the load shape (`--stages`, with how to set users
/// and hatch rate, and arrival rate), the run time, the capacity search, the
/// SLAs (a breach with `--abort-on-sla-failure`), a signal, and
/// `other_end` (a master's workers all missing: its reason). `line` is the
/// status line, printed every `--status-every` seconds and once more with
/// the reason the run stops.
async fn until_stop<S, A>(
    args: &RunArgs,
    slas: &[Sla],
    monitor: &Monitor,
    target: &impl crate::capacity::Target,
    (shape, set_users, set_arrivals): (&[Stage], S, A),
    other_end: impl std::future::Future<Output = String>,
    line: impl Fn() -> String + Send + Sync + 'static,
) -> Driven
where
    S: Fn(u64, f64) -> Result<(), String>,
    A: Fn(f64) -> Result<(), String>,
{
    let line = std::sync::Arc::new(line);
    let status = {
        let (line, every) = (line.clone(), args.status_every);
        tokio::spawn(async move {
            if every == 0 {
                return std::future::pending().await;
            }
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", line());
            }
        })
    };
    let shape_done = follow_stages(shape, args.rate, set_users, set_arrivals);
    let steps = std::sync::Mutex::new(Vec::new());
    let search = find_max(args, slas, target, &steps);
    let stats = target.figures();
    let mut driven = Driven::default();
    let reason = tokio::select! {
        outcome = search => {
            eprintln!("find-max: {}", outcome.summary());
            driven.capacity = Some(outcome);
            "capacity search done".to_string()
        }
        _ = run_time(args.run_time) => "run time reached".to_string(),
        e = shape_done => {
            driven.stage_error = e;
            if driven.stage_error.is_some() { "a stage was refused" } else { "last stage done" }.to_string()
        }
        broke = watch_slas(monitor, &stats, args.abort_on_sla_failure) => {
            let why = broke.describe();
            driven.aborted = Some(broke);
            why
        }
        why = other_end => why,
        _ = signals::shutdown() => "interrupted".to_string(),
    };
    status.abort();
    if args.find_max.is_some() && driven.capacity.is_none() {
        let done = steps.lock().map(|s| s.clone()).unwrap_or_default();
        driven.capacity = Some(crate::capacity::cut_short(&target.run_id(), done, &reason));
    }
    eprintln!("{} — stopping ({reason})", line());
    driven
}

/// Follows `--stages` (never ends without them): each stage sets the users
/// (at its hatch rate, else `hatch_rate`) or the open classes' arrival
/// rate, then holds. parse_stages bounds users and rates, so a stage is
/// refused only if the engine or master changed its mind: that ends the
/// run (exit 2) with the stage named, it does not go on with the last one.
async fn follow_stages(
    shape: &[Stage],
    hatch_rate: f64,
    set_users: impl Fn(u64, f64) -> Result<(), String>,
    set_arrivals: impl Fn(f64) -> Result<(), String>,
) -> Option<String> {
    if shape.is_empty() {
        return std::future::pending().await;
    }
    for (i, st) in shape.iter().enumerate() {
        let set = match (st.users, st.arrival_rate) {
            (Some(users), _) => set_users(users, st.rate.unwrap_or(hatch_rate)),
            (None, Some(r)) => set_arrivals(r),
            (None, None) => Ok(()),
        };
        if let Err(e) = set {
            return Some(format!("--stages: stage {}: {e}", i + 1));
        }
        tokio::time::sleep(st.duration).await;
    }
    None
}

/// Ends after `-t` (never without it).
async fn run_time(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The `--find-max` search over a run (the engine, or a master over its
/// workers; never ends without `--find-max`), each step judged on its own
/// figures.
async fn find_max(
    args: &RunArgs,
    slas: &[Sla],
    target: &impl crate::capacity::Target,
    steps: &std::sync::Mutex<Vec<crate::capacity::Step>>,
) -> crate::capacity::Outcome {
    let Some(plan) = &args.find_max else {
        return std::future::pending().await;
    };
    let judge = crate::capacity::sla_judge(slas);
    let limits = crate::capacity::Limits {
        failure_rate: args.find_max_failure_rate,
        throttle_rate: args.find_max_throttle_rate,
        ..Default::default()
    };
    crate::capacity::search(target, plan, limits, &judge, steps).await
}

/// Stops the users (a second signal abandons their current tasks).
async fn stop(args: &RunArgs, session: &Session) {
    tokio::select! {
        _ = session.stop(args.limits.stop_timeout) => {}
        _ = signals::shutdown() => {
            eprintln!("interrupted again: abandoning the users' current tasks");
            session.abandon_users();
        }
    }
}

/// How a run's end went: what the cloud still holds (None: unknown) and
/// what could not be deleted.
struct Ended {
    leaked: Option<u64>,
    failed: Vec<(String, String, String)>,
}

/// Cleans up (a signal cuts it short: the journal keeps the rest), or
/// keeps the resources with `--keep-resources`.
async fn finish(args: &RunArgs, session: &Session) -> Ended {
    let run_id = &session.run_id;
    if args.keep_resources {
        eprintln!(
            "--keep-resources: created resources stay (journal {})",
            session.tracker.dir().display()
        );
        session.mark_stopped();
        let held = session.live_resources().iter().map(|(_, n)| n).sum();
        return Ended {
            leaked: Some(held),
            failed: vec![],
        };
    }
    let progress = |m: &str| eprintln!("clean-up: {m}");
    let outcome = tokio::select! {
        r = session.clean_up(args.limits.cleanup_timeout, &progress) => r,
        _ = signals::shutdown() => {
            session.mark_stopped();
            eprintln!(
                "clean-up interrupted: what is left stays in the journal; run `cloudswarm cleanup --run-id {run_id}`"
            );
            return Ended { leaked: None, failed: vec![] };
        }
    };
    for (k, ids) in &outcome.left {
        eprintln!("clean-up: still in the cloud: {k} {}", ids.join(" "));
    }
    if let Some(e) = &outcome.list_error {
        eprintln!(
            "clean-up: cannot list the cloud to check, so what is left is unknown: {e}; run `cloudswarm cleanup --run-id {run_id}`"
        );
    }
    let done: Vec<String> = outcome
        .deleted
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    if !done.is_empty() {
        eprintln!("clean-up: deleted {}", done.join(", "));
    }
    Ended {
        leaked: outcome.leaked,
        failed: outcome.failed,
    }
}

/// Prints the summary and what is left, writes the reports (each even if
/// another fails) and the SLA verdicts; the exit code: 1 if an SLA failed,
/// an error (exit 2) if a report could not be saved or a stage was refused.
fn report(
    args: &RunArgs,
    session: &Session,
    facts: &RunFacts<'_>,
    failed: &[(String, String, String)],
    monitor: &Monitor,
    driven: Driven,
    keep: &Keep,
) -> Result<i32> {
    let run_id = &session.run_id;
    let live: Vec<String> = facts
        .resources
        .iter()
        .filter(|(k, c)| c.alive > 0 && **k != Kind::Object)
        .map(|(k, c)| format!("{} {}", c.alive, k.as_str()))
        .collect();
    let mut warnings = vec![];
    if !live.is_empty() && !args.keep_resources {
        warnings.push(format!(
            "WARNING: resources of run {run_id} are left: {}; delete them with `cloudswarm cleanup --run-id {run_id}` (journal {})",
            live.join(", "),
            session.tracker.journal_path().display()
        ));
        for (k, id, why) in failed {
            warnings.push(format!("  {k} {id}: {why}"));
        }
    }
    let history = session.ctx.stats.lock().history.clone();
    let snap = session.ctx.stats.snapshot();
    outputs(
        args, facts, &snap, &history, &warnings, None, monitor, driven, keep,
    )
}

/// The summary, warnings, CSV and JSON reports (`extra` joins the JSON
/// report's keys) and SLA verdicts of a run, local or distributed; the
/// kept run's files, `--html`, `--junit` and the comparison with
/// `--baseline` (`output::finish`).
#[allow(clippy::too_many_arguments)]
fn outputs(
    args: &RunArgs,
    facts: &RunFacts<'_>,
    snap: &crate::stats::Snapshot,
    history: &[crate::stats::HistoryRow],
    warnings: &[String],
    extra: Option<(&str, serde_json::Value)>,
    monitor: &Monitor,
    driven: Driven,
    keep: &Keep,
) -> Result<i32> {
    println!("{}", output::summary_table(snap));
    if let Some(c) = &driven.capacity {
        println!(
            "Capacity search (--find-max):\n{}\n{}",
            c.table(),
            c.summary()
        );
    }
    for w in warnings {
        eprintln!("{w}");
    }
    let verdicts = monitor.verdicts(snap);
    let limited = history.iter().filter(|r| r.generator_limited).count();
    if limited > 0 {
        eprintln!(
            "note: the load generator limited {limited} of {} second(s) (in-flight slots full, arrivals dropped or runtime lag): the figures of those seconds describe cloudswarm, not the cloud (Generator Limited in the history CSV)",
            history.len()
        );
    }
    let mut unwritten = Vec::new();
    if let Some(prefix) = &args.csv
        && let Err(e) = output::write_csv(prefix, snap, history, &verdicts)
    {
        unwritten.push(format!("--csv: {e:#}"));
    }
    if let (Some(prefix), Some(c)) = (&args.csv, &driven.capacity)
        && let Err(e) = c.write_csv(std::path::Path::new(&format!("{prefix}_capacity.csv")))
    {
        unwritten.push(format!("--csv: {e}"));
    }
    let mut report = output::json_report(facts, snap, history, &verdicts);
    report["aborted_by_sla"] = serde_json::to_value(&driven.aborted).unwrap_or_default();
    if let Some(c) = &driven.capacity {
        report["capacity"] = serde_json::to_value(c).unwrap_or_default();
    }
    if let Some((k, v)) = extra {
        report[k] = v;
    }
    let ended = output::finish::finish(output::finish::Ending {
        report,
        snap,
        history,
        verdicts: &verdicts,
        kept: keep.run.as_ref(),
        baseline: keep.baseline.as_ref().zip(args.baseline.as_deref()),
        limits: args.gate.limits(),
        html: args.html.as_deref(),
        junit: args.junit.as_deref(),
    });
    unwritten.extend(ended.unwritten);
    if let Some(path) = &args.json
        && let Err(e) = output::write_json(path, &ended.report)
    {
        unwritten.push(format!("--json: {e:#}"));
    }
    let mut code = 0;
    if let Some(c) = &ended.comparison {
        println!(
            "\nCompared with {}:\n{}",
            c.base.source,
            output::compare::table(c)
        );
        if c.failed() {
            code = 1;
        }
    }
    for v in &verdicts {
        println!("SLA {:<40} {}", v.sla, v.describe());
        if !v.held {
            code = 1;
        }
    }
    if let Some(b) = &driven.aborted {
        eprintln!(
            "the run was stopped early (--abort-on-sla-failure): {} at {}",
            b.describe(),
            sla::clock(b.first_breach_at.unwrap_or(snap.now))
        );
        code = 1;
    }
    if let Some(e) = driven.stage_error {
        for u in &unwritten {
            eprintln!("error: report not saved: {u}");
        }
        bail!(config_err(e));
    }
    if !unwritten.is_empty() {
        bail!(config_err(format!(
            "reports not saved: {}",
            unwritten.join("; ")
        )));
    }
    Ok(code)
}

/// `run --master`: the same run, its users on workers. Waits for
/// `--expect-workers`, starts them under one run id, drives the load shape,
/// stops them (each cleans up what it made), quits them, then reports the
/// merged figures, with the workers, like a local run.
async fn run_master(
    args: RunArgs,
    profile: profile::Profile,
    slas: Vec<Sla>,
    baseline: Option<Report>,
) -> Result<i32> {
    for w in args.master.warnings() {
        eprintln!("{w}");
    }
    let name = profile.name.clone();
    // The workers get the profile's text with each spawn (check read it just now).
    let text: std::sync::Arc<str> = std::fs::read_to_string(&args.profile)
        .map_err(|e| config_err(format!("{}: {e}", args.profile.display())))?
        .into();
    let profile = (std::sync::Arc::new(profile), text);
    let master = Master::bind(args.master.config()).await?;
    if let Some(addr) = args.metrics_bind {
        crate::metrics::install();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| config_err(format!("--metrics-bind {addr}: {e}")))?;
        eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
        let m = master.clone();
        tokio::spawn(crate::metrics::serve_with(listener, move || {
            m.observe();
            crate::metrics::render_stats(&m.stats().lock())
        }));
    }
    let want = args.master.expect_workers as usize;
    eprintln!(
        "cloudswarm master on {}: waiting for {want} worker(s) (cloudswarm worker --master-host HOST --master-port {} -f {})",
        master.endpoint(),
        args.master.master_bind_port,
        args.profile.display()
    );
    let limit = args
        .master
        .expect_workers_max_wait
        .unwrap_or(Duration::from_secs(365 * 86_400));
    let have = tokio::select! {
        n = master.wait_for_workers(want, limit) => n,
        _ = signals::shutdown() => {
            master.quit();
            eprintln!("interrupted while waiting for workers");
            return Ok(1);
        }
    };
    if have < want {
        master.quit();
        bail!(
            "only {have} of {want} worker(s) joined within {}",
            humantime::format_duration(limit)
        );
    }
    let run_id = crate::naming::RunId::new();
    let t0 = Instant::now();
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let shape: Vec<Stage> = args.stages.as_ref().map_or_else(Vec::new, |s| s.0.clone());
    // Users from the first stage (-u when it is a rate= stage), the arrival
    // rate from the first stage or the search's start (else the profile's),
    // split by the master between the workers.
    let first = shape.first().map_or((args.users, args.rate), |st| {
        (st.users.unwrap_or(args.users), st.rate.unwrap_or(args.rate))
    });
    let arrival = shape
        .first()
        .and_then(|st| st.arrival_rate)
        .or(args.find_max.as_ref().map(|p| p.start));
    master
        .start(
            run_id.clone(),
            profile,
            crate::stats::Stats::new(),
            first,
            arrival,
            args.limits.stop_timeout.as_secs_f64(),
        )
        .map_err(config_err)?;
    eprintln!(
        "cloudswarm run {run_id} on {have} worker(s): profile {}",
        args.profile.display()
    );
    // The master's figures: its workers' reports merged, judged like a local run's.
    let monitor = Monitor::new(slas.clone(), started_at);
    let stats = master.stats();
    // Kept on this machine, without a journal: each worker keeps its own.
    let keep = keep(&args, &run_id, baseline)?;
    let target = crate::output::report::on_workers();
    let snapshot = || {
        let facts = RunFacts {
            run_id: &run_id,
            profile: &name,
            profile_text: &keep.profile_text,
            target: &target,
            started_at,
            ended_at: None,
            duration_s: t0.elapsed().as_secs_f64(),
            users: master.peak_users(),
            resources: &master.resources(),
            leaked: None,
        };
        let mut r = report_so_far(&facts, &stats, &monitor);
        r["workers"] = serde_json::to_value(master.workers()).unwrap_or_default();
        r
    };
    let work = async {
        let m = master.clone();
        let driven = until_stop(
            &args,
            &slas,
            &monitor,
            &*master,
            (
                &shape,
                |users, rate| master.set_target(users, rate),
                |r| master.set_arrival_rate(r),
            ),
            async {
                master.stopped_by_itself().await;
                "every worker went missing".to_string()
            },
            move || master_status_line(&m, t0),
        )
        .await;
        let peak_users = master.peak_users();
        let limit =
            args.limits.stop_timeout + args.limits.cleanup_timeout + Duration::from_secs(30);
        let progress = |m: &str| eprintln!("clean-up: {m}");
        let load_ended = crate::output::report::unix_now();
        tokio::select! {
            _ = master.stop(limit, &progress) => {}
            _ = signals::shutdown() => eprintln!("interrupted: the workers' runs stay in their journals"),
        }
        (peak_users, driven, load_ended)
    };
    let (peak_users, driven, load_ended) =
        kept::while_snapshotting(keep.run.as_ref(), snapshot, work).await;
    let duration_s = t0.elapsed().as_secs_f64();
    // What the workers said, before they quit (and leave the list).
    let resources = master.resources();
    let leaked = master.left();
    let listed = master.workers();
    master.quit();
    let dropped = master.dropped_frames();
    if dropped > 0 {
        eprintln!("master: dropped {dropped} malformed or unwanted frame(s) during the run");
    }
    let facts = RunFacts {
        run_id: &run_id,
        profile: &name,
        profile_text: &keep.profile_text,
        target: &target,
        started_at,
        ended_at: Some(crate::output::report::unix_now()),
        duration_s,
        users: peak_users,
        resources: &resources,
        leaked,
    };
    let mut warnings = vec![];
    if let Some((i, missing)) = master.swept_for_missing() {
        let missing: Vec<String> = missing.iter().map(u64::to_string).collect();
        warnings.push(format!(
            "note: worker(s) {} went missing; worker {i}'s clean-up also took what they made, found by the run's tag and marker. A resource only their journals name (a bucket cut off before its marker) is found by `cloudswarm cleanup --run-id {run_id}` on their machines",
            missing.join(", ")
        ));
    }
    match leaked {
        Some(0) => {}
        Some(n) => warnings.push(format!(
            "WARNING: {n} resource(s) of run {run_id} are left; delete them with `cloudswarm cleanup --run-id {run_id}` (from any machine: tags and markers find them)"
        )),
        None => warnings.push(format!(
            "WARNING: what run {run_id} left is unknown (a worker went missing or could not list the cloud); run `cloudswarm cleanup --run-id {run_id}`"
        )),
    }
    let workers = serde_json::to_value(&listed).unwrap_or_default();
    for w in &listed {
        eprintln!(
            "worker {} {}: {} requests, {} failures{}",
            w.index,
            w.id,
            w.num_requests,
            w.num_failures,
            if w.missing { " (missing)" } else { "" }
        );
    }
    // The SLAs' final verdicts are of the load (the workers' last reports
    // count as of the stop), not of the clean-up.
    monitor.evaluate_final(&stats, load_ended);
    let history = stats.lock().history.clone();
    let snap = stats.snapshot();
    // Let the workers' quit messages leave before the process does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    outputs(
        &args,
        &facts,
        &snap,
        &history,
        &warnings,
        Some(("workers", workers)),
        &monitor,
        driven,
        &keep,
    )
}

/// The status line of a distributed run.
fn master_status_line(m: &Master, t0: Instant) -> String {
    let snap = m.stats().snapshot();
    let t = &snap.total;
    let (target, _) = m.target();
    let workers = m.workers();
    let missing = workers.iter().filter(|w| w.missing).count();
    let rates = m.arrival_rates();
    let arrivals = if rates.is_empty() {
        String::new()
    } else {
        let each: Vec<String> = rates
            .iter()
            .map(|(c, r)| format!("{c} {}", crate::units::format_rate(*r)))
            .collect();
        let dropped: u64 = snap.dropped.values().sum();
        format!("  arrivals {}  dropped {dropped}", each.join(", "))
    };
    format!(
        "[{:>6}] {:<9} workers {}{}  users {}/{}  reqs {}  fails {} ({:.2}%)  rps {:.1}  p50 {:.0}ms p95 {:.0}ms  throttled {}{arrivals}",
        humantime::format_duration(Duration::from_secs(t0.elapsed().as_secs())).to_string(),
        match m.state() {
            RunState::CleaningUp => "cleaning up",
            s => s.as_str(),
        },
        workers.len() - missing,
        if missing > 0 {
            format!(" ({missing} missing)")
        } else {
            String::new()
        },
        m.user_count(),
        target,
        t.num_requests,
        t.num_failures,
        t.failure_ratio() * 100.0,
        t.current_rps,
        snap.current_percentiles_ms[0],
        snap.current_percentiles_ms[5],
        t.num_throttled,
    )
}

/// One status line: state, users, requests, failures, rates, percentiles,
/// live resources, and for open classes the arrival rates and the dropped.
pub fn status_line(engine: &Engine, t0: Instant) -> String {
    let snap = engine.ctx.stats.snapshot();
    let t = &snap.total;
    let (target, _) = engine.target();
    let counts = engine.ctx.tracker.counts();
    let live = |k: Kind| counts.get(&k).map_or(0, |c| c.alive);
    // Saturated if a user had to wait for a slot since the last line, or all are busy now.
    let saturated = engine.saturated();
    let arrivals = if engine.has_arrivals() {
        let dropped: u64 = snap.dropped.values().sum();
        format!("  arrivals {}  dropped {dropped}", engine.arrival_summary())
    } else {
        String::new()
    };
    format!(
        "[{:>6}] {:<9} users {}/{}  reqs {}  fails {} ({:.2}%)  rps {:.1}  p50 {:.0}ms p95 {:.0}ms  throttled {}  live: {} inst, {} vol, {} bkt{arrivals}{}{}",
        humantime::format_duration(Duration::from_secs(t0.elapsed().as_secs())).to_string(),
        engine.state().as_str(),
        engine.user_count(),
        target,
        t.num_requests,
        t.num_failures,
        t.failure_ratio() * 100.0,
        t.current_rps,
        snap.current_percentiles_ms[0],
        snap.current_percentiles_ms[5],
        t.num_throttled,
        live(Kind::Instance),
        live(Kind::Volume),
        live(Kind::Bucket),
        if snap.user_panics > 0 {
            format!("  panics {} (users replaced)", snap.user_panics)
        } else {
            String::new()
        },
        if saturated {
            "  SATURATED: every in-flight slot is busy (--max-inflight), users are waiting"
        } else {
            ""
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse() {
        let s = parse_stages("10:30s,50:2m:5,0:30s").unwrap().0;
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].users, Some(50));
        assert_eq!(s[1].duration, Duration::from_secs(120));
        assert_eq!(s[1].rate, Some(5.0));
        assert!(parse_stages("10").is_err());
        assert!(parse_stages("x:30s").is_err());
        assert!(parse_stages("10:soon").is_err());
        assert!(parse_stages("").is_err());
    }

    #[test]
    fn arrival_rate_stages_parse_and_mixes_that_make_no_sense_are_refused() {
        let s = parse_stages("rate=10/s:1m, rate=90/min:5m,20:30s:4,rate=50/s:10s").unwrap();
        assert!(s.sets_arrival_rate());
        let s = s.0;
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            Stage {
                users: None,
                duration: Duration::from_secs(60),
                rate: None,
                arrival_rate: Some(10.0)
            }
        );
        assert_eq!(s[1].arrival_rate, Some(1.5));
        assert_eq!(
            (s[2].users, s[2].rate, s[2].arrival_rate),
            (Some(20), Some(4.0), None)
        );
        assert!(!parse_stages("10:30s").unwrap().sets_arrival_rate());
        for (bad, says) in [
            ("rate=10/s:1m:5", "is not rate=ARRIVALS:DURATION"),
            ("rate=10/s", "is not rate=ARRIVALS:DURATION"),
            ("10:1m:rate=5/s", "an arrival rate is a stage of its own"),
            ("rate=0/s:1m", "must be above zero"),
            ("rate=-2/s:1m", "must be above zero"),
            ("rate=10:1m", "is not a rate"),
            ("rate=10/s:soon", "is not a duration"),
        ] {
            let e = parse_stages(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.starts_with(&format!("stage `{bad}`")), "{bad}: {e}");
        }
    }

    #[test]
    fn stages_beyond_the_engine_limits_are_refused_when_parsed() {
        let s = parse_stages(&format!("{MAX_USERS}:1s:{MAX_RATE}"))
            .unwrap()
            .0;
        assert_eq!((s[0].users, s[0].rate), (Some(MAX_USERS), Some(MAX_RATE)));
        assert_eq!(
            parse_stages("10:1s,1000001:30s").unwrap_err(),
            "stage `1000001:30s`: 1000001 users; at most 1000000"
        );
        assert_eq!(
            parse_stages("10:1s:100000.5").unwrap_err(),
            "stage `10:1s:100000.5`: hatch rate 100000.5; at most 100000 users/s"
        );
        assert!(parse_stages("18446744073709551616:1s").is_err());
        for bad in ["10:1s:0", "10:1s:-1", "10:1s:inf", "10:1s:NaN"] {
            assert!(
                parse_stages(bad)
                    .unwrap_err()
                    .contains("is not a hatch rate"),
                "{bad}"
            );
        }
        assert!(
            parse_stages("10:366d")
                .unwrap_err()
                .contains("longer than a year")
        );
    }
}
