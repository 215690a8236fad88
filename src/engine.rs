//! The swarm engine: hatches simulated users at a hatch rate towards an
//! absolute target per user class, runs their weighted tasks, retires users
//! when the target drops, samples per-second history, and stops with a stop
//! timeout. Control is by absolute targets so a coordinator can later drive
//! many engines the same way.
//!
//! An open class (`arrival_rate` in the profile) has an arrival scheduler:
//! task starts arrive at the class's rate whatever the latency, each handed
//! to a free user of the class (its pool); an arrival that finds none is
//! counted as dropped, never queued. Each start's lateness (actual start
//! minus scheduled arrival) is recorded on the class's `arrival:<class>` row.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{SemaphorePermit, TryAcquireError, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::failure::Failure;
use crate::metrics::sink;
use crate::ops::Op;
use crate::profile::{ArrivalProcess, Params, Profile, Task, UserClass, WaitTime};
use crate::stats::Bytes;
use crate::tasks::{RunCtx, User};
use crate::units::{MAX_ARRIVAL_RATE, MIN_ARRIVAL_RATE, format_rate};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Ready,
    Hatching,
    Running,
    Stopping,
    CleaningUp,
    Stopped,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Ready => "ready",
            RunState::Hatching => "hatching",
            RunState::Running => "running",
            RunState::Stopping => "stopping",
            RunState::CleaningUp => "cleaning up",
            RunState::Stopped => "stopped",
        }
    }
}

/// Ops in flight at once per engine, unless told otherwise.
pub const DEFAULT_MAX_INFLIGHT: usize = 4096;

/// Slots for ops in flight: bound the engine's memory and connections when
/// users outrun what the machine can send.
pub struct Slots {
    sem: tokio::sync::Semaphore,
    /// Times a user had to wait for a slot, since the engine began.
    waits: AtomicU64,
    /// Users waiting for a slot now.
    waiting: AtomicU64,
    /// [`Slots::waits`] when [`Engine::saturated`] last looked.
    line_seen: AtomicU64,
}

/// Counts a user as waiting for a slot while it lives.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(slots: &'a Slots) -> Waiting<'a> {
        slots.waits.fetch_add(1, Ordering::Relaxed);
        slots.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(&slots.waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often the runtime probe wakes; its lateness is the runtime's lag.
pub const LAG_PROBE: Duration = Duration::from_millis(100);

/// Sleeps [`LAG_PROBE`] again and again, keeping in `worst` (µs) how late
/// it woke at worst: a runtime whose threads are busy (or starved of CPU)
/// wakes every task that late, and the latencies it measures include it.
pub async fn probe_lag(worst: Arc<AtomicU64>) {
    loop {
        let due = tokio::time::Instant::now() + LAG_PROBE;
        tokio::time::sleep_until(due).await;
        let late = due.elapsed().as_micros().min(u64::MAX as u128) as u64;
        worst.fetch_max(late, Ordering::Relaxed);
    }
}

/// Most users one engine runs.
pub const MAX_USERS: u64 = 1_000_000;
/// Highest hatch rate (users per second).
pub const MAX_RATE: f64 = 100_000.0;

/// Splits `total` users across classes: fixed counts first (in order), the
/// rest by weight with the largest-remainder method.
pub fn distribute(classes: &[(u32, Option<u32>)], total: u64) -> Vec<u64> {
    let mut out = vec![0u64; classes.len()];
    let mut left = total;
    for (i, (_, fixed)) in classes.iter().enumerate() {
        if let Some(f) = fixed {
            out[i] = (*f as u64).min(left);
            left -= out[i];
        }
    }
    let weighted: Vec<usize> = (0..classes.len())
        .filter(|&i| classes[i].1.is_none())
        .collect();
    let wsum: u64 = weighted.iter().map(|&i| classes[i].0 as u64).sum();
    if wsum == 0 || left == 0 {
        return out;
    }
    let mut rema: Vec<(u64, usize)> = Vec::new();
    let mut given = 0;
    for &i in &weighted {
        let exact = left as u128 * classes[i].0 as u128;
        let share = (exact / wsum as u128) as u64;
        out[i] = share;
        given += share;
        rema.push(((exact % wsum as u128) as u64, i));
    }
    rema.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rema.into_iter().take((left - given) as usize) {
        out[i] += 1;
    }
    out
}

struct ClassRt {
    name: String,
    wait: WaitTime,
    /// Set for an open class: its arrivals and its free users.
    arrivals: Option<Arrivals>,
    /// The class's `arrival:<class>` row (task starts and their lateness).
    arrival_entry: String,
    /// Users alive and the target, as the hatcher last left them (for the
    /// arrival scheduler, which runs while both are above zero).
    alive: AtomicU64,
    target: AtomicU64,
    tasks: Vec<Task>,
    /// Over u64: the sum of the tasks' u32 weights cannot overflow it.
    pick: WeightedIndex<u64>,
    params: Arc<Params>,
    /// Users of the class whose task panicked, for the hatcher to replace.
    dead: Mutex<Vec<u64>>,
    has_dead: AtomicBool,
}

impl ClassRt {
    fn new(c: &UserClass) -> ClassRt {
        ClassRt {
            name: c.name.clone(),
            wait: c.wait,
            arrivals: c.arrival.map(|a| Arrivals {
                process: a.process,
                base: a.rate,
                rate: AtomicU64::new(a.rate.to_bits()),
                changed: tokio::sync::Notify::new(),
                free: Mutex::new(VecDeque::new()),
            }),
            arrival_entry: crate::ops::arrival_entry(&c.name),
            alive: AtomicU64::new(0),
            target: AtomicU64::new(0),
            tasks: c.tasks.clone(),
            // Validation gives every class a task and every task a weight of
            // 1 or more: the only errors WeightedIndex has (none, all zero,
            // overflow) cannot happen with u64 sums.
            pick: WeightedIndex::new(c.tasks.iter().map(|t| t.weight as u64))
                .expect("a validated class has tasks with weights of 1 or more"),
            params: Arc::new(c.params.clone()),
            dead: Mutex::new(Vec::new()),
            has_dead: AtomicBool::new(false),
        }
    }

    /// True while the class's arrivals run: it has users, and a target.
    fn open_for_arrivals(&self) -> bool {
        self.alive.load(Ordering::Relaxed) > 0 && self.target.load(Ordering::Relaxed) > 0
    }

    /// Takes the ids of the users that died since the last call.
    fn take_dead(&self) -> Vec<u64> {
        if !self.has_dead.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.dead.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// An open class's arrivals: the rate (changed at run time), the spacing,
/// and the free users of the class waiting for one.
struct Arrivals {
    process: ArrivalProcess,
    /// The profile's rate: a single rate given at run time scales these.
    base: f64,
    /// Arrivals per second now (the bits of an f64).
    rate: AtomicU64,
    /// Wakes the scheduler when the rate changes.
    changed: tokio::sync::Notify,
    /// Free users, longest waiting first; each takes the scheduled instant
    /// of the arrival it is handed.
    free: Mutex<VecDeque<oneshot::Sender<Instant>>>,
}

impl Arrivals {
    fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    fn free(&self) -> std::sync::MutexGuard<'_, VecDeque<oneshot::Sender<Instant>>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a user in the free pool: the receiver gets the next arrival
    /// handed to it.
    fn wait_free(&self) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        self.free().push_back(tx);
        rx
    }
}

/// Longest gap or offset a schedule computes (a century): far beyond any run.
const MAX_OFFSET: Duration = Duration::from_secs(100 * 365 * 86_400);

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).map_or(MAX_OFFSET, |d| d.min(MAX_OFFSET))
}

