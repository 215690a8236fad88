//! The shared pollers behind the provisioning waits: one per kind
//! (instances, volumes, snapshots; nothing waits on images) per run, kept
//! in [`RunCtx`](super::RunCtx). A wait does not poll for itself: it
//! registers its id, the state it wants and its `poll_interval` with its
//! kind's poller ([`Pollers::watch`]) and awaits what the poller hands it.
//!
//! - **Schedule.** Waiters are grouped by `poll_interval` (classes may
//!   differ). A group is polled as a whole once per interval: a new group at
//!   once (so a lone wait's first poll comes right away), a waiter joining a
//!   running group at its next tick (at most one interval later). A group
//!   outlives its last waiter by one tick, so waits that follow one another
//!   keep its rhythm instead of each starting a round of its own. The groups
//!   due at the same moment share a round. Ticks count from a round's
//!   start; a round slower than the interval is followed at once by the
//!   next (one round in flight per poller).
//! - **Batches.** A round sends one Describe call per [`MAX_IDS`] distinct
//!   ids (`instance-ids`, `volume-ids`, `snapshot-ids`), side by side, each
//!   recorded as a request on the kind's `:poll` row with its failure and
//!   throttling, through the same recording path as every request.
//! - **Ids the cloud does not know.** One unknown id fails the whole call
//!   (`InvalidInstanceID.NotFound`). When the error names some of the
//!   call's ids, those are answered "not found" and the others are asked
//!   again at once (AWS names every unknown id, moto one per error: they
//!   come out one call each); when it names none or all of them (snapshot
//!   errors name none, moto's volume errors name every id asked for), that
//!   batch is asked one id at a time for that round, stopping at a
//!   throttled answer. "Not found" means what it did
//!   when each wait polled alone: still pending (a new instance or volume),
//!   done (a terminating instance), a failure (a snapshot).
//! - **Throttling.** After a round with a throttled call every group waits
//!   its interval doubled per throttled round in a row, up to [`MAX_BACKOFF`]
//!   (a longer interval is not stretched); a round without throttling ends
//!   the backoff. A wait's deadline is its own: it fails as `wait-timeout`
//!   at `wait_timeout` whatever the poller is doing.
//! - **Idle and cancelled.** With no waiter left the poller's task ends, so
//!   an idle poller sends nothing; the next waiter starts a new one. A
//!   waiter leaves when its [`Watch`] is dropped (its wait over, its user
//!   stopped or aborted); when the last one leaves, a round in flight is
//!   dropped unanswered, as a cancelled user's own poll used to be.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::ctx::{self, Poll};
use super::{Pool, Want};
use crate::failure::Failure;
use crate::ops::{INSTANCES_POLL, SNAPSHOTS_POLL, VOLUMES_POLL};
use crate::stats::{Bytes, Stats};

/// Most ids one Describe call names.
const MAX_IDS: usize = 100;
/// The longest pause throttling stretches a poll interval to.
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// What one poll says to one waiter: the resource's state, or why the call
/// for it failed.
type Outcome = Result<Poll, Failure>;

/// A failure a wait sits out (the next poll may go through): throttling and
/// timeouts. Any other failure ends the wait.
pub(super) fn sat_out(f: &Failure) -> bool {
    f.throttled || f.code == "timeout"
}

/// Whether an outcome ends its wait.
fn ends_wait(out: &Outcome) -> bool {
    match out {
        Ok(Poll::Pending(_)) => false,
        Ok(_) => true,
        Err(f) => !sat_out(f),
    }
}

/// The run's pollers, one per kind of resource a wait can be about.
pub(super) struct Pollers {
    instances: Arc<Poller>,
    volumes: Arc<Poller>,
    snapshots: Arc<Poller>,
}

impl Pollers {
    pub(super) fn new(ec2: &aws_sdk_ec2::Client, stats: &Stats) -> Pollers {
        let one = |pool| {
            Arc::new(Poller {
                pool,
                ec2: ec2.clone(),
                stats: stats.clone(),
                board: Mutex::new(Board::default()),
                wake: Notify::new(),
            })
        };
        Pollers {
            instances: one(Pool::Instances),
            volumes: one(Pool::Volumes),
            snapshots: one(Pool::Snapshots),
        }
    }

    fn of(&self, pool: Pool) -> &Arc<Poller> {
        match pool {
            Pool::Instances => &self.instances,
            Pool::Volumes => &self.volumes,
            Pool::Snapshots => &self.snapshots,
        }
    }

    /// Registers a wait for `id` of `pool` to reach `want`, polled every
    /// `every`; it stays registered until the [`Watch`] is dropped or a
    /// poll ends it (ready, broken, failed).
    pub(super) fn watch(&self, pool: Pool, id: &str, want: Want, every: Duration) -> Watch {
        let poller = self.of(pool);
        let (tx, rx) = watch::channel(None);
        let start = {
            let mut b = poller.board();
            let key = b.join(id, want, every, tx, Instant::now());
            let start = !b.running;
            b.running = true;
            (key, start)
        };
        if start.1 {
            tokio::spawn(poller.clone().run());
        } else {
            // The new waiter's group may be due before the poller's next tick.
            poller.wake.notify_one();
        }
        Watch {
            poller: poller.clone(),
            key: start.0,
            rx,
        }
    }

    /// How many waits `pool`'s poller holds, and whether its task runs.
    #[cfg(test)]
    pub(super) fn load(&self, pool: Pool) -> (usize, bool) {
        let b = self.of(pool).board();
        (b.waiters.len(), b.running)
    }
}

