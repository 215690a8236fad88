//! The dashboard's state (the current run, its stop and clean-up) and the
//! HTTP API the page and scripts use, named after Locust's where they fit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::cluster::master::Master;
use crate::engine::{MAX_RATE, MAX_USERS, RunState};
use crate::output;
use crate::output::kept::{self, KeptRun};
use crate::output::sla::{self, Monitor, Sla, SlaStatus};
use crate::resources::Kind;
use crate::session::{CleanupOutcome, Limits, Session, Spec};
use crate::stats::{PERCENTILES, Snapshot, percentile_of};
use crate::target::Clients;

/// Clean-up of the current run, as the page shows it.
#[derive(Default, Clone, serde::Serialize)]
pub struct CleanupView {
    pub running: bool,
    pub log: Vec<String>,
    pub outcome: Option<CleanupOutcome>,
}

/// A run the dashboard started (the current one, or the last one).
pub struct Live {
    pub session: Session,
    /// The master whose workers run the users (`serve --master`); None: the local engine.
    pub master: Option<Arc<Master>>,
    pub profile: String,
    stopping: AtomicBool,
    pub cleanup: Mutex<CleanupView>,
    /// Unix seconds when the run stopped.
    pub ended_at: Mutex<Option<f64>>,
    run_timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The run's SLAs, judged every second.
    pub monitor: Arc<Monitor>,
    /// Stop the run at the first SLA breach.
    abort_on_sla: bool,
    /// The SLA whose breach stopped the run.
    pub aborted_by: Mutex<Option<SlaStatus>>,
    /// The profile file's text when the run started (for its reports).
    pub profile_text: String,
    /// The run's folder in the state directory (None: it could not be made).
    kept: Option<KeptRun>,
    /// Rewrites the kept run's snapshot until its final report is written.
    snapshots: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The capacity search the form asked for, if any.
    pub capacity: Option<Arc<crate::capacity::Running>>,
}

/// The dashboard's shared state.
pub struct App {
    pub clients: Clients,
    pub limits: Limits,
    pub token: Option<String>,
    /// The login cookie's name (per port, so two dashboards on a host do not
    /// clash) and value (random per process: the token never sits in a cookie).
    pub cookie_name: String,
    pub cookie_value: String,
    pub profiles_dir: PathBuf,
    pub static_dir: PathBuf,
    current: Mutex<Option<Arc<Live>>>,
    /// Serialises starts (a start preflights the cloud, which takes a while).
    starting: tokio::sync::Mutex<()>,
    /// Set at shutdown: no new swarm starts.
    closing: AtomicBool,
    /// `serve --master`: runs go to the workers that joined it.
    pub master: Option<Arc<Master>>,
    /// Runs kept in the state directory (`--keep-runs`; 0: all).
    pub keep_runs: usize,
}

impl Live {
    /// The run's state, from the engine or the master.
    pub fn state(&self) -> RunState {
        match &self.master {
            Some(m) => m.state(),
            None => self.session.engine.state(),
        }
    }

    fn set_target(&self, users: u64, rate: f64) -> Result<(), String> {
        match &self.master {
            Some(m) => m.set_target(users, rate),
            None => self.session.engine.set_target(users, rate),
        }
    }

    /// Sets the open classes' arrival rate in all (per second).
    fn set_arrival_rate(&self, total: f64) -> Result<(), String> {
        match &self.master {
            Some(m) => m.set_arrival_rate(total),
            None => self.session.engine.set_arrival_rate(total),
        }
    }

    /// Each open class's arrival rate now (per second).
    fn arrival_rates(&self) -> Vec<(String, f64)> {
        match &self.master {
            Some(m) => m.arrival_rates(),
            None => self.session.engine.arrival_rates(),
        }
    }

    pub fn user_count(&self) -> u64 {
        match &self.master {
            Some(m) => m.user_count(),
            None => self.session.engine.user_count(),
        }
    }

    fn target(&self) -> (u64, f64) {
        match &self.master {
            Some(m) => m.target(),
            None => self.session.engine.target(),
        }
    }

    pub fn peak_users(&self) -> u64 {
        match &self.master {
            Some(m) => m.peak_users(),
            None => self.session.engine.peak_users(),
        }
    }

    /// Users per class: the engine's, or summed over the workers' reports.
    fn user_counts(&self) -> Vec<(String, u64)> {
        match &self.master {
            Some(m) => m.user_counts(&self.session.engine.profile),
            None => self.session.engine.user_counts(),
        }
    }

    /// The run's resources: the tracker's, or summed over the workers'.
    pub fn resources(&self) -> std::collections::BTreeMap<Kind, crate::resources::KindCounts> {
        match &self.master {
            Some(m) => m.resources(),
            None => self.session.tracker.counts(),
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The state as Locust's API names it (`spawning`, `cleanup`...).
pub fn locust_state(s: RunState) -> &'static str {
    match s {
        RunState::Ready => "ready",
        RunState::Hatching => "spawning",
        RunState::Running => "running",
        RunState::Stopping => "stopping",
        RunState::CleaningUp => "cleanup",
        RunState::Stopped => "stopped",
    }
}

/// A JSON error answer with the field it is about.
fn bad(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"success": false, "field": field, "message": message.into()})),
    )
        .into_response()
}

/// Slowest hatch rate the form takes (one user every 100 s).
const MIN_RATE: f64 = 0.01;

/// Parsed `POST /swarm` fields.
#[derive(Debug, PartialEq)]
pub struct SwarmForm {
    pub user_count: u64,
    pub spawn_rate: f64,
    pub profile: Option<String>,
    pub run_time: Option<Duration>,
    /// Arrivals per second of the open classes together (`20/s`), split
    /// in proportion to their profile rates; None: as they are.
    pub arrival_rate: Option<f64>,
    /// The SLAs (`sla`: repeated, or one per line); None when the field is
    /// absent: the profile's `sla = [...]`.
    pub slas: Option<Vec<Sla>>,
    /// Stop the run at the first SLA breach.
    pub abort_on_sla_failure: bool,
    /// A capacity search (`find_max`, START:STEP:HOLD) and the failure and
    /// throttle rates a step may not exceed.
    pub find_max: Option<crate::capacity::Plan>,
    pub find_max_limits: crate::capacity::Limits,
}