/// When the `k`-th arrival (from 0) of an even schedule at `rate` per
/// second comes, after the schedule's start. Computed from the start, not
/// added up gap by gap, so timer jitter never shifts later arrivals.
pub fn constant_offset(rate: f64, k: u64) -> Duration {
    secs(k as f64 / rate)
}

/// A gap between two arrivals of a Poisson process at `rate` per second,
/// for a uniform draw `u` in [0, 1): exponential, of mean 1/rate.
pub fn exponential_gap(rate: f64, u: f64) -> Duration {
    secs(-(1.0 - u).ln() / rate)
}

/// When the arrivals of one open class are due.
#[derive(Debug, Clone)]
pub struct Schedule {
    process: ArrivalProcess,
    rate: f64,
    /// The start the even spacing counts from.
    anchor: Instant,
    /// Arrivals due since the anchor.
    k: u64,
    /// The last arrival handed out or dropped.
    last: Option<Instant>,
    next: Instant,
}

impl Schedule {
    /// Arrivals at `rate` per second, the first at `start`.
    pub fn new(process: ArrivalProcess, rate: f64, start: Instant) -> Schedule {
        Schedule {
            process,
            rate,
            anchor: start,
            k: 0,
            last: None,
            next: start,
        }
    }

    /// When the next arrival is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Arrivals per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Moves on to the arrival after [`Schedule::next`].
    pub fn advance(&mut self, rng: &mut impl Rng) {
        self.last = Some(self.next);
        self.k += 1;
        self.next = match self.process {
            ArrivalProcess::Constant => self.anchor + constant_offset(self.rate, self.k),
            ArrivalProcess::Poisson => self.next + exponential_gap(self.rate, rng.random()),
        };
    }

    /// Goes on at `rate` from `now`: evenly, the next arrival comes one new
    /// gap after the last one (at once if that is already past) and the
    /// spacing counts from there; a Poisson process starts afresh (it has
    /// no memory).
    pub fn set_rate(&mut self, rate: f64, now: Instant, rng: &mut impl Rng) {
        let from = match self.process {
            ArrivalProcess::Constant => self
                .last
                .map_or(now, |l| (l + constant_offset(rate, 1)).max(now)),
            ArrivalProcess::Poisson => now + exponential_gap(rate, rng.random()),
        };
        self.rate = rate;
        self.anchor = from;
        self.k = 0;
        self.next = from;
    }
}

/// Hands the arrival scheduled at `at` to the longest-waiting free user;
/// false when none is free (users that left the pool are skipped).
fn hand(free: &mut VecDeque<oneshot::Sender<Instant>>, at: Instant) -> bool {
    while let Some(tx) = free.pop_front() {
        if tx.send(at).is_ok() {
            return true;
        }
    }
    false
}

/// How often an idle scheduler looks again (the class may have got users),
/// and the longest it sleeps while waiting for an arrival.
const ARRIVAL_CHECK: Duration = Duration::from_millis(100);

/// The arrival scheduler of open class `class`: while the class has users
/// and a target, hands each arrival when it is due to a free user, or
/// gives it to `dropped` (counted by the batch). When behind, every due
/// arrival goes out in one loop, with its scheduled instant: no timer per
/// arrival, and lateness shows in the users' start times.
async fn schedule_arrivals(class: Arc<ClassRt>, dropped: impl Fn(u64)) {
    let Some(arr) = class.arrivals.as_ref() else {
        return;
    };
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut sched: Option<Schedule> = None;
    let mut pruned = Instant::now();
    loop {
        let now = Instant::now();
        if !class.open_for_arrivals() {
            // No users or no target: no arrivals; the schedule starts
            // afresh when they come back.
            sched = None;
            tokio::select! {
                _ = tokio::time::sleep(ARRIVAL_CHECK) => {}
                _ = arr.changed.notified() => {}
            }
            continue;
        }
        let rate = arr.rate();
        let s = sched.get_or_insert_with(|| Schedule::new(arr.process, rate, now));
        if s.rate() != rate {
            s.set_rate(rate, now, &mut rng);
        }
        if s.next() > now {
            let wake = s.next().min(now + ARRIVAL_CHECK);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = arr.changed.notified() => {}
            }
            continue;
        }
        let mut lost = 0;
        {
            let mut free = arr.free();
            while s.next() <= now {
                if !hand(&mut free, s.next()) {
                    lost += 1;
                }
                s.advance(&mut rng);
            }
            // Users retired while free leave a closed sender behind.
            if now.duration_since(pruned) >= Duration::from_secs(1) {
                free.retain(|tx| !tx.is_closed());
                pruned = now;
            }
        }
        if lost > 0 {
            dropped(lost);
        }
    }
}

/// Counts `n` arrivals of `class` that found no free user: the stats and
/// Prometheus.
fn record_dropped(ctx: &RunCtx, class: &str, n: u64) {
    ctx.stats.lock().count_dropped(class, n);
    sink::dropped(class, n);
}

struct UserHandle {
    id: u64,
    token: CancellationToken,
    join: JoinHandle<()>,
}

struct Control {
    rate: f64,
    targets: Vec<u64>,
    users: Vec<Vec<UserHandle>>,
    /// Users told to stop, finishing their current task.
    retiring: Vec<JoinHandle<()>>,
    /// Set by `stop` (under this lock): no target may be raised again.
    stopped: bool,
}