/// One wait's registration with its poller: [`Watch::next`] gives each
/// poll's outcome; dropping it leaves the poller.
pub(super) struct Watch {
    poller: Arc<Poller>,
    key: u64,
    rx: watch::Receiver<Option<Outcome>>,
}

impl Watch {
    /// The outcome of the next poll of this wait's resource.
    pub(super) async fn next(&mut self) -> Outcome {
        if self.rx.changed().await.is_err() {
            // The poller dropped this waiter without an answer that ends the
            // wait: nothing more will come, so the wait runs to its deadline.
            std::future::pending::<()>().await;
        }
        let got = self.rx.borrow_and_update().clone();
        got.unwrap_or_else(|| Ok(Poll::Pending("not polled yet".into())))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let empty = {
            let mut b = self.poller.board();
            b.leave(self.key);
            b.waiters.is_empty()
        };
        if empty {
            // A round in flight for nobody is dropped.
            self.poller.wake.notify_one();
        }
    }
}

/// One kind's poller.
struct Poller {
    pool: Pool,
    ec2: aws_sdk_ec2::Client,
    stats: Stats,
    board: Mutex<Board>,
    /// A waiter came (its group may be due sooner) or the last one left.
    wake: Notify,
}

/// Marks the poller's task ended on the board if it ends other than by
/// going idle (a panic): the next waiter then starts a new one.
struct Running<'a>(Option<&'a Poller>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            p.board().running = false;
        }
    }
}

impl Poller {
    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The poller's task: rounds while anyone waits, then it ends.
    async fn run(self: Arc<Self>) {
        let mut running = Running(Some(&self));
        loop {
            let next = self.board().next(Instant::now());
            let round = match next {
                Next::Idle => {
                    // Ended under the lock, so a waiter arriving now starts
                    // a new task.
                    let mut b = self.board();
                    if b.waiters.is_empty() {
                        b.running = false;
                        running.0 = None;
                        return;
                    }
                    continue;
                }
                Next::At(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = self.wake.notified() => {}
                    }
                    continue;
                }
                Next::Round(round) => round,
            };
            let seen = tokio::select! {
                seen = self.round(&round.batches) => seen,
                _ = self.all_gone() => continue,
            };
            let mut b = self.board();
            b.finish(&round, seen.throttled);
            b.deliver(self.pool, &seen.ids);
        }
    }

    /// Returns once no one waits.
    async fn all_gone(&self) {
        loop {
            let woken = self.wake.notified();
            if self.board().waiters.is_empty() {
                return;
            }
            woken.await;
        }
    }

    /// One round: every batch's call at once.
    async fn round(self: &Arc<Self>, batches: &[Vec<String>]) -> Seen {
        let mut calls = tokio::task::JoinSet::new();
        for batch in batches {
            calls.spawn(self.clone().describe(batch.clone()));
        }
        let mut seen = Seen::default();
        while let Some(done) = calls.join_next().await {
            // A batch whose task failed tells its waiters nothing this round.
            if let Ok(s) = done {
                seen.ids.extend(s.ids);
                seen.throttled |= s.throttled;
            }
        }
        seen
    }

    /// What the cloud says of one batch's ids: one call, more when an id
    /// it does not know fails the call (see the module's comment).
    async fn describe(self: Arc<Self>, ids: Vec<String>) -> Seen {
        let mut seen = Seen::default();
        let mut todo = ids;
        while !todo.is_empty() {
            let f = match self.call(&todo).await {
                Ok(states) => {
                    seen.listed(todo, &states);
                    break;
                }
                Err(f) => f,
            };
            seen.throttled |= f.throttled;
            match after_error(&f, &todo) {
                Retry::No => {
                    for id in todo.drain(..) {
                        seen.ids.insert(id, Said::Failed(f.clone()));
                    }
                }
                Retry::Without(named) => {
                    let (about, rest): (Vec<_>, Vec<_>) = todo
                        .into_iter()
                        .enumerate()
                        .partition(|(i, _)| named.contains(i));
                    for (_, id) in about {
                        seen.ids.insert(id, Said::failed(&f));
                    }
                    todo = rest.into_iter().map(|(_, id)| id).collect();
                }
                Retry::OneByOne => {
                    let mut throttle: Option<Failure> = None;
                    for id in std::mem::take(&mut todo) {
                        // Once throttled, the rest of the batch waits for
                        // the next round.
                        if let Some(t) = &throttle {
                            seen.ids.insert(id, Said::Failed(t.clone()));
                            continue;
                        }
                        match self.call(std::slice::from_ref(&id)).await {
                            Ok(states) => seen.listed(vec![id], &states),
                            Err(f) => {
                                if f.throttled {
                                    seen.throttled = true;
                                    throttle = Some(f.clone());
                                }
                                seen.ids.insert(id, Said::failed(&f));
                            }
                        }
                    }
                }
            }
        }
        seen
    }

    /// One Describe call for `ids`, recorded on the kind's `:poll` row:
    /// the state of each resource it lists.
    async fn call(&self, ids: &[String]) -> Result<HashMap<String, String>, Failure> {
        let ec2 = &self.ec2;
        let ids = Some(ids.to_vec());
        let t0 = Instant::now();
        let pair =
            |id: Option<&str>, state: Option<&str>| Some((id?.to_string(), state?.to_string()));
        Ok(match self.pool {
            Pool::Instances => {
                let res = ec2.describe_instances().set_instance_ids(ids).send().await;
                let out = ctx::measure(&self.stats, INSTANCES_POLL, t0, res, Bytes::default())?;
                out.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter_map(|i| {
                        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str());
                        pair(i.instance_id(), state)
                    })
                    .collect()
            }
            Pool::Volumes => {
                let res = ec2.describe_volumes().set_volume_ids(ids).send().await;
                let out = ctx::measure(&self.stats, VOLUMES_POLL, t0, res, Bytes::default())?;
                out.volumes()
                    .iter()
                    .filter_map(|v| pair(v.volume_id(), v.state().map(|s| s.as_str())))
                    .collect()
            }
            Pool::Snapshots => {
                let res = ec2.describe_snapshots().set_snapshot_ids(ids).send().await;
                let out = ctx::measure(&self.stats, SNAPSHOTS_POLL, t0, res, Bytes::default())?;
                out.snapshots()
                    .iter()
                    .filter_map(|s| pair(s.snapshot_id(), s.state().map(|s| s.as_str())))
                    .collect()
            }
        })
    }
}

