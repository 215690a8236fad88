//! The swarm engine: hatches simulated users at a hatch rate towards an
//! absolute target per user class, runs their weighted tasks, retires users
//! when the target drops, samples per-second history, and stops with a stop
//! timeout. Control is by absolute targets so a coordinator can later drive
//! many engines the same way.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use serde::Serialize;
use tokio::sync::{SemaphorePermit, TryAcquireError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::failure::Failure;
use crate::ops::Op;
use crate::profile::{Params, Profile, Task, UserClass, WaitTime};
use crate::tasks::{RunCtx, User};

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
    /// Times a user had to wait for a slot since [`Engine::saturated`]
    /// last took the count.
    waits: AtomicU64,
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

    /// Takes the ids of the users that died since the last call.
    fn take_dead(&self) -> Vec<u64> {
        if !self.has_dead.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.dead.lock().unwrap_or_else(|p| p.into_inner()))
    }
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
        })
    }

    /// True when a user had to wait for an in-flight slot since the last
    /// call, or every slot is busy now (the engine, not the cloud, is the
    /// limit: `--max-inflight`).
    pub fn saturated(&self) -> bool {
        self.slots.waits.swap(0, Ordering::Relaxed) > 0 || self.slots.sem.available_permits() == 0
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
        c.targets = targets;
        c.rate = rate;
        Ok(())
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
            loop {
                tick.tick().await;
                let users = me.user_count();
                me.ctx.stats.lock().history_tick(users);
            }
        });
        let mut bg = self.background.lock().unwrap_or_else(|p| p.into_inner());
        bg.push(hatcher);
        bg.push(sampler);
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
            Pause::Wait(wait) => tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = token.cancelled() => return,
            },
            Pause::Slot(at) => {
                slots.waits.fetch_add(1, Ordering::Relaxed);
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

/// Runs the user's tasks back to back (from `resume`, if given, with its
/// slot) until one is followed by a wait or a step finds no free slot.
async fn busy<'a>(
    ctx: &RunCtx,
    slots: &'a tokio::sync::Semaphore,
    class: &ClassRt,
    user: &mut User,
    token: &CancellationToken,
    mut resume: Option<(Resume, SemaphorePermit<'a>)>,
    at: &mut Option<Op>,
) -> Pause {
    loop {
        let (task, first, t0, mut slot) = match resume.take() {
            Some((at, permit)) => (at.task, at.step, at.t0, Some(permit)),
            None if token.is_cancelled() => return Pause::Stop,
            None => (class.pick.sample(user.rng()), 0, Instant::now(), None),
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