/// One engine: the users of one run on this machine.
pub struct Engine {
    pub ctx: Arc<RunCtx>,
    pub profile: Arc<Profile>,
    slots: Arc<Slots>,
    classes: Vec<Arc<ClassRt>>,
    ctl: Mutex<Control>,
    state: Mutex<RunState>,
    root: CancellationToken,
    next_user: AtomicU64,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Most users alive at once so far.
    peak: AtomicU64,
    /// Users being stopped, so a second Ctrl-C can abort them.
    stopping: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The runtime probe's worst lateness (µs) since the sampler last took it.
    lag_us: Arc<AtomicU64>,
}

impl Engine {
    /// An engine for `profile`'s users, with `max_inflight` slots for ops in flight.
    pub fn new(ctx: Arc<RunCtx>, profile: Arc<Profile>, max_inflight: usize) -> Arc<Engine> {
        let classes: Vec<Arc<ClassRt>> = profile
            .users
            .iter()
            .map(|c| Arc::new(ClassRt::new(c)))
            .collect();
        let n = classes.len();
        Arc::new(Engine {
            ctx,
            profile,
            slots: Arc::new(Slots {
                sem: tokio::sync::Semaphore::new(max_inflight.max(1)),
                waits: AtomicU64::new(0),
                waiting: AtomicU64::new(0),
                line_seen: AtomicU64::new(0),
            }),
            classes,
            ctl: Mutex::new(Control {
                rate: 1.0,
                targets: vec![0; n],
                users: (0..n).map(|_| Vec::new()).collect(),
                retiring: Vec::new(),
                stopped: false,
            }),
            state: Mutex::new(RunState::Ready),
            root: CancellationToken::new(),
            next_user: AtomicU64::new(0),
            background: Mutex::new(Vec::new()),
            stopping: Mutex::new(Vec::new()),
            peak: AtomicU64::new(0),
            lag_us: Arc::new(AtomicU64::new(0)),
        })
    }

    /// True when a user had to wait for an in-flight slot since the last
    /// call, or one waits now (the engine, not the cloud, is the limit:
    /// `--max-inflight`). The status line asks; the history's sampler
    /// keeps its own count.
    pub fn saturated(&self) -> bool {
        let waits = self.slots.waits.load(Ordering::Relaxed);
        self.slots.line_seen.swap(waits, Ordering::Relaxed) != waits
            || self.slots.waiting.load(Ordering::Relaxed) > 0
    }

    fn ctl(&self) -> std::sync::MutexGuard<'_, Control> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> RunState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_state(&self, s: RunState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Sets the total user target, split across classes by weight.
    pub fn set_target(&self, users: u64, rate: f64) -> Result<(), String> {
        let spec: Vec<(u32, Option<u32>)> = self
            .profile
            .users
            .iter()
            .map(|c| (c.weight, c.fixed_count))
            .collect();
        self.set_class_targets(distribute(&spec, users), rate)
    }