/// What one round learnt.
#[derive(Debug, Default)]
struct Seen {
    ids: HashMap<String, Said>,
    /// A call of the round was throttled.
    throttled: bool,
}

impl Seen {
    /// Takes in a call's answer for `ids`.
    fn listed(&mut self, ids: Vec<String>, states: &HashMap<String, String>) {
        for id in ids {
            let said = match states.get(&id) {
                Some(s) => Said::State(s.clone()),
                None => Said::NotListed,
            };
            self.ids.insert(id, said);
        }
    }
}

/// What the cloud said of one id.
#[derive(Debug, Clone, PartialEq)]
enum Said {
    /// Listed, in this state (`running`, `available`, `completed`...).
    State(String),
    /// The call went through but did not list it.
    NotListed,
    /// The cloud does not know the id (`Invalid...ID.NotFound`).
    NotFound(Failure),
    /// The call for it failed otherwise.
    Failed(Failure),
}

impl Said {
    /// What a call that failed with `f` says of an id the failure is
    /// about: the cloud does not know it, or it failed.
    fn failed(f: &Failure) -> Said {
        if f.code.ends_with(".NotFound") {
            Said::NotFound(f.clone())
        } else {
            Said::Failed(f.clone())
        }
    }
}

/// What a wait for `want` makes of what the cloud said of its resource:
/// the same as when each wait polled alone.
fn judge(pool: Pool, want: Want, said: &Said) -> Outcome {
    let state = match said {
        Said::Failed(f) => return Err(f.clone()),
        Said::State(s) => Some(s.as_str()),
        Said::NotListed | Said::NotFound(_) => None,
    };
    let unseen = || -> String {
        match said {
            Said::NotFound(_) => "not found yet".into(),
            _ => "not listed".into(),
        }
    };
    Ok(match pool {
        Pool::Instances => {
            let target = match want {
                Want::Stopped => "stopped",
                Want::Terminated => "terminated",
                _ => "running",
            };
            match state {
                Some(s) if s == target => Poll::Ready,
                Some(s @ ("terminated" | "shutting-down")) if want != Want::Terminated => {
                    Poll::Broken(s.into())
                }
                Some(s) => Poll::Pending(s.into()),
                // Gone, or not listed any more: terminated.
                None if want == Want::Terminated => Poll::Ready,
                None => Poll::Pending(unseen()),
            }
        }
        Pool::Volumes => {
            let target = if want == Want::InUse {
                "in-use"
            } else {
                "available"
            };
            match state {
                Some(s) if s == target => Poll::Ready,
                Some(s @ ("error" | "deleted" | "deleting")) => Poll::Broken(s.into()),
                Some(s) => Poll::Pending(s.into()),
                None => Poll::Pending(unseen()),
            }
        }
        Pool::Snapshots => match (state, said) {
            (_, Said::NotFound(f)) => return Err(f.clone()),
            (Some("completed"), _) => Poll::Ready,
            (Some("error"), _) => Poll::Broken("error".into()),
            (Some(s), _) => Poll::Pending(s.into()),
            (None, _) => Poll::Pending(unseen()),
        },
    })
}

/// What to do after a call for `ids` failed with `f`.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    /// Nothing: the failure is every id's (throttling, an outage, a refusal).
    No,
    /// The failure is about these ids (their indexes): ask again without them.
    Without(Vec<usize>),
    /// The failure is about some ids, but says which only by asking each.
    OneByOne,
}

fn after_error(f: &Failure, ids: &[String]) -> Retry {
    let about_ids = f.code.ends_with(".NotFound") || f.code.ends_with(".Malformed");
    if !about_ids {
        return Retry::No;
    }
    if ids.len() == 1 {
        return Retry::Without(vec![0]);
    }
    let named = named_ids(&f.message, ids);
    if named.is_empty() || named.len() == ids.len() {
        Retry::OneByOne
    } else {
        Retry::Without(named)
    }
}

/// The indexes of the `ids` a message names, word for word (`i-1` is not
/// named by a message that names `i-12`).
fn named_ids(message: &str, ids: &[String]) -> Vec<usize> {
    let words: BTreeSet<&str> = message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    ids.iter()
        .enumerate()
        .filter(|(_, id)| words.contains(id.as_str()))
        .map(|(i, _)| i)
        .collect()
}

/// The pause after a round for a group polled every `every`, after
/// `throttled` throttled rounds in a row: doubled per throttled round, up
/// to [`MAX_BACKOFF`] (an interval longer than that stays as it is).
fn pause(every: Duration, throttled: u32) -> Duration {
    let cap = every.max(MAX_BACKOFF);
    every.saturating_mul(1u32 << throttled.min(16)).min(cap)
}

