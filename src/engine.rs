//! The swarm engine: hatches simulated users at a hatch rate towards an
//! absolute target per user class, runs their weighted tasks, retires users
//! when the target drops, samples per-second history, and stops with a stop
//! timeout. Control is by absolute targets so a coordinator can later drive
//! many engines the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use serde::Serialize;
use tokio::sync::{SemaphorePermit, TryAcquireError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::profile::{Params, Profile, Task, WaitTime};
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
    pick: WeightedIndex<u32>,
    params: Arc<Params>,
}

struct UserHandle {
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
    pub fn new(ctx: Arc<RunCtx>, profile: Arc<Profile>) -> Arc<Engine> {
        let classes: Vec<Arc<ClassRt>> = profile
            .users
            .iter()
            .map(|c| {
                Arc::new(ClassRt {
                    name: c.name.clone(),
                    wait: c.wait,
                    tasks: c.tasks.clone(),
                    pick: WeightedIndex::new(c.tasks.iter().map(|t| t.weight))
                        .expect("validated task weights"),
                    params: Arc::new(c.params.clone()),
                })
            })
            .collect();
        let n = classes.len();
        Arc::new(Engine {
            ctx,
            profile,
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
        let ctx = self.ctx.clone();
        let join = tokio::spawn(user_loop(ctx, k, user, token.clone()));
        UserHandle { token, join }
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

async fn user_loop(
    ctx: Arc<RunCtx>,
    class: Arc<ClassRt>,
    mut user: User,
    token: CancellationToken,
) {
    let mut resume = None;
    loop {
        // The ops' state (the SDK's futures, several KiB) lives in this box
        // only while the user is busy: a user that waits (its wait time, or
        // for a slot) holds just its own small state. A user that never
        // waits stays in one box for good, so the hot loop neither allocates
        // nor copies it per request.
        match Box::pin(busy(&ctx, &class, &mut user, &token, resume.take())).await {
            Pause::Stop => return,
            Pause::Wait(wait) => tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = token.cancelled() => return,
            },
            Pause::Slot(at) => {
                ctx.saturated.fetch_add(1, Ordering::Relaxed);
                let permit = tokio::select! {
                    p = ctx.inflight.acquire() => match p {
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
    ctx: &'a RunCtx,
    class: &ClassRt,
    user: &mut User,
    token: &CancellationToken,
    mut resume: Option<(Resume, SemaphorePermit<'a>)>,
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
                None => match ctx.inflight.try_acquire() {
                    Ok(p) => p,
                    Err(TryAcquireError::NoPermits) => {
                        return Pause::Slot(Resume { task, step, t0 });
                    }
                    Err(TryAcquireError::Closed) => return Pause::Stop,
                },
            };
            let failed = user.run(ctx, op).await.is_err();
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

#[cfg(test)]
mod tests {
    use super::*;

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