    /// Sets an absolute user target per class (in profile order).
    pub fn set_class_targets(&self, targets: Vec<u64>, rate: f64) -> Result<(), String> {
        if targets.len() != self.classes.len() {
            return Err(format!(
                "expected {} class targets, got {}",
                self.classes.len(),
                targets.len()
            ));
        }
        let total: u64 = targets.iter().sum();
        if total > MAX_USERS {
            return Err(format!("at most {MAX_USERS} users, got {total}"));
        }
        if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
            return Err(format!(
                "hatch rate must be above 0 and at most {MAX_RATE} users/s, got {rate}"
            ));
        }
        if matches!(
            self.state(),
            RunState::Stopping | RunState::CleaningUp | RunState::Stopped
        ) {
            return Err("the run is stopping".into());
        }
        let mut c = self.ctl();
        if c.stopped {
            return Err("the run is stopping".into());
        }
        for (k, t) in self.classes.iter().zip(&targets) {
            k.target.store(*t, Ordering::Relaxed);
        }
        c.targets = targets;
        c.rate = rate;
        Ok(())
    }

    /// True when the profile has open classes (an `arrival_rate`).
    pub fn has_arrivals(&self) -> bool {
        self.classes.iter().any(|k| k.arrivals.is_some())
    }

    /// The arrival rate (per second) of each open class now, in profile order.
    pub fn arrival_rates(&self) -> Vec<(String, f64)> {
        self.classes
            .iter()
            .filter_map(|k| Some((k.name.clone(), k.arrivals.as_ref()?.rate())))
            .collect()
    }

    /// The arrival rate of all open classes together; None without any.
    pub fn arrival_rate(&self) -> Option<f64> {
        self.has_arrivals()
            .then(|| self.arrival_rates().iter().map(|(_, r)| r).sum())
    }

    /// Sets the arrival rate of all open classes together (per second),
    /// split in proportion to their profile rates: with `a` at 20/s and `b`
    /// at 10/s, 60/s gives `a` 40/s and `b` 20/s.
    pub fn set_arrival_rate(&self, total: f64) -> Result<(), String> {
        let base: f64 = self
            .classes
            .iter()
            .filter_map(|k| Some(k.arrivals.as_ref()?.base))
            .sum();
        if base <= 0.0 {
            return Err(
                "the profile has no open class: an arrival rate needs a class with arrival_rate"
                    .into(),
            );
        }
        if !(total.is_finite() && total > 0.0) {
            return Err(format!("an arrival rate must be above zero, got {total}"));
        }
        let rates = self
            .classes
            .iter()
            .map(|k| k.arrivals.as_ref().map(|a| total * a.base / base))
            .collect();
        self.set_class_arrival_rates(rates)
    }

    /// Sets an absolute arrival rate (per second) per class, in profile
    /// order: None leaves a class as it is, and only open classes take one.
    pub fn set_class_arrival_rates(&self, rates: Vec<Option<f64>>) -> Result<(), String> {
        if rates.len() != self.classes.len() {
            return Err(format!(
                "expected {} class arrival rates, got {}",
                self.classes.len(),
                rates.len()
            ));
        }
        for (k, r) in self.classes.iter().zip(&rates) {
            let Some(r) = *r else { continue };
            if k.arrivals.is_none() {
                return Err(format!(
                    "class `{}` has no arrival_rate (it is a closed class: its users wait between tasks)",
                    k.name
                ));
            }
            if !(r.is_finite() && (MIN_ARRIVAL_RATE..=MAX_ARRIVAL_RATE).contains(&r)) {
                return Err(format!(
                    "the arrival rate of class `{}` would be {r}/s: rates are from one a day (0.0417/h) to 1000000/s",
                    k.name
                ));
            }
        }
        if self.ctl().stopped {
            return Err("the run is stopping".into());
        }
        for (k, r) in self.classes.iter().zip(rates) {
            if let (Some(a), Some(r)) = (&k.arrivals, r) {
                a.rate.store(r.to_bits(), Ordering::Relaxed);
                a.changed.notify_one();
            }
        }
        Ok(())
    }

    /// Each open class's arrival rate, as the status line and the
    /// dashboard say it (`web 20/s`).
    pub fn arrival_summary(&self) -> String {
        self.arrival_rates()
            .iter()
            .map(|(c, r)| format!("{c} {}", format_rate(*r)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Users alive now, per class name.
    pub fn user_counts(&self) -> Vec<(String, u64)> {
        let c = self.ctl();
        self.classes
            .iter()
            .zip(&c.users)
            .map(|(k, u)| (k.name.clone(), u.len() as u64))
            .collect()
    }

    /// Most users alive at once during the run.
    pub fn peak_users(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn user_count(&self) -> u64 {
        self.ctl().users.iter().map(|u| u.len() as u64).sum()
    }

    /// The current target (total users, hatch rate).
    pub fn target(&self) -> (u64, f64) {
        let c = self.ctl();
        (c.targets.iter().sum(), c.rate)
    }

    /// Starts the hatcher and the per-second history sampler.
    pub fn start(self: &Arc<Self>) {
        self.set_state(RunState::Hatching);
        let me = self.clone();
        let hatcher = tokio::spawn(async move { me.hatch_loop().await });
        let me = self.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut seen = me.slots.waits.load(Ordering::Relaxed);
            loop {
                tick.tick().await;
                let users = me.user_count();
                // The generator's health over the second: did a user wait
                // for a slot (or does one wait now), how late did the runtime wake.
                let waits = me.slots.waits.load(Ordering::Relaxed);
                let health = crate::stats::Health {
                    saturated: waits != seen || me.slots.waiting.load(Ordering::Relaxed) > 0,
                    runtime_lag_ms: me.lag_us.swap(0, Ordering::Relaxed) as f64 / 1000.0,
                };
                seen = waits;
                me.ctx.stats.lock().history_tick_with(users, health);
            }
        });
        let mut bg = self.background.lock().unwrap_or_else(|p| p.into_inner());
        bg.push(hatcher);
        bg.push(sampler);
        bg.push(tokio::spawn(probe_lag(self.lag_us.clone())));
        for k in self.classes.iter().filter(|k| k.arrivals.is_some()) {
            // The class shows in the dropped figures from the start, at 0.
            record_dropped(&self.ctx, &k.name, 0);
            let ctx = self.ctx.clone();
            let name = k.name.clone();
            let dropped = move |n| record_dropped(&ctx, &name, n);
            bg.push(tokio::spawn(schedule_arrivals(k.clone(), dropped)));
        }
    }

    /// Tells each class's arrival scheduler how many users it has.
    fn mirror_alive(&self, c: &Control) {
        for (k, u) in self.classes.iter().zip(&c.users) {
            k.alive.store(u.len() as u64, Ordering::Relaxed);
        }
    }

    async fn hatch_loop(self: Arc<Self>) {
        let step = Duration::from_millis(20);
        let mut last = Instant::now();
        let mut budget = 0.0f64;
        loop {
            tokio::time::sleep(step).await;
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64();
            last = now;
            let mut c = self.ctl();
            c.retiring.retain(|h| !h.is_finished());
            // Users whose task panicked are gone: drop their handles, so the
            // class is below its target and hatching replaces them.
            for (i, class) in self.classes.iter().enumerate() {
                let dead = class.take_dead();
                if !dead.is_empty() {
                    c.users[i].retain(|h| !dead.contains(&h.id));
                }
            }
            self.mirror_alive(&c);
            let pending: u64 = c
                .targets
                .iter()
                .zip(&c.users)
                .map(|(t, u)| t.abs_diff(u.len() as u64))
                .sum();
            if pending == 0 {
                budget = 0.0;
                drop(c);
                if self.state() == RunState::Hatching {
                    self.set_state(RunState::Running);
                }
                continue;
            }
            if self.state() == RunState::Running {
                self.set_state(RunState::Hatching);
            }
            budget = (budget + c.rate * dt).min(c.rate.max(1.0));
            while budget >= 1.0 {
                if !self.step(&mut c) {
                    break;
                }
                budget -= 1.0;
            }
            self.mirror_alive(&c);
        }
    }

    /// Spawns or retires one user, keeping the class mix proportional while ramping.
    fn step(&self, c: &mut Control) -> bool {
        let mut grow: Option<(f64, usize)> = None;
        let mut shrink: Option<(f64, usize)> = None;
        for (i, (t, u)) in c.targets.iter().zip(&c.users).enumerate() {
            let (t, n) = (*t as f64, u.len() as f64);
            if n < t {
                let deficit = (t - n) / t;
                if grow.is_none_or(|g| deficit > g.0) {
                    grow = Some((deficit, i));
                }
            } else if n > t {
                let excess = (n - t) / n;
                if shrink.is_none_or(|s| excess > s.0) {
                    shrink = Some((excess, i));
                }
            }
        }
        if let Some((_, i)) = grow {
            let h = self.spawn_user(i);
            c.users[i].push(h);
            let now: u64 = c.users.iter().map(|u| u.len() as u64).sum();
            self.peak.fetch_max(now, Ordering::Relaxed);
            true
        } else if let Some((_, i)) = shrink {
            let h = c.users[i].pop().expect("class has users");
            h.token.cancel();
            c.retiring.push(h.join);
            true
        } else {
            false
        }
    }

    fn spawn_user(&self, class: usize) -> UserHandle {
        let k = self.classes[class].clone();
        let id = self.next_user.fetch_add(1, Ordering::Relaxed) + 1;
        let user = User::new(id, k.params.clone());
        let token = self.root.child_token();
        let (ctx, slots) = (self.ctx.clone(), self.slots.clone());
        let join = tokio::spawn(user_loop(ctx, slots, k, user, token.clone()));
        UserHandle { id, token, join }
    }

    /// Runs task `task` of class `class` (profile order) once, as a new
    /// user of the class would: a pick, the steps in order until one fails,
    /// then the wait that would follow. Outside the hatcher and with no
    /// panic caught, for tests (the property test runs every task of
    /// generated profiles this way). Returns the wait.
    #[doc(hidden)]
    pub async fn run_task_once(&self, class: usize, task: usize) -> Duration {
        let k = &self.classes[class];
        let id = self.next_user.fetch_add(1, Ordering::Relaxed) + 1;
        let mut user = User::new(id, k.params.clone());
        let _ = k.pick.sample(user.rng());
        let t0 = Instant::now();
        for &op in &k.tasks[task].steps {
            if user.run(&self.ctx, op).await.is_err() {
                break;
            }
        }
        k.wait.next_wait(t0.elapsed(), user.rng())
    }

    /// Abandons every user at once (a second Ctrl-C): their tasks are
    /// aborted where they are; what they created stays tracked or tagged.
    pub fn abort_all(&self) {
        self.root.cancel();
        let mut c = self.ctl();
        for h in c.retiring.drain(..) {
            h.abort();
        }
        for class in c.users.iter_mut() {
            for h in class.drain(..) {
                h.join.abort();
            }
        }
        drop(c);
        for h in self
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }

    /// Stops the run: no more hatching, users finish their current task
    /// within `stop_timeout` (then are abandoned). Resources stay tracked.
    pub async fn stop(&self, stop_timeout: Duration) {
        self.set_state(RunState::Stopping);
        for h in self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
        let mut joins: Vec<JoinHandle<()>> = {
            let mut c = self.ctl();
            c.stopped = true;
            c.targets.iter_mut().for_each(|t| *t = 0);
            for k in &self.classes {
                k.target.store(0, Ordering::Relaxed);
            }
            let mut all: Vec<JoinHandle<()>> = c.retiring.drain(..).collect();
            for class in c.users.iter_mut() {
                all.extend(class.drain(..).map(|h| h.join));
            }
            all
        };
        *self.stopping.lock().unwrap_or_else(|p| p.into_inner()) =
            joins.iter().map(|j| j.abort_handle()).collect();
        self.root.cancel();
        let waited = tokio::time::timeout(stop_timeout, async {
            for j in joins.iter_mut() {
                let _ = j.await;
            }
        })
        .await;
        if waited.is_err() {
            let left = joins.iter().filter(|j| !j.is_finished()).count();
            tracing::warn!("stop timeout: abandoning {left} user task(s) still running");
            for j in &joins {
                j.abort();
            }
        }
        self.ctx.stats.lock().history_tick(0);
    }
}

/// Where a user stopped inside a task: the step it needs an in-flight slot for.
struct Resume {
    task: usize,
    step: usize,
    t0: Instant,
}

/// Why [`busy`] handed control back to [`user_loop`].
enum Pause {
    /// The task is done and its wait comes next.
    Wait(Duration),
    /// The task of an open class's user is done: it is free for the next arrival.
    Free,
    /// Every in-flight slot is taken: wait for one, then go on from here.
    Slot(Resume),
    /// The user is cancelled or the engine closed.
    Stop,
}

/// Polls a future and turns a panic inside it into `Err(message)`.
struct CatchPanic<F>(F);

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

/// The text a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// A user's task panicked: counts it as an error of kind `panic` under the
/// op it was in (or `user:<class>` outside an op), logs it, and marks the
/// user dead so the hatcher replaces it.
fn user_panicked(ctx: &RunCtx, class: &ClassRt, id: u64, op: Option<Op>, message: String) {
    let name = match op {
        Some(op) => op.name().to_string(),
        None => format!("user:{}", class.name),
    };
    tracing::error!(
        "a user of class `{}` panicked in {name}: {message}; it is replaced",
        class.name
    );
    ctx.record_panic(&name, &Failure::new("panic", message));
    class
        .dead
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(id);
    class.has_dead.store(true, Ordering::Release);
}

async fn user_loop(
    ctx: Arc<RunCtx>,
    slots: Arc<Slots>,
    class: Arc<ClassRt>,
    mut user: User,
    token: CancellationToken,
) {
    let mut resume = None;
    let id = user.id;
    // The op the user is in, for a panic's report.
    let mut at: Option<Op> = None;
    loop {
        // A user of an open class waits, free, for an arrival to run.
        let arrival = match &class.arrivals {
            Some(arr) if resume.is_none() => match next_arrival(&ctx, &class, arr, &token).await {
                Some(t) => Some(t),
                None => return,
            },
            _ => None,
        };
        // The ops' state (the SDK's futures, several KiB) lives in this box
        // only while the user is busy: a user that waits (its wait time, or
        // for a slot) holds just its own small state. A user that never
        // waits stays in one box for good, so the hot loop neither allocates
        // nor copies it per request. A panic inside ends the user (its state
        // may be half-changed); the hatcher starts a new one.
        let busy = Box::pin(busy(
            &ctx,
            &slots.sem,
            &class,
            &mut user,
            &token,
            resume.take(),
            arrival,
            &mut at,
        ));
        let result = CatchPanic(busy).await;
        let pause = match result {
            Ok(p) => p,
            Err(message) => {
                user_panicked(&ctx, &class, id, at, message);
                return;
            }
        };
        match pause {
            Pause::Stop => return,
            Pause::Free => {}
            Pause::Wait(wait) => tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = token.cancelled() => return,
            },
            Pause::Slot(at) => {
                let _waiting = Waiting::new(&slots);
                let permit = tokio::select! {
                    p = slots.sem.acquire() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = token.cancelled() => return,
                };
                resume = Some((at, permit));
            }
        }
    }
}