/// Validates the form fields; errors name the field.
pub fn parse_swarm_form(f: &HashMap<String, String>) -> Result<SwarmForm, (&'static str, String)> {
    let get = |k: &str| f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let users = get("user_count").ok_or(("user_count", "enter a number of users".to_string()))?;
    let user_count: u64 = users.parse().map_err(|_| {
        (
            "user_count",
            format!("`{users}` is not a whole number of users (1 to {MAX_USERS})"),
        )
    })?;
    if user_count == 0 || user_count > MAX_USERS {
        return Err((
            "user_count",
            format!("{user_count} users: use 1 to {MAX_USERS} (stop the swarm to go to zero)"),
        ));
    }
    let rate = get("spawn_rate").or_else(|| get("hatch_rate")).ok_or((
        "spawn_rate",
        "enter a hatch rate (users per second)".to_string(),
    ))?;
    let spawn_rate: f64 = rate
        .parse()
        .ok()
        .filter(|r: &f64| r.is_finite() && *r >= MIN_RATE && *r <= MAX_RATE)
        .ok_or((
            "spawn_rate",
            format!("`{rate}` is not a hatch rate: use {MIN_RATE} to {MAX_RATE} users/s"),
        ))?;
    let run_time = match get("run_time") {
        None => None,
        Some(t) => {
            let d = crate::units::parse_duration(t).map_err(|e| ("run_time", e))?;
            if d.is_zero() {
                return Err(("run_time", "a run time must be longer than 0s".into()));
            }
            Some(d)
        }
    };
    let arrival_rate = get("arrival_rate")
        .map(|r| crate::units::parse_rate(r).map_err(|e| ("arrival_rate", e)))
        .transpose()?;
    // Present, even empty, the field says which SLAs: the form sends what
    // it shows (the profile's, edited).
    let slas = f
        .get("sla")
        .map(|t| sla::parse_list(t.lines().map(str::trim).filter(|l| !l.is_empty())))
        .transpose()
        .map_err(|e| ("sla", e))?;
    let abort_on_sla_failure = match get("abort_on_sla_failure") {
        None => false,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => true,
            "off" | "false" | "0" | "no" => false,
            _ => {
                return Err((
                    "abort_on_sla_failure",
                    format!("`{v}` is not true or false"),
                ));
            }
        },
    };
    let find_max = get("find_max")
        .map(|p| crate::capacity::parse_plan(p).map_err(|e| ("find_max", e)))
        .transpose()?;
    if find_max.is_some() && arrival_rate.is_some() {
        return Err((
            "find_max",
            "a capacity search sets the arrival rate itself: leave the arrival rate empty".into(),
        ));
    }
    let mut find_max_limits = crate::capacity::Limits::default();
    for (field, limit) in [
        ("find_max_failure_rate", &mut find_max_limits.failure_rate),
        ("find_max_throttle_rate", &mut find_max_limits.throttle_rate),
    ] {
        if let Some(v) = get(field) {
            *limit = crate::capacity::parse_ratio(v).map_err(|e| (field, e))?;
        }
    }
    Ok(SwarmForm {
        user_count,
        spawn_rate,
        profile: get("profile").map(str::to_string),
        run_time,
        arrival_rate,
        slas,
        abort_on_sla_failure,
        find_max,
        find_max_limits,
    })
}

impl App {
    pub fn new(
        clients: Clients,
        limits: Limits,
        token: Option<String>,
        port: u16,
        profiles_dir: PathBuf,
        static_dir: PathBuf,
        master: Option<Arc<Master>>,
    ) -> App {
        use rand::Rng;
        let mut rng = rand::rng();
        let cookie_value: String = (0..32)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect();
        App {
            clients,
            limits,
            token,
            cookie_name: format!("cloudswarm_session_{port}"),
            cookie_value,
            profiles_dir,
            static_dir,
            current: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
            master,
            keep_runs: kept::DEFAULT_KEEP_RUNS,
        }
    }

    pub fn current(&self) -> Option<Arc<Live>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Profile names (file stems) in the profiles directory, sorted.
    pub fn profiles(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.profiles_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        v.sort();
        v
    }

    /// The SLAs of profile `name` as written (none if it does not load:
    /// starting it says why).
    pub fn profile_slas(&self, name: &str) -> Vec<String> {
        crate::profile::load(&self.profiles_dir.join(format!("{name}.toml")))
            .map(|p| p.slas.into_iter().map(|s| s.text).collect())
            .unwrap_or_default()
    }

    /// The state the top bar shows.
    pub fn state(&self) -> RunState {
        match self.current() {
            None => RunState::Ready,
            Some(l) => l.state(),
        }
    }

    /// Starts a run, or retunes the running one.
    async fn start_or_edit(self: &Arc<Self>, f: SwarmForm) -> Response {
        let _one = self.starting.lock().await;
        if self.closing.load(Ordering::SeqCst) {
            return bad(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "the dashboard is shutting down",
            );
        }
        if let Some(live) = self.current()
            && let Some(answer) = self.edit(&live, &f)
        {
            return answer;
        }
        self.start(f).await
    }

    /// Retunes the running swarm (or says why a new one cannot start yet);
    /// None when the last run is over and a new one may start.
    fn edit(self: &Arc<Self>, live: &Arc<Live>, f: &SwarmForm) -> Option<Response> {
        {
            let mut state = live.state();
            if live.stopping.load(Ordering::SeqCst)
                && matches!(
                    state,
                    RunState::Ready | RunState::Hatching | RunState::Running
                )
            {
                state = RunState::Stopping;
            }
            match state {
                RunState::Hatching | RunState::Running => {
                    if let Some(p) = &f.profile
                        && p.trim_end_matches(".toml") != live.profile
                    {
                        return Some(bad(
                            StatusCode::CONFLICT,
                            Some("profile"),
                            format!(
                                "a swarm of `{}` is running: stop it before starting `{p}`",
                                live.profile
                            ),
                        ));
                    }
                    if f.find_max.is_some() {
                        return Some(bad(
                            StatusCode::CONFLICT,
                            Some("find_max"),
                            "a capacity search is set when a swarm starts: stop this one to start one with a search",
                        ));
                    }
                    if f.slas.is_some() || f.abort_on_sla_failure {
                        return Some(bad(
                            StatusCode::CONFLICT,
                            Some("sla"),
                            "SLAs are set when a swarm starts: this one keeps its own (stop it to start one with others)",
                        ));
                    }
                    if let Some(r) = f.arrival_rate
                        && let Err(e) = live.set_arrival_rate(r)
                    {
                        return Some(bad(StatusCode::BAD_REQUEST, Some("arrival_rate"), e));
                    }
                    if let Err(e) = live.set_target(f.user_count, f.spawn_rate) {
                        return Some(bad(StatusCode::CONFLICT, None, e));
                    }
                    if let Some(d) = f.run_time {
                        self.arm_timer(live, d);
                    }
                    return Some(
                        Json(json!({
                            "success": true,
                            "message": format!("Swarm changed: {} users at {} users/s{}", f.user_count, f.spawn_rate, arrivals_note(f)),
                            "run_id": live.session.run_id,
                        }))
                        .into_response(),
                    );
                }
                RunState::Stopping | RunState::CleaningUp => {
                    return Some(bad(
                        StatusCode::CONFLICT,
                        None,
                        "the last swarm is still stopping or cleaning up: start again when it has stopped",
                    ));
                }
                RunState::Ready | RunState::Stopped => {}
            }
            if live
                .cleanup
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running
            {
                return Some(bad(
                    StatusCode::CONFLICT,
                    None,
                    "a clean-up is running: start again when it is done",
                ));
            }
        }
        None
    }