/// The distinct ids, sorted, in calls of at most [`MAX_IDS`].
fn batches<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<Vec<String>> {
    let distinct: BTreeSet<&str> = ids.into_iter().collect();
    let distinct: Vec<&str> = distinct.into_iter().collect();
    distinct
        .chunks(MAX_IDS)
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// Who waits, grouped by interval, and when each group is polled next.
#[derive(Default)]
struct Board {
    waiters: HashMap<u64, Waiter>,
    groups: BTreeMap<Duration, Group>,
    next_key: u64,
    /// A task runs the poller's loop.
    running: bool,
    /// Throttled rounds in a row.
    throttled: u32,
}

struct Waiter {
    id: String,
    want: Want,
    every: Duration,
    tx: watch::Sender<Option<Outcome>>,
}

/// The waiters polled every same interval.
struct Group {
    next: Instant,
    members: usize,
}

/// What the poller does next.
enum Next {
    /// No one waits.
    Idle,
    /// Nothing is due before then.
    At(Instant),
    Round(Round),
}

/// The groups due, and their waiters' ids in calls.
struct Round {
    started: Instant,
    groups: Vec<Duration>,
    batches: Vec<Vec<String>>,
}

impl Board {
    fn join(
        &mut self,
        id: &str,
        want: Want,
        every: Duration,
        tx: watch::Sender<Option<Outcome>>,
        now: Instant,
    ) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        // A new group's first round: at once, or after the backoff.
        let first = match self.throttled {
            0 => now,
            n => now + pause(every, n),
        };
        let group = self.groups.entry(every).or_insert(Group {
            next: first,
            members: 0,
        });
        group.members += 1;
        let id = id.to_string();
        self.waiters.insert(
            key,
            Waiter {
                id,
                want,
                every,
                tx,
            },
        );
        key
    }

    /// Takes a waiter off the board (its group stays to its next tick).
    fn leave(&mut self, key: u64) {
        if let Some(w) = self.waiters.remove(&key)
            && let Some(g) = self.groups.get_mut(&w.every)
        {
            g.members = g.members.saturating_sub(1);
        }
    }

    fn next(&mut self, now: Instant) -> Next {
        // A group whose tick has come with no one in it is done.
        self.groups.retain(|_, g| g.members > 0 || g.next > now);
        if self.waiters.is_empty() {
            return Next::Idle;
        }
        let groups: Vec<Duration> = self
            .groups
            .iter()
            .filter(|(_, g)| g.next <= now)
            .map(|(every, _)| *every)
            .collect();
        if groups.is_empty() {
            let at = self.groups.values().map(|g| g.next).min();
            return Next::At(at.unwrap_or(now));
        }
        let ids = self
            .waiters
            .values()
            .filter(|w| groups.contains(&w.every))
            .map(|w| w.id.as_str());
        Next::Round(Round {
            started: now,
            batches: batches(ids),
            groups,
        })
    }

    /// After a round: counts throttling and sets the next tick of the
    /// groups it polled.
    fn finish(&mut self, round: &Round, throttled: bool) {
        self.throttled = if throttled {
            self.throttled.saturating_add(1)
        } else {
            0
        };
        for every in &round.groups {
            if let Some(g) = self.groups.get_mut(every) {
                g.next = round.started + pause(*every, self.throttled);
            }
        }
    }

    /// Hands each waiter for an id the round saw its outcome; a waiter whose
    /// wait that ends (or who is gone) leaves the board.
    fn deliver(&mut self, pool: Pool, seen: &HashMap<String, Said>) {
        let mut done = Vec::new();
        for (key, w) in &self.waiters {
            let Some(said) = seen.get(&w.id) else {
                continue;
            };
            let out = judge(pool, w.want, said);
            let ends = ends_wait(&out);
            if w.tx.send(Some(out)).is_err() || ends {
                done.push(*key);
            }
        }
        for key in done {
            self.leave(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i-{i:08x}")).collect()
    }

    #[test]
    fn a_round_asks_for_each_id_once_in_calls_of_at_most_100() {
        let mut all = ids(250);
        // The same id twice (two waits on one resource) is asked for once.
        all.extend(ids(30));
        let calls = batches(all.iter().map(String::as_str));
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        let asked: BTreeSet<&String> = calls.iter().flatten().collect();
        assert_eq!(asked.len(), 250, "each id once, none lost");
        assert!(batches(std::iter::empty()).is_empty(), "no id, no call");
        assert_eq!(batches(["i-1"; 7]).len(), 1);
    }

    #[test]
    fn throttling_doubles_the_pause_up_to_the_cap_and_success_resets_it() {
        let ms = Duration::from_millis;
        let schedule: Vec<Duration> = (0..8).map(|n| pause(ms(500), n)).collect();
        assert_eq!(
            schedule,
            [
                ms(500),
                S,
                2 * S,
                4 * S,
                8 * S,
                16 * S,
                MAX_BACKOFF,
                MAX_BACKOFF
            ]
        );
        assert_eq!(pause(ms(500), u32::MAX), MAX_BACKOFF, "no overflow");
        // An interval above the cap is not stretched, nor shortened.
        assert_eq!(pause(60 * S, 3), 60 * S);
    }

    /// Polls `board` from `t0` for `secs` seconds, stepping 10 ms, as the
    /// poller does; `throttled(round)` says whether a round was throttled.
    /// Returns each round's time (from t0) and ids.
    fn drive(
        board: &mut Board,
        t0: Instant,
        secs: u32,
        throttled: impl Fn(usize) -> bool,
    ) -> Vec<(Duration, Vec<String>)> {
        let mut rounds = Vec::new();
        let step = Duration::from_millis(10);
        let mut now = t0;
        while now < t0 + S * secs {
            if let Next::Round(r) = board.next(now) {
                let asked = r.batches.concat();
                board.finish(&r, throttled(rounds.len()));
                rounds.push((now - t0, asked));
            }
            now += step;
        }
        rounds
    }

    fn join(b: &mut Board, id: &str, every: Duration, now: Instant) -> u64 {
        let (tx, _) = watch::channel(None);
        b.join(id, Want::Running, every, tx, now)
    }

    #[test]
    fn each_waiter_is_polled_at_its_own_interval_and_groups_due_together_share_a_round() {
        let t0 = Instant::now();
        let mut b = Board::default();
        join(&mut b, "i-fast", S, t0);
        join(&mut b, "i-slow", 3 * S, t0);
        let rounds = drive(&mut b, t0, 6, |_| false);
        let at = |id: &str| -> Vec<u64> {
            rounds
                .iter()
                .filter(|(_, ids)| ids.iter().any(|i| i == id))
                .map(|(t, _)| t.as_secs())
                .collect()
        };
        assert_eq!(at("i-fast"), [0, 1, 2, 3, 4, 5]);
        assert_eq!(at("i-slow"), [0, 3]);
        assert_eq!(rounds.len(), 6, "at 0 s and 3 s both go in one round");
    }

    #[test]
    fn a_waiter_joining_a_group_waits_for_its_tick_and_a_new_group_polls_at_once() {
        let t0 = Instant::now();
        let mut b = Board::default();
        join(&mut b, "i-a", S, t0);
        assert!(matches!(b.next(t0), Next::Round(_)), "a new group at once");
        let Next::Round(r) = b.next(t0) else {
            unreachable!()
        };
        b.finish(&r, false);
        // Twenty more come during the first second: none is polled before
        // the group's tick, all are at it, in one call.
        for i in 0..20 {
            join(
                &mut b,
                &format!("i-{i}"),
                S,
                t0 + Duration::from_millis(40 * i),
            );
        }
        assert!(matches!(b.next(t0 + Duration::from_millis(999)), Next::At(at) if at == t0 + S));
        let Next::Round(r) = b.next(t0 + S) else {
            panic!("the tick")
        };
        assert_eq!(r.batches.len(), 1);
        assert_eq!(r.batches[0].len(), 21);
        // Another interval is a group of its own, polled at once.
        join(&mut b, "i-b", 2 * S, t0 + S);
        let Next::Round(r) = b.next(t0 + S) else {
            panic!("a new group")
        };
        assert!(r.batches.concat().contains(&"i-b".to_string()));
    }

    #[test]
    fn a_group_keeps_its_rhythm_one_tick_after_its_last_waiter_then_goes() {
        let t0 = Instant::now();
        let mut b = Board::default();
        let k = join(&mut b, "i-a", S, t0);
        let Next::Round(r) = b.next(t0) else { panic!() };
        b.finish(&r, false);
        b.leave(k);
        assert!(matches!(b.next(t0), Next::Idle));
        // The next wait within the interval joins the tick at 1 s...
        join(&mut b, "i-b", S, t0 + Duration::from_millis(300));
        assert!(matches!(b.next(t0 + Duration::from_millis(300)), Next::At(at) if at == t0 + S));
        // ...and after a tick with no one in it, a wait starts anew at once.
        let mut b = Board::default();
        let k = join(&mut b, "i-a", S, t0);
        let Next::Round(r) = b.next(t0) else { panic!() };
        b.finish(&r, false);
        b.leave(k);
        assert!(matches!(b.next(t0 + S), Next::Idle));
        assert!(b.groups.is_empty());
        join(&mut b, "i-b", S, t0 + 2 * S);
        assert!(matches!(b.next(t0 + 2 * S), Next::Round(_)));
    }

    #[test]
    fn throttled_rounds_back_off_and_a_good_round_resets_the_pace() {
        let t0 = Instant::now();
        let mut b = Board::default();
        join(&mut b, "i-a", S, t0);
        // Rounds 0, 1 and 2 are throttled, then the cloud answers again.
        let rounds = drive(&mut b, t0, 20, |n| n < 3);
        let times: Vec<u64> = rounds.iter().map(|(t, _)| t.as_secs()).collect();
        assert_eq!(times, [0, 2, 6, 14, 15, 16, 17, 18, 19]);
        // A group that starts while the poller is backing off starts late.
        let mut b = Board::default();
        join(&mut b, "i-a", S, t0);
        drive(&mut b, t0, 1, |_| true);
        assert_eq!(b.throttled, 1);
        join(&mut b, "i-b", 3 * S, t0 + S);
        assert!(matches!(b.next(t0 + S), Next::At(at) if at == t0 + 2 * S));
        let rounds = drive(&mut b, t0 + 2 * S, 6, |_| false);
        let first = |id: &str| {
            rounds
                .iter()
                .find(|(_, ids)| ids.iter().any(|i| i == id))
                .map(|(t, _)| t.as_secs() + 2)
        };
        assert_eq!(first("i-a"), Some(2));
        // Its interval doubled once, from when it came: 1 s + 6 s.
        assert_eq!(first("i-b"), Some(7));
    }

    fn nf(code: &str, message: &str) -> Failure {
        Failure::new(code, message)
    }

    #[test]
    fn unknown_ids_are_read_from_the_error_or_asked_one_by_one() {
        let asked = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let three = asked(&["i-0aa", "i-0bb", "i-0cc"]);
        // AWS (and moto) name the ids they do not know.
        let f = nf(
            "InvalidInstanceID.NotFound",
            "The instance IDs 'i-0aa, i-0cc' do not exist",
        );
        assert_eq!(after_error(&f, &three), Retry::Without(vec![0, 2]));
        let f = nf(
            "InvalidInstanceID.NotFound",
            "The instance ID 'i-0bb' does not exist",
        );
        assert_eq!(after_error(&f, &three), Retry::Without(vec![1]));
        // Word for word: naming i-0aab is not naming i-0aa.
        let f = nf(
            "InvalidInstanceID.NotFound",
            "The instance ID 'i-0aab' does not exist",
        );
        assert_eq!(after_error(&f, &three), Retry::OneByOne);
        // Moto names every volume it was asked for; snapshots' errors name none.
        let vols = asked(&["vol-1", "vol-2"]);
        let f = nf(
            "InvalidVolume.NotFound",
            "The volume '{'vol-2', 'vol-1'}' does not exist.",
        );
        assert_eq!(after_error(&f, &vols), Retry::OneByOne);
        assert_eq!(
            after_error(&nf("InvalidSnapshot.NotFound", ""), &vols),
            Retry::OneByOne
        );
        // A lone id is the one the error is about.
        let one = asked(&["snap-1"]);
        assert_eq!(
            after_error(&nf("InvalidSnapshot.NotFound", ""), &one),
            Retry::Without(vec![0])
        );
        // A malformed id is about that id too, and fails its wait.
        let f = nf("InvalidInstanceID.Malformed", "Invalid id: \"i-0bb\"");
        assert_eq!(after_error(&f, &three), Retry::Without(vec![1]));
        assert!(matches!(Said::failed(&f), Said::Failed(_)));
        // Throttling, outages and refusals are every id's.
        for f in [
            nf("RequestLimitExceeded", "Request limit exceeded. i-0aa"),
            nf("HTTP 500", "Internal error"),
            nf("UnauthorizedOperation", "no"),
        ] {
            assert_eq!(after_error(&f, &three), Retry::No, "{f:?}");
        }
    }

    #[test]
    fn each_kind_judges_what_the_cloud_said_as_its_wait_always_has() {
        let st = |s: &str| Said::State(s.into());
        let gone = Said::NotFound(nf("InvalidInstanceID.NotFound", "x"));
        let pending = |s: &str| Ok(Poll::Pending(s.into()));
        let broken = |s: &str| Ok(Poll::Broken(s.into()));
        let i = |want, said: &Said| judge(Pool::Instances, want, said);
        assert_eq!(i(Want::Running, &st("running")), Ok(Poll::Ready));
        assert_eq!(i(Want::Running, &st("pending")), pending("pending"));
        assert_eq!(
            i(Want::Running, &st("shutting-down")),
            broken("shutting-down")
        );
        assert_eq!(i(Want::Stopped, &st("terminated")), broken("terminated"));
        assert_eq!(i(Want::Stopped, &st("stopping")), pending("stopping"));
        assert_eq!(i(Want::Running, &gone), pending("not found yet"));
        assert_eq!(i(Want::Running, &Said::NotListed), pending("not listed"));
        assert_eq!(
            i(Want::Terminated, &st("shutting-down")),
            pending("shutting-down")
        );
        assert_eq!(i(Want::Terminated, &gone), Ok(Poll::Ready));
        assert_eq!(i(Want::Terminated, &Said::NotListed), Ok(Poll::Ready));
        let v = |want, said: &Said| judge(Pool::Volumes, want, said);
        assert_eq!(v(Want::Available, &st("available")), Ok(Poll::Ready));
        assert_eq!(v(Want::InUse, &st("available")), pending("available"));
        assert_eq!(v(Want::InUse, &st("in-use")), Ok(Poll::Ready));
        assert_eq!(v(Want::Available, &st("deleting")), broken("deleting"));
        assert_eq!(v(Want::Available, &st("error")), broken("error"));
        assert_eq!(v(Want::Available, &gone), pending("not found yet"));
        let s = |said: &Said| judge(Pool::Snapshots, Want::Completed, said);
        assert_eq!(s(&st("completed")), Ok(Poll::Ready));
        assert_eq!(s(&st("pending")), pending("pending"));
        assert_eq!(s(&st("error")), broken("error"));
        let unknown = nf("InvalidSnapshot.NotFound", "");
        assert_eq!(s(&Said::NotFound(unknown.clone())), Err(unknown));
        // A failed call is the wait's failure, whatever the kind.
        let t = nf("RequestLimitExceeded", "slow down");
        assert_eq!(s(&Said::Failed(t.clone())), Err(t.clone()));
        assert!(sat_out(&t) && !ends_wait(&Err(t)));
    }

    #[test]
    fn an_answer_that_ends_a_wait_takes_the_waiter_off_the_board() {
        let t0 = Instant::now();
        let mut b = Board::default();
        let mut rx = Vec::new();
        for id in ["i-ready", "i-pending", "i-throttled", "i-refused"] {
            let (tx, r) = watch::channel(None);
            b.join(id, Want::Running, S, tx, t0);
            rx.push(r);
        }
        // A waiter gone without leaving (its receiver dropped) is pruned too.
        let (tx, r) = watch::channel(None);
        b.join("i-dropped", Want::Running, S, tx, t0);
        drop(r);
        let said: HashMap<String, Said> = [
            ("i-ready", Said::State("running".into())),
            ("i-pending", Said::State("pending".into())),
            ("i-throttled", Said::Failed(nf("Throttling", "x"))),
            ("i-refused", Said::Failed(nf("refused", "x"))),
            ("i-dropped", Said::State("pending".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        b.deliver(Pool::Instances, &said);
        let mut left: Vec<&str> = b.waiters.values().map(|w| w.id.as_str()).collect();
        left.sort();
        assert_eq!(left, ["i-pending", "i-throttled"]);
        assert_eq!(b.groups[&S].members, 2);
        assert_eq!(
            rx[0].borrow().clone(),
            Some(Ok(Poll::Ready)),
            "each got its own answer"
        );
        assert_eq!(
            rx[1].borrow().clone(),
            Some(Ok(Poll::Pending("pending".into())))
        );
    }

    /// The requests and failures of a row.
    fn row(ctx: &super::super::RunCtx, name: &str) -> (u64, u64) {
        let snap = ctx.stats.snapshot();
        snap.entries
            .iter()
            .find(|e| e.name == name)
            .map_or((0, 0), |e| (e.num_requests, e.num_failures))
    }

    /// Against moto: ids it does not know share a batch with ids it does.
    /// Each kind's first round is one batch of all its waits; no unknown id
    /// keeps the others from their answer, and each call is a request on
    /// the kind's `:poll` row. (One thread: every wait is registered before
    /// the pollers' first round.)
    #[tokio::test]
    async fn an_unknown_id_in_a_batch_never_starves_the_others() {
        let moto = super::super::tests::Moto::start();
        let dir = tempfile::tempdir().unwrap();
        let ctx = super::super::tests::ctx_at(dir.path(), &moto.url).await;
        let ec2 = &ctx.clients.ec2;
        let images = ec2.describe_images().send().await.unwrap();
        let image = images.images()[0].image_id().unwrap();
        let run = ec2
            .run_instances()
            .image_id(image)
            .min_count(3)
            .max_count(3)
            .send()
            .await
            .unwrap();
        let instances: Vec<&str> = run
            .instances()
            .iter()
            .filter_map(|i| i.instance_id())
            .collect();
        let mut volumes = Vec::new();
        for _ in 0..3 {
            let v = ec2
                .create_volume()
                .availability_zone("us-east-1a")
                .size(1)
                .send()
                .await
                .unwrap();
            volumes.push(v.volume_id().unwrap().to_string());
        }
        let snap = ec2
            .create_snapshot()
            .volume_id(&volumes[0])
            .send()
            .await
            .unwrap();
        let snap = snap.snapshot_id().unwrap();

        let every = Duration::from_secs(1);
        let p = &ctx.pollers;
        let watch_all = |pool, ids: &[&str], want| -> Vec<Watch> {
            ids.iter()
                .map(|id| p.watch(pool, id, want, every))
                .collect()
        };
        let gone = "i-0123456789abcdef0";
        let mut i = watch_all(Pool::Instances, &instances, Want::Running);
        let mut i_gone = p.watch(Pool::Instances, gone, Want::Running, every);
        let mut i_ended = p.watch(
            Pool::Instances,
            "i-0123456789abcdef1",
            Want::Terminated,
            every,
        );
        let volume_ids: Vec<&str> = volumes.iter().map(String::as_str).collect();
        let mut v = watch_all(Pool::Volumes, &volume_ids, Want::Available);
        let mut v_gone = p.watch(
            Pool::Volumes,
            "vol-0123456789abcdef0",
            Want::Available,
            every,
        );
        let mut s = p.watch(Pool::Snapshots, snap, Want::Completed, every);
        let mut s_gone = p.watch(
            Pool::Snapshots,
            "snap-0123456789abcdef0",
            Want::Completed,
            every,
        );
        assert_eq!(p.load(Pool::Instances), (5, true));

        for w in i.iter_mut().chain(v.iter_mut()).chain([&mut s]) {
            assert_eq!(w.next().await, Ok(Poll::Ready));
        }
        let not_yet = Ok(Poll::Pending("not found yet".into()));
        assert_eq!(i_gone.next().await, not_yet);
        assert_eq!(i_ended.next().await, Ok(Poll::Ready), "gone: terminated");
        assert_eq!(v_gone.next().await, not_yet);
        let s_failed = s_gone.next().await.unwrap_err();
        assert_eq!(
            s_failed.code, "InvalidSnapshot.NotFound",
            "as a snapshot wait always failed"
        );
        // Instances: moto's error names one unknown id (AWS's names them
        // all), so the batch of 5 is asked again without it, then without
        // the other, and the 3 known ones come in the third call. Volumes:
        // moto names all 4 ids it was asked for, so each is asked alone.
        // Snapshots: the error names none, so each is asked alone.
        assert_eq!(row(&ctx, INSTANCES_POLL), (3, 2));
        assert_eq!(row(&ctx, VOLUMES_POLL), (5, 2));
        assert_eq!(row(&ctx, SNAPSHOTS_POLL), (3, 2));
        // Only the waits still pending stay on the boards.
        assert_eq!(p.load(Pool::Instances).0, 1);
        assert_eq!(p.load(Pool::Volumes).0, 1);
        assert_eq!(p.load(Pool::Snapshots).0, 0);
        // The next round asks for the unknown ones alone: one call each.
        assert_eq!(i_gone.next().await, not_yet);
        assert_eq!(v_gone.next().await, not_yet);
        assert_eq!(row(&ctx, INSTANCES_POLL), (4, 3));
        assert_eq!(row(&ctx, VOLUMES_POLL), (6, 3));
        drop((i, i_gone, i_ended, v, v_gone, s, s_gone));
        tokio::time::sleep(Duration::from_millis(50)).await;
        for pool in [Pool::Instances, Pool::Volumes, Pool::Snapshots] {
            assert_eq!(p.load(pool), (0, false), "{pool:?}: no waiter, no task");
        }
        // An idle poller sends nothing.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(row(&ctx, INSTANCES_POLL), (4, 3));
        // A wait that starts past its deadline still gets its one poll.
        let long_ago = Instant::now() - Duration::from_secs(5);
        let subject = (Pool::Instances, instances[0], Want::Running);
        let p = params(Duration::from_secs(1));
        let r = ctx
            .wait_for(&p, "ec2:instance-running", subject, long_ago)
            .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(row(&ctx, INSTANCES_POLL), (5, 3));
        assert_eq!(row(&ctx, "ec2:instance-running"), (1, 0));
    }

    /// A server that accepts connections and never answers.
    fn silent_server() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming() {
                held.push(c);
            }
        });
        url
    }

    fn params(wait_timeout: Duration) -> crate::profile::Params {
        crate::profile::Params {
            wait_timeout,
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        }
    }

    /// A wait fails as `wait-timeout` at its deadline even while its poll
    /// hangs; the hung call is dropped unrecorded once no one waits, and the
    /// poller's task ends.
    #[tokio::test]
    async fn a_wait_times_out_at_its_deadline_while_its_poll_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = super::super::tests::ctx_at(dir.path(), &silent_server()).await;
        let t0 = Instant::now();
        let subject = (Pool::Instances, "i-1", Want::Running);
        let r = ctx
            .wait_for(
                &params(Duration::from_millis(300)),
                "ec2:instance-running",
                subject,
                t0,
            )
            .await;
        let took = t0.elapsed();
        let Err(super::super::StepError::Failed(f)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(f.code, "wait-timeout");
        assert!(
            f.message.contains("instance i-1 not ready after 300ms"),
            "{}",
            f.message
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(800),
            "{took:?}"
        );
        assert_eq!(row(&ctx, "ec2:instance-running"), (1, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ctx.pollers.load(Pool::Instances), (0, false));
        assert_eq!(
            row(&ctx, INSTANCES_POLL),
            (0, 0),
            "the dropped call is not a request"
        );
    }

    /// Waits cancelled mid-wait (a stopped or aborted user) leave the board;
    /// they record nothing, and the poller's task ends.
    #[tokio::test]
    async fn waits_cancelled_mid_wait_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = super::super::tests::ctx_at(dir.path(), &silent_server()).await;
        let p = params(Duration::from_secs(600));
        let wait = |id| {
            ctx.wait_for(
                &p,
                "ec2:volume-available",
                (Pool::Volumes, id, Want::Available),
                Instant::now(),
            )
        };
        let cancelled = tokio::time::timeout(Duration::from_millis(200), async {
            tokio::join!(wait("vol-1"), wait("vol-2"), wait("vol-3"))
        })
        .await;
        assert!(cancelled.is_err());
        assert_eq!(ctx.pollers.load(Pool::Volumes).0, 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ctx.pollers.load(Pool::Volumes), (0, false));
        assert!(
            ctx.stats
                .snapshot()
                .entries
                .iter()
                .all(|e| e.num_requests == 0)
        );
    }

    /// A poll that fails for good fails the wait with its code, as it did,
    /// and is one failed request on the poll row.
    #[tokio::test]
    async fn a_refused_poll_fails_the_wait_and_is_a_failed_request() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = super::super::tests::offline_ctx(dir.path()).await;
        let subject = (Pool::Snapshots, "snap-1", Want::Completed);
        let p = params(Duration::from_secs(600));
        let r = ctx
            .wait_for(&p, "ec2:snapshot-completed", subject, Instant::now())
            .await;
        let Err(super::super::StepError::Failed(f)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(f.code, "refused");
        assert_eq!(row(&ctx, SNAPSHOTS_POLL), (1, 1));
        assert_eq!(row(&ctx, "ec2:snapshot-completed"), (1, 1));
    }

    /// A server that gives each request the next of `answers` (status, EC2
    /// error code), then closes the connection; it counts the requests.
    fn canned_server(answers: &'static [(u16, &'static str)]) -> (String, Arc<Mutex<usize>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let served = Arc::new(Mutex::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for (mut c, (status, code)) in l.incoming().flatten().zip(answers) {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let _ = r.read_exact(&mut vec![0; len]);
                *count.lock().unwrap() += 1;
                let body = format!(
                    "<Response><Errors><Error><Code>{code}</Code><Message></Message></Error></Errors><RequestID>x</RequestID></Response>"
                );
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, served)
    }

    /// Asking a batch one id at a time stops at the first throttled call:
    /// the rest of the batch is not sent, sits the round out (throttled,
    /// not failed), and the round counts as throttled.
    #[tokio::test]
    async fn asking_one_by_one_stops_at_throttling() {
        let (url, served) = canned_server(&[
            (400, "InvalidVolume.NotFound"),
            (503, "RequestLimitExceeded"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let ctx = super::super::tests::ctx_at(dir.path(), &url).await;
        let poller = ctx.pollers.of(Pool::Volumes).clone();
        let ids: Vec<String> = ["vol-1", "vol-2", "vol-3"].map(String::from).to_vec();
        let seen = poller.describe(ids).await;
        assert!(seen.throttled);
        assert_eq!(seen.ids.len(), 3);
        for (id, said) in &seen.ids {
            let Said::Failed(f) = said else {
                panic!("{id}: {said:?}")
            };
            assert_eq!(f.code, "RequestLimitExceeded", "{id}");
            assert!(sat_out(f));
        }
        assert_eq!(*served.lock().unwrap(), 2, "the batch, then one id");
        assert_eq!(row(&ctx, VOLUMES_POLL), (2, 2));
        assert_eq!(ctx.stats.snapshot().total.num_throttled, 1);
    }
}