/// Waits, in the class's free pool, for an arrival: its scheduled instant.
/// None when the user is told to stop (an arrival it was handed meanwhile
/// is counted as dropped: it never ran).
async fn next_arrival(
    ctx: &RunCtx,
    class: &ClassRt,
    arr: &Arrivals,
    token: &CancellationToken,
) -> Option<Instant> {
    if token.is_cancelled() {
        return None;
    }
    let mut rx = arr.wait_free();
    let got = tokio::select! {
        got = &mut rx => got.ok(),
        _ = token.cancelled() => {
            rx.close();
            rx.try_recv().ok()
        }
    };
    if got.is_some() && token.is_cancelled() {
        record_dropped(ctx, &class.name, 1);
        return None;
    }
    got
}

/// Runs the user's tasks back to back (from `resume`, if given, with its
/// slot) until one is followed by a wait or a step finds no free slot. A
/// user of an open class runs one task, the one `arrival` (its scheduled
/// instant) asks for, recording the start's lateness on the class's
/// arrival row when its first step starts.
#[allow(clippy::too_many_arguments)]
async fn busy<'a>(
    ctx: &RunCtx,
    slots: &'a tokio::sync::Semaphore,
    class: &ClassRt,
    user: &mut User,
    token: &CancellationToken,
    mut resume: Option<(Resume, SemaphorePermit<'a>)>,
    mut arrival: Option<Instant>,
    at: &mut Option<Op>,
) -> Pause {
    let open = class.arrivals.is_some();
    loop {
        let (task, first, t0, mut slot) = match (resume.take(), arrival.take()) {
            (Some((at, permit)), _) => (at.task, at.step, at.t0, Some(permit)),
            (None, Some(due)) => (class.pick.sample(user.rng()), 0, due, None),
            (None, None) if open => return Pause::Free,
            (None, None) if token.is_cancelled() => return Pause::Stop,
            (None, None) => (class.pick.sample(user.rng()), 0, Instant::now(), None),
        };
        for (step, &op) in class.tasks[task].steps.iter().enumerate().skip(first) {
            let permit = match slot.take() {
                Some(p) => p,
                None => match slots.try_acquire() {
                    Ok(p) => p,
                    Err(TryAcquireError::NoPermits) => {
                        return Pause::Slot(Resume { task, step, t0 });
                    }
                    Err(TryAcquireError::Closed) => return Pause::Stop,
                },
            };
            if open && step == 0 {
                // Timed from the scheduled arrival: a wait for a free slot
                // (`--max-inflight`) makes the start late, visibly.
                ctx.stats
                    .record(&class.arrival_entry, t0.elapsed(), Bytes::default(), None);
            }
            *at = Some(op);
            #[cfg(test)]
            test_hooks::maybe_panic(&class.name, op);
            let failed = user.run(ctx, op).await.is_err();
            *at = None;
            drop(permit);
            if failed {
                break;
            }
        }
        if open {
            return Pause::Free;
        }
        let wait = class.wait.next_wait(t0.elapsed(), user.rng());
        if !wait.is_zero() {
            return Pause::Wait(wait);
        }
        // Yields only once the task has used its share of the scheduler.
        tokio::task::consume_budget().await;
    }
}