    /// Starts a new run of the form's profile.
    async fn start(self: &Arc<Self>, f: SwarmForm) -> Response {
        let Some(name) = f.profile.as_deref() else {
            return bad(StatusCode::BAD_REQUEST, Some("profile"), "choose a profile");
        };
        let name = name.trim_end_matches(".toml");
        if !self.profiles().iter().any(|p| p == name) {
            return bad(
                StatusCode::BAD_REQUEST,
                Some("profile"),
                format!(
                    "unknown profile `{name}` (known: {})",
                    self.profiles().join(", ")
                ),
            );
        }
        let slas = match self.slas_for(name, &f) {
            Ok(s) => s,
            Err(answer) => return answer,
        };
        if f.find_max.is_some() {
            let path = self.profiles_dir.join(format!("{name}.toml"));
            let open = crate::profile::load(&path)
                .map(|p| p.users.iter().any(|u| u.arrival.is_some()))
                .unwrap_or(true);
            if !open {
                return bad(
                    StatusCode::BAD_REQUEST,
                    Some("find_max"),
                    format!(
                        "a capacity search raises an arrival rate, but no class of profile `{name}` has one: give a class `arrival_rate = \"1/s\"` (its users are the pool)"
                    ),
                );
            }
        }
        let profile_text = std::fs::read_to_string(self.profiles_dir.join(format!("{name}.toml")))
            .unwrap_or_default();
        kept::prune_for_new_run(&self.limits.state_dir(), self.keep_runs);
        let session = match &self.master {
            Some(m) => match self.prepare_on_workers(m, name, &f) {
                Ok(s) => s,
                Err(answer) => return answer,
            },
            None => {
                let session = match self.prepare(name).await {
                    Ok(s) => s,
                    Err(answer) => return answer,
                };
                let first_rate = f.find_max.as_ref().map(|p| p.start).or(f.arrival_rate);
                if let Some(r) = first_rate
                    && let Err(e) = session.engine.set_arrival_rate(r)
                {
                    let field = if f.find_max.is_some() {
                        "find_max"
                    } else {
                        "arrival_rate"
                    };
                    return bad(StatusCode::BAD_REQUEST, Some(field), e);
                }
                if let Err(e) = session.start(f.user_count, f.spawn_rate) {
                    return bad(StatusCode::BAD_REQUEST, None, e);
                }
                session
            }
        };
        let run_id = session.run_id.clone();
        let started_at = session.started_at;
        let slas_for_search = slas.clone();
        tracing::info!(
            run_id = %run_id,
            profile = name,
            users = f.user_count,
            "swarm started"
        );
        let live = Arc::new(Live {
            session,
            master: self.master.clone(),
            profile: name.to_string(),
            stopping: AtomicBool::new(false),
            cleanup: Mutex::new(CleanupView::default()),
            ended_at: Mutex::new(None),
            run_timer: Mutex::new(None),
            monitor: Arc::new(Monitor::new(slas.clone(), started_at)),
            abort_on_sla: f.abort_on_sla_failure,
            aborted_by: Mutex::new(None),
            profile_text,
            kept: KeptRun::open(&self.limits.state_dir(), &run_id)
                .inspect_err(|e| tracing::warn!(run_id = %run_id, "the run is not kept: {e:#}"))
                .ok(),
            snapshots: Mutex::new(None),
            capacity: f
                .find_max
                .clone()
                .map(|p| Arc::new(crate::capacity::Running::new(p))),
        });
        if let Some(d) = f.run_time {
            self.arm_timer(&live, d);
        }
        self.search_capacity(&live, slas_for_search, f.find_max_limits);
        self.watch_slas(&live);
        self.keep_snapshots(&live);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(live);
        Json(json!({
            "success": true,
            "message": format!("Swarming started: {} users at {} users/s{}", f.user_count, f.spawn_rate, arrivals_note(&f)),
            "run_id": run_id,
        }))
        .into_response()
    }