/// A way for unit tests to make a user's task panic (compiled into test
/// builds only): the next `n` ops of classes named `test-panic...` panic.
#[cfg(test)]
mod test_hooks {
    use std::sync::atomic::{AtomicU64, Ordering};

    pub static PANICS: AtomicU64 = AtomicU64::new(0);

    pub fn maybe_panic(class: &str, op: crate::ops::Op) {
        if class.starts_with("test-panic")
            && PANICS
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            panic!("test panic before {}", op.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Caps;
    use crate::resources::Tracker;
    use crate::stats::Stats;

    /// An engine whose clients point at a closed port on 127.0.0.1: every
    /// call fails at once with `refused`.
    async fn engine_against_nothing(profile: &str) -> (Arc<Engine>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let eucarc = dir.path().join("eucarc");
        let keys = format!(
            "EC2_URL={url}\nS3_URL={url}\nEC2_ACCESS_KEY=testing\nEC2_SECRET_KEY=testing\n"
        );
        std::fs::write(&eucarc, keys).unwrap();
        let clients = crate::target::TargetArgs {
            ec2_endpoint: Some(url.clone()),
            s3_endpoint: Some(url),
            region: Some("us-east-1".into()),
            eucarc: Some(eucarc),
            ca_bundle: None,
            insecure: false,
            retries: 0,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
        }
        .clients()
        .await
        .unwrap();
        let run = crate::naming::RunId::parse("enginet1").unwrap();
        let meta = crate::naming::RunMeta::default();
        let tracker = Tracker::create(dir.path(), &run, &meta).unwrap();
        let caps = Caps {
            max_instances: 1,
            max_volumes: 1,
            max_buckets: 1,
            max_bytes: 1,
        };
        let ctx = RunCtx::new(run, clients, Stats::new(), tracker, caps);
        let profile = crate::profile::parse(std::path::Path::new("t.toml"), profile).unwrap();
        let engine = Engine::new(Arc::new(ctx), Arc::new(profile), DEFAULT_MAX_INFLIGHT);
        (engine, dir)
    }

    /// Waits (a generous minute at most) until `ok` holds.
    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok() {
            assert!(Instant::now() < deadline, "gave up waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_whose_task_panics_is_counted_logged_and_replaced() {
        let (engine, _dir) = engine_against_nothing(
            "[[user]]\nname = \"test-panic\"\nwait = { constant = 0.05 }\n\
             [[user.task]]\nop = \"ec2:DescribeAvailabilityZones\"\n",
        )
        .await;
        let stats = engine.ctx.stats.clone();
        let requests = || stats.snapshot().total.num_requests;
        engine.start();
        engine.set_target(3, 1000.0).unwrap();
        until("3 users run", || engine.user_count() == 3 && requests() > 0).await;

        test_hooks::PANICS.store(2, Ordering::SeqCst);
        until("2 users panicked", || stats.lock().user_panics == 2).await;
        let snap = stats.snapshot();
        let e = snap
            .errors
            .iter()
            .find(|e| e.code == "panic")
            .expect("a panic error");
        assert_eq!(e.name, "ec2:DescribeAvailabilityZones");
        assert_eq!(e.count, 2);
        assert_eq!(e.message, "test panic before ec2:DescribeAvailabilityZones");
        assert_eq!(test_hooks::PANICS.load(Ordering::SeqCst), 0);

        // Both were replaced by new users (ids 4 and 5): back at the target.
        until("the 2 users are replaced", || {
            engine.next_user.load(Ordering::Relaxed) == 5 && engine.user_count() == 3
        })
        .await;
        assert_eq!(engine.target().0, 3);
        let line = crate::run::status_line(&engine, Instant::now());
        assert!(line.contains("users 3/3"), "{line}");
        assert!(line.contains("panics 2 (users replaced)"), "{line}");

        // And the run goes on.
        let before = requests();
        until("more requests", || requests() >= before + 6).await;
        assert_eq!(stats.lock().user_panics, 2);
        engine.stop(Duration::from_secs(30)).await;
        assert_eq!(engine.user_count(), 0);
    }

    #[tokio::test]
    async fn run_task_once_runs_the_steps_and_gives_the_wait() {
        let (engine, _dir) = engine_against_nothing(
            "[[user]]\nname = \"a\"\nwait = { constant_pacing = 3600 }\n\
             [[user.task]]\nsequence = [\"s3:ListBuckets\", \"s3:ListBuckets\"]\n\
             [[user.task]]\nop = \"ec2:DescribeImages\"\n",
        )
        .await;
        let wait = engine.run_task_once(0, 0).await;
        assert!(wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600));
        // The first step failed (nothing listens): the sequence stopped there.
        let snap = engine.ctx.stats.snapshot();
        assert_eq!(snap.total.num_requests, 1);
        assert_eq!(snap.errors[0].name, "s3:ListBuckets");
        assert_eq!(snap.errors[0].code, "refused");
    }

    /// Arrivals of `sched` due before `end`, advancing it past them.
    fn due_before(sched: &mut Schedule, end: Instant, rng: &mut impl Rng) -> u64 {
        let mut n = 0;
        while sched.next() < end {
            n += 1;
            sched.advance(rng);
        }
        n
    }

    #[test]
    fn constant_and_poisson_schedules_keep_their_rate() {
        assert_eq!(constant_offset(20.0, 0), Duration::ZERO);
        assert_eq!(constant_offset(20.0, 1), Duration::from_millis(50));
        assert_eq!(constant_offset(20.0, 400), Duration::from_secs(20));
        // Counted from the start, so no rounding piles up over a long run.
        assert_eq!(
            constant_offset(3.0, 3_000_000),
            Duration::from_secs(1_000_000)
        );
        assert_eq!(constant_offset(1e-300, 5), MAX_OFFSET);
        assert_eq!(exponential_gap(2.0, 0.0), Duration::ZERO);
        let g = exponential_gap(2.0, 1.0 - (-1.0f64).exp());
        assert!((g.as_secs_f64() - 0.5).abs() < 1e-9, "{g:?}");
        assert!(exponential_gap(2.0, 1.0) <= MAX_OFFSET);

        let mut rng = SmallRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut even = Schedule::new(ArrivalProcess::Constant, 20.0, t0);
        assert_eq!(even.next(), t0, "the first arrival is at the start");
        assert_eq!(
            due_before(&mut even, t0 + Duration::from_secs(20), &mut rng),
            400
        );
        // Poisson: 20/s over 10,000 s is 200,000 arrivals, within 1% (σ ≈ 0.22%).
        let mut poisson = Schedule::new(ArrivalProcess::Poisson, 20.0, t0);
        let n = due_before(&mut poisson, t0 + Duration::from_secs(10_000), &mut rng);
        assert!((198_000..=202_000).contains(&n), "{n}");
    }

    #[test]
    fn a_rate_change_goes_on_from_the_last_arrival_at_the_new_spacing() {
        let mut rng = SmallRng::seed_from_u64(7);
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        // 5/s for 6 s, then 20/s for 6 s: 30 + 120 arrivals.
        let mut sched = Schedule::new(ArrivalProcess::Constant, 5.0, t0);
        assert_eq!(due_before(&mut sched, s(6.0), &mut rng), 30);
        sched.set_rate(20.0, s(6.0), &mut rng);
        assert_eq!(sched.next(), s(6.0), "5.8 s + 50 ms is past: at once");
        assert_eq!(due_before(&mut sched, s(12.0), &mut rng), 120);
        // Slower: the next one is a new gap after the last.
        sched.set_rate(1.0, s(12.0), &mut rng);
        assert_eq!(sched.next(), s(12.95));
        assert_eq!(sched.rate(), 1.0);
        let mut poisson = Schedule::new(ArrivalProcess::Poisson, 5.0, t0);
        due_before(&mut poisson, s(6.0), &mut rng);
        poisson.set_rate(50.0, s(6.0), &mut rng);
        assert!(poisson.next() >= s(6.0));
        let n = due_before(&mut poisson, s(206.0), &mut rng);
        assert!((9_500..=10_500).contains(&n), "{n}");
    }

    /// An open class of the given profile lines, with its users and target
    /// set as the hatcher would.
    fn open_class(lines: &str, users: u64) -> Arc<ClassRt> {
        let text =
            format!("[[user]]\nname = \"web\"\n{lines}\n[[user.task]]\nop = \"s3:ListBuckets\"\n");
        let p = crate::profile::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let class = Arc::new(ClassRt::new(&p.users[0]));
        class.alive.store(users, Ordering::Relaxed);
        class.target.store(users, Ordering::Relaxed);
        class
    }

    /// Free users that take each arrival handed to them, hold it `busy`,
    /// and count it; the scheduler runs for about `run`. Answers (taken,
    /// dropped, how long the scheduler really ran).
    async fn run_pool(
        class: Arc<ClassRt>,
        users: usize,
        busy: Duration,
        run: Duration,
    ) -> (u64, u64, Duration) {
        let taken = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..users {
            let (class, taken) = (class.clone(), taken.clone());
            tasks.push(tokio::spawn(async move {
                let arr = class.arrivals.as_ref().unwrap();
                while let Ok(at) = arr.wait_free().await {
                    assert!(at <= Instant::now(), "handed when due");
                    taken.fetch_add(1, Ordering::Relaxed);
                    if !busy.is_zero() {
                        tokio::time::sleep(busy).await;
                    }
                }
            }));
        }
        let d = dropped.clone();
        let t0 = Instant::now();
        let sched = tokio::spawn(schedule_arrivals(class, move |n| {
            d.fetch_add(n, Ordering::Relaxed);
        }));
        tokio::time::sleep(run).await;
        sched.abort();
        let ran = t0.elapsed();
        for t in tasks {
            t.abort();
        }
        let (taken, dropped) = (
            taken.load(Ordering::Relaxed),
            dropped.load(Ordering::Relaxed),
        );
        (taken, dropped, ran)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_scheduler_hands_5000_arrivals_a_second_on_one_thread() {
        // Free users that do nothing: each arrival is taken, unless the
        // thread stalls (a busy machine) longer than the pool absorbs.
        let class = open_class("arrival_rate = \"5000/s\"", 500);
        let (taken, dropped, ran) =
            run_pool(class, 500, Duration::ZERO, Duration::from_secs(2)).await;
        // Every arrival due while it ran (the first at 0) is accounted for...
        let due = (ran.as_secs_f64() * 5000.0) as u64 + 1;
        assert!(
            taken + dropped <= due && taken + dropped >= due * 97 / 100,
            "{taken} + {dropped} of {due}"
        );
        // ... and handed out.
        assert!(dropped <= taken / 100, "{taken} taken, {dropped} dropped");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_arrival_with_no_free_user_is_dropped_not_queued() {
        // One user busy 1 s per task at 20/s: it takes 2 in 1.5 s, and the
        // rest are dropped (a queued arrival would be taken late instead).
        let class = open_class("arrival_rate = \"20/s\"", 1);
        let (taken, dropped, ran) = run_pool(
            class,
            1,
            Duration::from_secs(1),
            Duration::from_millis(1_530),
        )
        .await;
        assert_eq!(taken, 2, "{dropped} dropped");
        let due = (ran.as_secs_f64() * 20.0) as u64 + 1;
        assert!(
            dropped <= due - 2 && dropped + 4 >= due - 2,
            "{dropped} of {due}"
        );
        // No users (or no target): no arrivals at all.
        let class = open_class("arrival_rate = \"20/s\"", 0);
        let (taken, dropped, _) =
            run_pool(class, 0, Duration::ZERO, Duration::from_millis(500)).await;
        assert_eq!((taken, dropped), (0, 0));
    }

    #[tokio::test]
    async fn arrival_rates_scale_with_the_profile_rates_and_are_bounded() {
        let (engine, _dir) = engine_against_nothing(
            "[[user]]\nname = \"a\"\narrival_rate = \"20/s\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n\
             [[user]]\nname = \"b\"\narrival_rate = \"10/s\"\narrival = \"poisson\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n\
             [[user]]\nname = \"closed\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n",
        )
        .await;
        assert!(engine.has_arrivals());
        assert_eq!(engine.arrival_rate(), Some(30.0));
        engine.set_arrival_rate(60.0).unwrap();
        assert_eq!(
            engine.arrival_rates(),
            [("a".to_string(), 40.0), ("b".to_string(), 20.0)]
        );
        assert_eq!(engine.arrival_summary(), "a 40/s, b 20/s");
        engine
            .set_class_arrival_rates(vec![None, Some(0.5), None])
            .unwrap();
        assert_eq!(engine.arrival_rate(), Some(40.5));
        let e = engine
            .set_class_arrival_rates(vec![None, None, Some(1.0)])
            .unwrap_err();
        assert!(e.contains("class `closed` has no arrival_rate"), "{e}");
        for bad in [0.0, -1.0, f64::NAN, 3e6] {
            assert!(engine.set_arrival_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(
            engine.arrival_rate(),
            Some(40.5),
            "a refused rate changes nothing"
        );
        let (closed, _dir) = engine_against_nothing(
            "[[user]]\nname = \"c\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n",
        )
        .await;
        assert_eq!(closed.arrival_rate(), None);
        assert!(
            closed
                .set_arrival_rate(5.0)
                .unwrap_err()
                .contains("no open class")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_class_users_run_arrivals_and_record_their_lateness() {
        // Requests fail at once (nothing listens): a pool of 20 runs the
        // arrivals of 50/s, each start recorded on arrival:web.
        let (engine, _dir) = engine_against_nothing(
            "[[user]]\nname = \"web\"\narrival_rate = \"50/s\"\n[[user.task]]\nop = \"ec2:DescribeAvailabilityZones\"\n",
        )
        .await;
        let stats = engine.ctx.stats.clone();
        engine.start();
        engine.set_target(20, 1000.0).unwrap();
        until("20 users", || engine.user_count() == 20).await;
        // Task starts and dropped arrivals: every arrival is one or the other.
        let arrivals = || {
            let s = stats.lock();
            let starts = s.entries.get("arrival:web").map_or(0, |e| e.num_requests);
            (starts, s.dropped.get("web").copied().unwrap_or(0))
        };
        let (s0, d0) = arrivals();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (s1, d1) = arrivals();
        let (starts, dropped) = (s1 - s0, d1 - d0);
        assert!(
            (95..=105).contains(&(starts + dropped)),
            "{starts} starts and {dropped} dropped in 2 s at 50/s"
        );
        assert!(starts >= 50, "{starts} starts, {dropped} dropped");
        let snap = stats.snapshot();
        let late = snap
            .entries
            .iter()
            .find(|e| e.name == "arrival:web")
            .unwrap();
        assert!(late.max_ms < 2_000.0, "lateness: {late:?}");
        let requests = snap.total.num_requests;
        assert!(
            requests + 20 >= s1,
            "each start sends its request: {requests}"
        );
        let line = crate::run::status_line(&engine, Instant::now());
        assert!(line.contains("arrivals web 50/s  dropped "), "{line}");
        engine.stop(Duration::from_secs(30)).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_lag_probe_sees_a_runtime_that_was_blocked() {
        let worst = Arc::new(AtomicU64::new(0));
        let probe = tokio::spawn(probe_lag(worst.clone()));
        // An idle runtime wakes the probe within a few ms.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let idle = worst.swap(0, Ordering::Relaxed);
        assert!(idle < 40_000, "idle lag {idle} µs");
        // A task that blocks the only thread for 300 ms makes the probe late
        // by about as much.
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::thread::sleep(Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(250)).await;
        let blocked = worst.load(Ordering::Relaxed);
        assert!(
            (150_000..1_000_000).contains(&blocked),
            "blocked lag {blocked} µs"
        );
        probe.abort();
    }

    #[test]
    fn distribute_by_weight_with_fixed_counts_first() {
        assert_eq!(distribute(&[(3, None), (1, None)], 8), vec![6, 2]);
        assert_eq!(distribute(&[(3, None), (1, None)], 1), vec![1, 0]);
        assert_eq!(
            distribute(&[(1, None), (1, None), (1, None)], 10),
            vec![4, 3, 3]
        );
        assert_eq!(distribute(&[(1, Some(2)), (5, None)], 10), vec![2, 8]);
        assert_eq!(distribute(&[(1, Some(20)), (5, None)], 10), vec![10, 0]);
        assert_eq!(distribute(&[(1, Some(2))], 10), vec![2]);
        for total in 0..200 {
            let d = distribute(&[(5, None), (3, None), (2, Some(3))], total);
            assert_eq!(d.iter().sum::<u64>(), total, "{total}");
        }
    }
}