    /// The SLAs of a run of profile `name`: the form's, or (when the form
    /// has no `sla` field) the profile's; the answer to give when they are
    /// wrong, before anything starts.
    #[allow(clippy::result_large_err)]
    fn slas_for(&self, name: &str, f: &SwarmForm) -> Result<Vec<Sla>, Response> {
        let slas = match &f.slas {
            Some(s) => s.clone(),
            None => {
                let path = self.profiles_dir.join(format!("{name}.toml"));
                let profile = crate::profile::load(&path)
                    .map_err(|e| bad(StatusCode::BAD_REQUEST, Some("profile"), e.to_string()))?;
                sla::for_run(&profile, &path, &[])
                    .map_err(|e| bad(StatusCode::BAD_REQUEST, Some("profile"), e))?
            }
        };
        if f.abort_on_sla_failure && slas.is_empty() {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                Some("sla"),
                "aborting on an SLA failure needs an SLA: enter one (e.g. p95(ec2:RunInstances)<2s)",
            ));
        }
        Ok(slas)
    }

    /// Judges the run's SLAs once a second until it has stopped (then once
    /// more: the final evaluation), and stops the run at the first breach
    /// when its form asked for that.
    fn watch_slas(self: &Arc<Self>, live: &Arc<Live>) {
        if live.monitor.is_empty() {
            return;
        }
        let (app, live) = (self.clone(), live.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // When the load ended (the run seen stopping): the final
            // verdicts are of the load, not of the stop and clean-up.
            let mut load_ended = None;
            loop {
                tick.tick().await;
                let state = live.state();
                if matches!(
                    state,
                    RunState::Stopping | RunState::CleaningUp | RunState::Stopped
                ) {
                    let at = *load_ended.get_or_insert_with(unix_now);
                    if state == RunState::Stopped {
                        live.monitor.evaluate_final(&live.session.ctx.stats, at);
                        break;
                    }
                    continue;
                }
                let broke = live.monitor.evaluate(&live.session.ctx.stats, false);
                if let Some(b) = broke
                    && live.abort_on_sla
                    && matches!(live.state(), RunState::Hatching | RunState::Running)
                    && !live.stopping.load(Ordering::SeqCst)
                {
                    tracing::warn!(run_id = %live.session.run_id, "{}: stopping the run", b.describe());
                    *live.aborted_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
                    app.stop(&live);
                }
            }
        });
    }

    /// Starts a run of profile `name` on the master's workers; the answer
    /// to give when that fails (built once per failed start: its size is moot).
    #[allow(clippy::result_large_err)]
    fn prepare_on_workers(
        &self,
        master: &Arc<Master>,
        name: &str,
        f: &SwarmForm,
    ) -> Result<Session, Response> {
        let path = self.profiles_dir.join(format!("{name}.toml"));
        let (profile, text) = match crate::profile::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                std::fs::read_to_string(&path)
                    .map(|t| (p, t))
                    .map_err(|e| e.to_string())
            }) {
            Ok(pt) => pt,
            Err(e) => return Err(bad(StatusCode::BAD_REQUEST, Some("profile"), e)),
        };
        let spec = Spec {
            profile_path: &path,
            clients: self.clients.clone(),
            state_dir: self.limits.state_dir(),
            caps: self.limits.caps(),
            max_inflight: 1,
            run_id: None,
            name_base: 0,
            own_names_only: false,
        };
        let run_id = crate::naming::RunId::new();
        let stats = crate::stats::Stats::new();
        let session = Session::for_master(profile.clone(), spec, run_id.clone(), stats.clone())
            .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, None, format!("{e:#}")))?;
        master
            .start(
                run_id,
                (Arc::new(profile), text.into()),
                stats,
                (f.user_count, f.spawn_rate),
                f.find_max.as_ref().map(|p| p.start).or(f.arrival_rate),
                self.limits.stop_timeout.as_secs_f64(),
            )
            .map_err(|e| bad(StatusCode::CONFLICT, None, e))?;
        Ok(session)
    }

    /// Loads profile `name` and prepares its run (preflight, journal,
    /// engine); the answer to give when that fails.
    async fn prepare(&self, name: &str) -> Result<Session, Response> {
        let path = self.profiles_dir.join(format!("{name}.toml"));
        let profile = match crate::profile::load(&path) {
            Ok(p) => p,
            Err(e) => return Err(bad(StatusCode::BAD_REQUEST, Some("profile"), e.to_string())),
        };
        let (clients, state_dir, caps) = (
            self.clients.clone(),
            self.limits.state_dir(),
            self.limits.caps(),
        );
        let max_inflight = self.limits.max_inflight as usize;
        let p = path.clone();
        // In a task of its own: a panic while preparing is answered, not a
        // dropped connection.
        let prepared = tokio::spawn(async move {
            let spec = Spec {
                profile_path: &p,
                clients,
                state_dir,
                caps,
                max_inflight,
                run_id: None,
                name_base: 0,
                own_names_only: false,
            };
            Session::prepare(profile, spec).await
        })
        .await;
        match prepared {
            Ok(Ok(s)) => Ok(s),
            // The cloud did not answer or refused us: not the form's fault.
            Ok(Err(e)) => Err(bad(StatusCode::BAD_GATEWAY, None, format!("{e:#}"))),
            Err(e) => {
                let why = panic_message(e);
                tracing::error!(profile = name, "starting a swarm failed: {why}");
                Err(bad(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    None,
                    format!(
                        "starting the swarm failed (a bug in cloudswarm, please report it): {why}"
                    ),
                ))
            }
        }
    }

    /// Stops the run after `d` from now (replacing an earlier run time).
    /// Runs the form's capacity search, if any, on the run (its engine or
    /// its workers), then stops the run; a run stopped first ends the
    /// search with the steps so far.
    fn search_capacity(
        self: &Arc<Self>,
        live: &Arc<Live>,
        slas: Vec<Sla>,
        limits: crate::capacity::Limits,
    ) {
        let Some(cap) = live.capacity.clone() else {
            return;
        };
        let (app, live) = (self.clone(), live.clone());
        tokio::spawn(async move {
            let judge = crate::capacity::sla_judge(&slas);
            let search = async {
                match &live.master {
                    Some(m) => {
                        crate::capacity::search(&**m, &cap.plan, limits, &judge, &cap.steps).await
                    }
                    None => {
                        let engine = &*live.session.engine;
                        crate::capacity::search(engine, &cap.plan, limits, &judge, &cap.steps).await
                    }
                }
            };
            let stopped = async {
                while !live.stopping.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            let outcome = tokio::select! {
                o = search => o,
                _ = stopped => {
                    let done = cap.steps.lock().map(|s| s.clone()).unwrap_or_default();
                    crate::capacity::cut_short(live.session.run_id.as_str(), done, "the run was stopped")
                }
            };
            tracing::info!(run_id = %live.session.run_id, "capacity search: {}", outcome.summary());
            *cap.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            app.stop(&live);
        });
    }

    fn arm_timer(self: &Arc<Self>, live: &Arc<Live>, d: Duration) {
        let (app, l) = (self.clone(), live.clone());
        let timer = tokio::spawn(async move {
            tokio::time::sleep(d).await;
            app.stop(&l);
        });
        if let Some(old) = live
            .run_timer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(timer)
        {
            old.abort();
        }
    }

    /// Stops a run (once): users finish or abandon their task, then clean-up.
    /// The state says `stopping` before this returns.
    fn stop(self: &Arc<Self>, live: &Arc<Live>) -> bool {
        if live.stopping.swap(true, Ordering::SeqCst) {
            return false;
        }
        if live.master.is_none() {
            live.session.mark_stopping();
        }
        if let Some(t) = live
            .run_timer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
        let (app, live) = (self.clone(), live.clone());
        tokio::spawn(async move {
            if let Some(m) = live.master.clone() {
                app.stop_workers(&live, &m).await;
                return;
            }
            let (a, l) = (app.clone(), live.clone());
            let stopped = tokio::spawn(async move {
                l.session.stop(a.limits.stop_timeout).await;
            })
            .await;
            if let Err(e) = stopped {
                tracing::error!("stopping run {}: {e}", live.session.run_id);
            }
            *live.ended_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(unix_now());
            if app.claim_cleanup(&live) {
                app.run_cleanup(&live).await;
            }
        });
        true
    }

    /// Stops a run on workers: each stops its users and cleans up what it
    /// made; the clean-up log shows who is still at it.
    async fn stop_workers(&self, live: &Arc<Live>, m: &Arc<Master>) {
        {
            let mut c = live.cleanup.lock().unwrap_or_else(|p| p.into_inner());
            c.running = true;
            c.log.clear();
            c.log
                .push("stopping the workers; each cleans up what it made".into());
        }
        let l = live.clone();
        let progress = move |msg: &str| {
            let mut c = l.cleanup.lock().unwrap_or_else(|p| p.into_inner());
            if c.log.len() < 500 {
                c.log.push(msg.to_string());
            }
        };
        let limit =
            self.limits.stop_timeout + self.limits.cleanup_timeout + Duration::from_secs(30);
        m.stop(limit, &progress).await;
        *live.ended_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(unix_now());
        let resources = m.resources();
        let outcome = CleanupOutcome {
            deleted: resources
                .iter()
                .filter(|(k, c)| c.deleted > 0 && **k != Kind::Object)
                .map(|(k, c)| (k.as_str().to_string(), c.deleted))
                .collect(),
            leaked: m.left(),
            list_error: m.left().is_none().then(|| {
                format!(
                    "a worker went missing or could not list the cloud: run `cloudswarm cleanup --run-id {}`",
                    live.session.run_id
                )
            }),
            ..Default::default()
        };
        let mut c = live.cleanup.lock().unwrap_or_else(|p| p.into_inner());
        c.log.push(match outcome.leaked {
            Some(0) => "the workers cleaned up: nothing of the run is left".into(),
            Some(n) => format!("the workers left {n} resource(s)"),
            None => "what the workers left is unknown".into(),
        });
        c.outcome = Some(outcome);
        drop(c);
        // Kept before the clean-up says it is done: a shutdown waits for that.
        self.keep_final(live);
        live.cleanup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running = false;
    }

    /// Marks a clean-up of `live` as running; false when one already is.
    fn claim_cleanup(&self, live: &Live) -> bool {
        let mut c = live.cleanup.lock().unwrap_or_else(|p| p.into_inner());
        if c.running {
            return false;
        }
        c.running = true;
        c.log.clear();
        drop(c);
        live.session.mark_cleaning_up();
        true
    }

    /// Runs a claimed clean-up, recording progress for the page; whatever
    /// happens (even a panic), it ends with the run `stopped`.
    async fn run_cleanup(&self, live: &Arc<Live>) {
        let l = live.clone();
        let timeout = self.limits.cleanup_timeout;
        let work = tokio::spawn(async move {
            let l2 = l.clone();
            let progress = move |m: &str| {
                let mut c = l2.cleanup.lock().unwrap_or_else(|p| p.into_inner());
                if c.log.len() < 500 {
                    c.log.push(m.to_string());
                }
            };
            l.session.clean_up(timeout, &progress).await
        })
        .await;
        let outcome = work.unwrap_or_else(|e| CleanupOutcome {
            list_error: Some(format!(
                "clean-up failed ({e}): run `cloudswarm cleanup --run-id {}`",
                live.session.run_id
            )),
            ..Default::default()
        });
        tracing::info!(run_id = %live.session.run_id, ?outcome.leaked, "clean-up done");
        live.cleanup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .outcome = Some(outcome);
        live.session.mark_stopped();
        // Kept before the clean-up says it is done: a shutdown waits for that.
        self.keep_final(live);
        live.cleanup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running = false;
    }

    /// Rewrites the kept run's snapshot every few seconds until its final
    /// report is written.
    fn keep_snapshots(self: &Arc<Self>, live: &Arc<Live>) {
        let Some(k) = live.kept.clone() else { return };
        let (app, l) = (self.clone(), live.clone());
        let task = tokio::spawn(async move {
            kept::snapshots(k, move || app.report_of(&l, false)).await;
        });
        *live.snapshots.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Writes the kept run's final outputs (again after each clean-up).
    fn keep_final(&self, live: &Live) {
        if let Some(t) = live
            .snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
        if live.kept.is_none() {
            return;
        }
        let (snap, history) = {
            let data = live.session.ctx.stats.lock();
            (data.snapshot(), data.history.clone())
        };
        let verdicts = live.monitor.verdicts(&snap);
        let ended = output::finish::finish(output::finish::Ending {
            report: self.report_of(live, true),
            snap: &snap,
            history: &history,
            verdicts: &verdicts,
            kept: live.kept.as_ref(),
            baseline: None,
            limits: Default::default(),
            html: None,
            junit: None,
        });
        for u in ended.unwritten {
            tracing::warn!(run_id = %live.session.run_id, "not kept: {u}");
        }
    }

    /// On shutdown: refuse new starts, let one being started finish, stop
    /// the run and wait for its clean-up.
    pub async fn shutdown(self: &Arc<Self>) {
        self.closing.store(true, Ordering::SeqCst);
        drop(self.starting.lock().await);
        let Some(live) = self.current() else { return };
        self.stop(&live);
        while !matches!(live.state(), RunState::Stopped)
            || live
                .cleanup
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(m) = &self.master {
            m.quit();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Per kind: created, alive, deleted and the cap (bytes for objects).
    fn resources_json(
        &self,
        counts: &std::collections::BTreeMap<Kind, crate::resources::KindCounts>,
        object_bytes: u64,
    ) -> Vec<Value> {
        let caps = self.limits.caps();
        Kind::ALL
            .iter()
            .map(|k| {
                let c = counts.get(k).copied().unwrap_or_default();
                let mut v = json!({"kind": k.as_str(), "created": c.created, "alive": c.alive, "deleted": c.deleted});
                v["cap"] = match k {
                    Kind::Object => {
                        v["bytes"] = json!(object_bytes);
                        v["cap_unit"] = json!("bytes");
                        json!(caps.max_bytes)
                    }
                    _ => json!(caps.of(*k)),
                };
                v
            })
            .collect()
    }

    /// The `/stats/requests` document.
    pub fn requests_json(&self) -> Value {
        let info = &self.clients.info;
        let target = json!({"ec2_endpoint": info.ec2_endpoint, "s3_endpoint": info.s3_endpoint, "region": info.region});
        let Some(live) = self.current() else {
            return json!({
                "state": "ready", "state_label": RunState::Ready.as_str(),
                "run_id": null, "profile": null, "user_count": 0,
                "target_user_count": 0, "spawn_rate": 0, "user_classes": [],
                "arrival_rate": null, "dropped": {}, "capacity": null,
                "stats": [], "errors": [], "total_rps": 0, "total_fail_per_sec": 0,
                "fail_ratio": 0, "total_throttled": 0, "user_panics": 0,
                "current_response_time_percentiles": {},
                "resources": self.resources_json(&Default::default(), 0),
                "live_resources": 0, "cleanup": CleanupView::default(), "target": target,
                "started_at": null, "ended_at": null,
                "sla": [], "abort_on_sla_failure": false, "aborted_by_sla": null,
                "generator": generator_json(&[]),
                "workers": self.workers_json(),
                "worker_count": self.master.as_ref().map_or(0, |m| m.live_workers()),
            });
        };
        let s = &live.session;
        let snap = s.ctx.stats.snapshot();
        let (target_users, rate) = live.target();
        let counts = live.resources();
        let resources = self.resources_json(&counts, s.tracker.object_bytes());
        let live_resources: u64 = counts
            .iter()
            .filter(|(k, _)| **k != Kind::Object)
            .map(|(_, c)| c.alive)
            .sum();
        let mut rows: Vec<Value> = snap.entries.iter().map(stat_row).collect();
        rows.push(stat_row(&snap.total));
        let errors: Vec<Value> = snap
            .errors
            .iter()
            .map(|e| {
                json!({
                    "method": e.name.split(':').next().unwrap_or(""),
                    "name": e.name, "code": e.code,
                    "error": format!("{}: {}", e.code, e.message),
                    "message": e.message, "occurrences": e.count, "throttled": e.throttled,
                    "first_seen": e.first_seen, "last_seen": e.last_seen,
                })
            })
            .collect();
        let cur = |q: f64| percentile_of(&snap.current_percentiles_ms, q).unwrap_or(0.0);
        let generator = generator_json(&s.ctx.stats.lock().history);
        let rates = live.arrival_rates();
        let arrival_total = (!rates.is_empty()).then(|| rates.iter().map(|(_, r)| r).sum::<f64>());
        json!({
            "state": locust_state(live.state()),
            "state_label": live.state().as_str(),
            "run_id": s.run_id,
            "profile": live.profile,
            "user_count": live.user_count(),
            "target_user_count": target_users,
            "spawn_rate": rate,
            "user_classes": user_classes(&live, &snap),
            "workers": self.workers_json(),
            "worker_count": self.master.as_ref().map_or(0, |m| m.live_workers()),
            // All open classes together (null without any), and the
            // arrivals dropped per class.
            "arrival_rate": arrival_total,
            "capacity": live.capacity.as_ref().map(|c| c.to_json()),
            "dropped": snap.dropped,
            "stats": rows,
            "errors": errors,
            "total_rps": snap.total.current_rps,
            "total_fail_per_sec": snap.total.current_fail_per_sec,
            "total_avg_response_time": snap.total.avg_ms,
            "fail_ratio": snap.total.failure_ratio(),
            "total_throttled": snap.total.num_throttled,
            "user_panics": snap.user_panics,
            "current_response_time_percentiles": {
                "response_time_percentile_0.5": cur(0.5),
                "response_time_percentile_0.95": cur(0.95),
            },
            "resources": resources,
            "capped": snap.capped,
            "live_resources": live_resources,
            "cleanup": live.cleanup.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "target": target,
            "started_at": s.started_at,
            "ended_at": *live.ended_at.lock().unwrap_or_else(|p| p.into_inner()),
            // Each SLA as last judged (every second), and the one that
            // stopped the run if it did.
            "sla": live.monitor.statuses(),
            "abort_on_sla_failure": live.abort_on_sla,
            "aborted_by_sla": *live.aborted_by.lock().unwrap_or_else(|p| p.into_inner()),
            // The load generator's own health: is it, not the cloud, the limit now?
            "generator": generator,
        })
    }

    /// The workers (Locust's field names), when the dashboard is a master.
    pub fn workers_json(&self) -> Value {
        match &self.master {
            Some(m) => serde_json::to_value(m.workers()).unwrap_or_default(),
            None => Value::Null,
        }
    }

    /// The run's snapshot and history (empty before the first run).
    pub fn snapshot(&self) -> Option<(Arc<Live>, Snapshot, Vec<crate::stats::HistoryRow>)> {
        let live = self.current()?;
        let data = live.session.ctx.stats.lock();
        let snap = data.snapshot();
        let history = data.history.clone();
        drop(data);
        Some((live, snap, history))
    }

    /// The JSON report of the current run (final once it has stopped and
    /// cleaned up).
    pub fn report_json(&self) -> Option<Value> {
        let live = self.current()?;
        let over = live.state() == RunState::Stopped && {
            let c = live.cleanup.lock().unwrap_or_else(|p| p.into_inner());
            !c.running && c.outcome.is_some()
        };
        Some(self.report_of(&live, over))
    }

    /// The JSON report of a run (`over`: it has stopped and cleaned up).
    fn report_of(&self, live: &Live, over: bool) -> Value {
        let (snap, history) = {
            let data = live.session.ctx.stats.lock();
            (data.snapshot(), data.history.clone())
        };
        let s = &live.session;
        let ended = live
            .ended_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(unix_now);
        let target = match &self.master {
            Some(_) => output::report::on_workers(),
            None => self.clients.info.clone(),
        };
        let counts = live.resources();
        let leaked = live
            .cleanup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .outcome
            .as_ref()
            .and_then(|o| o.leaked);
        let facts = output::RunFacts {
            run_id: &s.run_id,
            profile: &live.profile,
            profile_text: &live.profile_text,
            target: &target,
            started_at: s.started_at,
            ended_at: over.then_some(ended),
            duration_s: ended - s.started_at,
            users: live.peak_users(),
            resources: &counts,
            leaked,
        };
        let mut report =
            output::json_report(&facts, &snap, &history, &live.monitor.verdicts(&snap));
        report["aborted_by_sla"] =
            serde_json::to_value(&*live.aborted_by.lock().unwrap_or_else(|p| p.into_inner()))
                .unwrap_or_default();
        if self.master.is_some() {
            report["workers"] = self.workers_json();
        }
        if let Some(c) = &live.capacity {
            report["capacity"] = c.report_json();
        }
        report
    }
}

/// The load generator's health: whether the last second was limited by it
/// (and why), and how many seconds were.
fn generator_json(history: &[crate::stats::HistoryRow]) -> Value {
    let last = history.last();
    let mut v = output::generator_summary(history);
    v["limited"] = json!(last.is_some_and(|r| r.generator_limited));
    v["reasons"] = json!(last.map(|r| r.limited_by()).unwrap_or_default());
    v["runtime_lag_ms"] = json!(last.map_or(0.0, |r| r.runtime_lag_ms));
    v
}

/// What a task that did not finish says: its panic's message.
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// What an answer adds when the form set an arrival rate.
fn arrivals_note(f: &SwarmForm) -> String {
    f.arrival_rate.map_or(String::new(), |r| {
        format!(", arrivals {}", crate::units::format_rate(r))
    })
}

/// Users per class, and for open classes their arrival rate (per second)
/// and the arrivals dropped.
fn user_classes(live: &Live, snap: &Snapshot) -> Vec<Value> {
    let rates = live.arrival_rates();
    live.user_counts()
        .into_iter()
        .map(|(name, count)| {
            let mut v = json!({"name": name, "count": count});
            if let Some((_, r)) = rates.iter().find(|(c, _)| *c == name) {
                v["arrival_rate"] = json!(r);
                v["dropped"] = json!(snap.dropped.get(&name).copied().unwrap_or(0));
            }
            v
        })
        .collect()
}

/// One row of the statistics table (Locust's field names, plus ours).
fn stat_row(e: &crate::stats::EntrySummary) -> Value {
    let mut v = json!({
        "method": e.kind,
        "name": e.name,
        "safe_name": e.name,
        "num_requests": e.num_requests,
        "num_failures": e.num_failures,
        "num_throttled": e.num_throttled,
        "median_response_time": e.median_ms,
        "avg_response_time": e.avg_ms,
        "min_response_time": e.min_ms,
        "max_response_time": e.max_ms,
        "avg_content_length": e.avg_content_size,
        "current_rps": e.current_rps,
        "current_fail_per_sec": e.current_fail_per_sec,
        "total_rps": e.rps,
        "total_avg_response_time": e.avg_ms,
        "throughput_bps": e.throughput_bps,
        "ninetieth_response_time": e.percentile(0.9).unwrap_or(0.0),
        "ninety_ninth_response_time": e.percentile(0.99).unwrap_or(0.0),
    });
    for q in PERCENTILES {
        // Python's spelling of the key: 0.5, 0.95, 1.0.
        v[format!("response_time_percentile_{q:?}")] = json!(e.percentile(q).unwrap_or(0.0));
    }
    v
}

/// Fields of a form or JSON body, as strings.
fn fields(headers: &HeaderMap, body: &Bytes) -> Result<HashMap<String, String>, String> {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"));
    if json_body {
        let v: serde_json::Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| format!("the JSON body does not parse: {e}"))?;
        let text = |v: Value| match v {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        };
        Ok(v.into_iter()
            .map(|(k, v)| {
                let s = match v {
                    // A list (`"sla": ["a", "b"]`): one value per line.
                    Value::Array(items) => {
                        items.into_iter().map(text).collect::<Vec<_>>().join("\n")
                    }
                    other => text(other),
                };
                (k, s)
            })
            .collect())
    } else {
        serde_urlencoded_pairs(body)
    }
}

/// Parses `application/x-www-form-urlencoded`; a repeated field (`sla=a&sla=b`)
/// has its values one per line.
fn serde_urlencoded_pairs(body: &[u8]) -> Result<HashMap<String, String>, String> {
    let pairs = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map_err(|e| format!("the form does not parse: {e}"))?;
    let mut out: HashMap<String, String> = HashMap::new();
    for (k, v) in pairs {
        match out.get_mut(&k) {
            Some(old) => {
                old.push('\n');
                old.push_str(&v);
            }
            None => {
                out.insert(k, v);
            }
        }
    }
    Ok(out)
}

/// `POST /swarm`: start a swarm, or change the running one.
pub async fn swarm(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let f = match fields(&headers, &body) {
        Ok(f) => f,
        Err(e) => return bad(StatusCode::BAD_REQUEST, None, e),
    };
    match parse_swarm_form(&f) {
        Ok(form) => app.start_or_edit(form).await,
        Err((field, msg)) => bad(StatusCode::BAD_REQUEST, Some(field), msg),
    }
}

/// `GET /stop` (Locust's answer whether or not a swarm was running). A stop
/// sent while a swarm is starting waits for the start, then stops it.
pub async fn stop(State(app): State<Arc<App>>) -> Response {
    let _one = app.starting.lock().await;
    let message = match app.current() {
        Some(live) if app.stop(&live) => "Test stopped: users finish their tasks, then clean-up",
        Some(_) => "The swarm is already stopping or stopped",
        None => "No swarm is running",
    };
    Json(json!({"success": true, "message": message})).into_response()
}

/// `GET /stats/reset` (answers `ok`, as Locust does)
pub async fn reset(State(app): State<Arc<App>>) -> Response {
    if let Some(live) = app.current() {
        live.session.ctx.stats.reset();
    }
    "ok".into_response()
}

/// `GET /stats/requests`
pub async fn requests(State(app): State<Arc<App>>) -> Response {
    Json(app.requests_json()).into_response()
}

#[derive(serde::Deserialize)]
pub struct Since {
    since: Option<f64>,
}

/// `GET /stats/history[?since=T]`: the per-second history for the charts
/// (points after unix time T).
pub async fn history(State(app): State<Arc<App>>, Query(q): Query<Since>) -> Response {
    let since = q.since.unwrap_or(0.0);
    let rows: Vec<Value> = app
        .current()
        .map(|live| {
            let data = live.session.ctx.stats.lock();
            let from = data.history.partition_point(|r| r.timestamp <= since);
            data.history[from..]
                .iter()
                .map(output::report::history_point)
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "history": rows })).into_response()
}

fn csv_download(name: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

fn run_name(app: &App) -> String {
    app.current().map_or_else(
        || "cloudswarm".into(),
        |l| format!("cloudswarm_{}", l.session.run_id),
    )
}

/// The current (or last) run's snapshot, empty before any run.
fn snapshot_or_empty(app: &App) -> Snapshot {
    app.snapshot()
        .map(|(_, s, _)| s)
        .unwrap_or_else(empty_snapshot)
}

/// `GET /stats/requests/csv`
pub async fn stats_csv(State(app): State<Arc<App>>) -> Response {
    let body = output::stats_csv(&snapshot_or_empty(&app));
    csv_download(&format!("{}_stats.csv", run_name(&app)), body)
}

/// `GET /stats/failures/csv`
pub async fn failures_csv(State(app): State<Arc<App>>) -> Response {
    let body = output::failures_csv(&snapshot_or_empty(&app));
    csv_download(&format!("{}_failures.csv", run_name(&app)), body)
}

/// `GET /stats/history/csv`
pub async fn history_csv(State(app): State<Arc<App>>) -> Response {
    let history = app.snapshot().map(|(_, _, h)| h).unwrap_or_default();
    csv_download(
        &format!("{}_stats_history.csv", run_name(&app)),
        output::history_csv(&history),
    )
}

fn empty_snapshot() -> Snapshot {
    crate::stats::StatsData::default().snapshot()
}

/// `GET /stats/sla/csv`: the SLA verdicts as they stand.
pub async fn sla_csv(State(app): State<Arc<App>>) -> Response {
    let verdicts = app
        .snapshot()
        .map(|(live, snap, _)| live.monitor.verdicts(&snap))
        .unwrap_or_default();
    csv_download(
        &format!("{}_sla.csv", run_name(&app)),
        output::sla_csv(&verdicts),
    )
}

/// `GET /report.json`
pub async fn report_json(State(app): State<Arc<App>>) -> Response {
    match app.report_json() {
        Some(v) => (
            [(
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.json\"", run_name(&app)),
            )],
            Json(v),
        )
            .into_response(),
        None => bad(StatusCode::NOT_FOUND, None, "no run yet"),
    }
}

/// `GET /workers`: the master's workers (Locust's field names; `[]` when
/// the dashboard runs users itself).
pub async fn workers(State(app): State<Arc<App>>) -> Response {
    let list = app.workers_json();
    Json(if list.is_null() { json!([]) } else { list }).into_response()
}

/// `POST /cleanup`: clean up the stopped run again (what its stop left).
pub async fn cleanup(State(app): State<Arc<App>>) -> Response {
    let Ok(_one) = app.starting.try_lock() else {
        return bad(StatusCode::CONFLICT, None, "a swarm is starting");
    };
    let Some(live) = app.current() else {
        return bad(StatusCode::CONFLICT, None, "no run to clean up");
    };
    if !matches!(live.state(), RunState::Stopped) {
        return bad(
            StatusCode::CONFLICT,
            None,
            "stop the swarm first: clean-up runs when it stops",
        );
    }
    if !app.claim_cleanup(&live) {
        return bad(StatusCode::CONFLICT, None, "a clean-up is already running");
    }
    let (a, l) = (app.clone(), live.clone());
    tokio::spawn(async move { a.run_cleanup(&l).await });
    Json(json!({"success": true, "message": format!("Cleaning up run {}", live.session.run_id)}))
        .into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let more = match (&app.master, app.current()) {
        (Some(m), _) => {
            m.observe();
            crate::metrics::render_stats(&m.stats().lock())
        }
        (None, Some(live)) => {
            crate::metrics::observe(&live.session.engine, &live.profile);
            String::new()
        }
        (None, None) => String::new(),
    };
    crate::metrics::response_with(more)
}

/// `GET /profiles`: the profiles the form offers.
pub async fn profiles(State(app): State<Arc<App>>) -> Response {
    Json(json!({"profiles": app.profiles()})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn swarm_form_takes_slas_one_per_line_and_the_abort_switch() {
        let base = [("user_count", "2"), ("spawn_rate", "1")];
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            parse_swarm_form(&form(&pairs))
        };
        let f = with(&[]).unwrap();
        assert_eq!((f.slas, f.abort_on_sla_failure), (None, false));
        let f = with(&[
            (
                "sla",
                "p95(s3:PutObject)<2s\n\n  failure_rate[1m] < 1% \r\np95(s3:PutObject) < 2s",
            ),
            ("abort_on_sla_failure", "on"),
        ])
        .unwrap();
        let texts: Vec<String> = f.slas.unwrap().iter().map(|s| s.to_string()).collect();
        assert_eq!(texts, ["p95(s3:PutObject)<2s", "failure_rate[1m] < 1%"]);
        assert!(f.abort_on_sla_failure);
        // Present but empty: no SLAs (not the profile's).
        assert_eq!(with(&[("sla", " ")]).unwrap().slas, Some(vec![]));
        for (pairs, field, says) in [
            (vec![("sla", "p95<fast")], "sla", "`fast` is not a time"),
            (
                vec![("sla", "p95(ec2:Nope)<1s")],
                "sla",
                "which is not an op",
            ),
            (
                vec![("abort_on_sla_failure", "maybe")],
                "abort_on_sla_failure",
                "`maybe` is not true or false",
            ),
        ] {
            let e = with(&pairs).unwrap_err();
            assert_eq!(e.0, field, "{pairs:?}: {}", e.1);
            assert!(e.1.contains(says), "{pairs:?}: {}", e.1);
        }
        // A repeated field's values come one per line.
        let f = serde_urlencoded_pairs(b"sla=rps%3E1&sla=p95%3C1s&user_count=3").unwrap();
        assert_eq!(f["sla"], "rps>1\np95<1s");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let f = fields(
            &h,
            &Bytes::from_static(br#"{"sla": ["rps>1", "p95<1s"], "abort_on_sla_failure": true}"#),
        )
        .unwrap();
        assert_eq!(
            (f["sla"].as_str(), f["abort_on_sla_failure"].as_str()),
            ("rps>1\np95<1s", "true")
        );
    }

    #[test]
    fn swarm_form_is_validated_field_by_field() {
        let ok = parse_swarm_form(&form(&[
            ("user_count", "10"),
            ("spawn_rate", "2.5"),
            ("profile", "smoke"),
            ("run_time", "1m30s"),
        ]))
        .unwrap();
        assert_eq!(ok.user_count, 10);
        assert_eq!(ok.run_time, Some(Duration::from_secs(90)));
        assert_eq!(ok.arrival_rate, None);
        let open = parse_swarm_form(&form(&[
            ("user_count", "10"),
            ("spawn_rate", "2.5"),
            ("arrival_rate", "90/min"),
        ]))
        .unwrap();
        assert_eq!(open.arrival_rate, Some(1.5));
        let search = parse_swarm_form(&form(&[
            ("user_count", "10"),
            ("spawn_rate", "2.5"),
            ("find_max", "1/s:2/s:30s"),
            ("find_max_throttle_rate", "5%"),
        ]))
        .unwrap();
        let plan = search.find_max.unwrap();
        assert_eq!((plan.start, plan.step), (1.0, 2.0));
        assert_eq!(plan.hold, Duration::from_secs(30));
        assert_eq!(search.find_max_limits.throttle_rate, 0.05);
        assert_eq!(search.find_max_limits.failure_rate, 0.01);
        for (pairs, field) in [
            (
                vec![
                    ("user_count", "5"),
                    ("spawn_rate", "1"),
                    ("find_max", "1/s:1/s"),
                ],
                "find_max",
            ),
            (
                vec![
                    ("user_count", "5"),
                    ("spawn_rate", "1"),
                    ("find_max", "1/s:1/s:1s"),
                ],
                "find_max",
            ),
            (
                vec![
                    ("user_count", "5"),
                    ("spawn_rate", "1"),
                    ("find_max", "1/s:1/s:1m"),
                    ("arrival_rate", "5/s"),
                ],
                "find_max",
            ),
            (
                vec![
                    ("user_count", "5"),
                    ("spawn_rate", "1"),
                    ("find_max", "1/s:1/s:1m"),
                    ("find_max_failure_rate", "120%"),
                ],
                "find_max_failure_rate",
            ),
            (
                vec![("user_count", "-3"), ("spawn_rate", "1")],
                "user_count",
            ),
            (
                vec![("user_count", "abc"), ("spawn_rate", "1")],
                "user_count",
            ),
            (vec![("user_count", "0"), ("spawn_rate", "1")], "user_count"),
            (
                vec![("user_count", "99999999999"), ("spawn_rate", "1")],
                "user_count",
            ),
            (vec![("user_count", "5"), ("spawn_rate", "0")], "spawn_rate"),
            (
                vec![("user_count", "5"), ("spawn_rate", "NaN")],
                "spawn_rate",
            ),
            (vec![("user_count", "5")], "spawn_rate"),
            (
                vec![
                    ("user_count", "5"),
                    ("spawn_rate", "1"),
                    ("run_time", "soon"),
                ],
                "run_time",
            ),
            (
                vec![
                    ("user_count", "5"),
                    ("spawn_rate", "1"),
                    ("arrival_rate", "0/s"),
                ],
                "arrival_rate",
            ),
            (
                vec![
                    ("user_count", "5"),
                    ("spawn_rate", "1"),
                    ("arrival_rate", "20"),
                ],
                "arrival_rate",
            ),
        ] {
            let e = parse_swarm_form(&form(&pairs)).unwrap_err();
            assert_eq!(e.0, field, "{pairs:?}: {}", e.1);
        }
    }
}
