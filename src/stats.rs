//! Request statistics: one HDR histogram (µs resolution) per entry, counts,
//! bytes, throttling, errors grouped by entry and code, a sliding window for
//! current RPS and current percentiles, and a per-second history.
//!
//! `StatsData` is a plain value that merges (`merge`), so a coordinator can
//! sum the deltas of many engines; `Stats` is the shared, locked recorder a
//! single engine writes into. Stats call nothing: the op catalogue says
//! which entries are requests, and the run context fans each measurement out
//! to the stats and to Prometheus.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::failure::Failure;
use crate::ops::EntryKind;

/// The percentiles every report shows, as fractions.
pub const PERCENTILES: [f64; 11] = [
    0.50, 0.66, 0.75, 0.80, 0.90, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0,
];
/// Locust's labels for [`PERCENTILES`].
pub const PERCENTILE_LABELS: [&str; 11] = [
    "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%",
];
/// Seconds in the sliding window behind "current" figures.
pub const WINDOW_SECS: u64 = 10;
/// Longest latency a histogram holds (one hour, in µs); longer ones are clamped.
const MAX_US: u64 = 3_600_000_000;

/// An empty histogram with the bounds every entry uses (1 µs to an hour, 3
/// significant digits), so histograms add and subtract.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// What one measured request carried, for byte counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bytes {
    pub sent: u64,
    pub received: u64,
}

/// Everything known about one entry (an op such as `ec2:RunInstances` or a
/// wait such as `ec2:instance-running`).
#[derive(Debug, Clone)]
pub struct Entry {
    pub hist: Histogram<u64>,
    pub num_requests: u64,
    pub num_failures: u64,
    pub num_throttled: u64,
    pub total_us: u64,
    pub min_us: u64,
    pub max_us: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub first_request: f64,
    pub last_request: f64,
    /// What the entry measures (the op catalogue says, once, when the entry
    /// is made): only requests count in the aggregate and the current
    /// percentiles.
    pub kind: EntryKind,
    /// (unix second, requests, failures) for the last seconds.
    per_sec: VecDeque<(u64, u64, u64)>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            hist: new_hist(),
            num_requests: 0,
            num_failures: 0,
            num_throttled: 0,
            total_us: 0,
            min_us: u64::MAX,
            max_us: 0,
            bytes_sent: 0,
            bytes_received: 0,
            first_request: 0.0,
            last_request: 0.0,
            kind: EntryKind::Request,
            per_sec: VecDeque::new(),
        }
    }
}

impl Entry {
    /// An empty entry for `name`, of the kind the op catalogue says.
    pub fn named(name: &str) -> Entry {
        Entry {
            kind: crate::ops::entry_kind(name).unwrap_or(EntryKind::Request),
            ..Entry::default()
        }
    }

    fn record(&mut self, now: f64, us: u64, bytes: Bytes, failed: bool, throttled: bool) {
        let us = us.clamp(1, MAX_US);
        self.hist.saturating_record(us);
        self.num_requests += 1;
        self.num_failures += failed as u64;
        self.num_throttled += throttled as u64;
        self.total_us += us;
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
        self.bytes_sent += bytes.sent;
        self.bytes_received += bytes.received;
        if self.first_request == 0.0 || now < self.first_request {
            self.first_request = now;
        }
        self.last_request = self.last_request.max(now);
        bump_sec(&mut self.per_sec, now as u64, 1, failed as u64);
    }

    /// Adds another entry's figures into this one.
    pub fn merge(&mut self, o: &Entry) {
        self.hist.add(&o.hist).expect("same histogram bounds");
        self.num_requests += o.num_requests;
        self.num_failures += o.num_failures;
        self.num_throttled += o.num_throttled;
        self.total_us += o.total_us;
        self.min_us = self.min_us.min(o.min_us);
        self.max_us = self.max_us.max(o.max_us);
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        if o.num_requests > 0 {
            if self.first_request == 0.0 || o.first_request < self.first_request {
                self.first_request = o.first_request;
            }
            self.last_request = self.last_request.max(o.last_request);
        }
        for &(s, r, f) in &o.per_sec {
            bump_sec(&mut self.per_sec, s, r, f);
        }
    }

    /// The recorded values as (µs, count), ascending: what a worker sends
    /// (each is its bucket's highest equivalent value, so recording it
    /// again lands in the same bucket: exact).
    pub fn values(&self) -> Vec<(u64, u64)> {
        self.hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// Adds a worker's figures for this entry. Figures that contradict
    /// each other (a broken or lying worker) are brought into line, so they
    /// skew nothing else: failures and throttles are at most the requests,
    /// a min above the max gives way to the values' own range, and the
    /// total time lies between requests × min and requests × max.
    pub fn add_delta(&mut self, d: &Delta) {
        for &(us, n) in &d.values {
            self.hist.saturating_record_n(us.clamp(1, MAX_US), n);
        }
        let requests = d.requests;
        let (min_us, max_us) = if d.min_us <= d.max_us {
            let max_us = d.max_us.min(MAX_US);
            (d.min_us.min(max_us), max_us)
        } else {
            let seen = d
                .values
                .iter()
                .filter(|v| v.1 > 0)
                .map(|v| v.0.clamp(1, MAX_US));
            (seen.clone().min().unwrap_or(0), seen.max().unwrap_or(0))
        };
        let total_us = d.total_us.clamp(
            requests.saturating_mul(min_us),
            requests.saturating_mul(max_us),
        );
        self.num_requests += requests;
        self.num_failures += d.failures.min(requests);
        self.num_throttled += d.throttled.min(requests);
        self.total_us = self.total_us.saturating_add(total_us);
        if requests > 0 {
            self.min_us = self.min_us.min(min_us);
            self.max_us = self.max_us.max(max_us);
            if self.first_request == 0.0 || (d.first > 0.0 && d.first < self.first_request) {
                self.first_request = d.first;
            }
            self.last_request = self.last_request.max(d.last);
        }
        self.bytes_sent += d.sent;
        self.bytes_received += d.received;
        for &(sec, r, f) in d.per_sec.iter().take(64) {
            bump_sec(&mut self.per_sec, sec, r, f);
        }
    }

    /// (unix second, requests, failures) of the last seconds, oldest first.
    pub fn per_second(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.per_sec.iter().copied()
    }

    /// Requests and failures per second over the last complete seconds.
    fn current(&self, now: f64, started: f64) -> (f64, f64) {
        let now_s = now as u64;
        let lo = now_s.saturating_sub(WINDOW_SECS);
        let (mut r, mut f) = (0, 0);
        for &(s, rr, ff) in &self.per_sec {
            if s >= lo && s < now_s {
                r += rr;
                f += ff;
            }
        }
        let span = ((now_s as f64 - started.floor()).max(1.0)).min(WINDOW_SECS as f64);
        (r as f64 / span, f as f64 / span)
    }
}

fn bump_sec(v: &mut VecDeque<(u64, u64, u64)>, sec: u64, r: u64, f: u64) {
    match v.iter_mut().rev().find(|e| e.0 == sec) {
        Some(e) => {
            e.1 += r;
            e.2 += f;
        }
        None => {
            let pos = v.iter().rposition(|e| e.0 < sec).map_or(0, |p| p + 1);
            v.insert(pos, (sec, r, f));
        }
    }
    let newest = v.back().map_or(sec, |e| e.0);
    while v.front().is_some_and(|e| e.0 + WINDOW_SECS + 2 < newest) {
        v.pop_front();
    }
}

/// One entry's figures as a worker reports them (since its last report):
/// counts and the recorded values, sparse, so a master adds them without
/// building a histogram per report.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub requests: u64,
    pub failures: u64,
    pub throttled: u64,
    pub total_us: u64,
    pub min_us: u64,
    pub max_us: u64,
    pub sent: u64,
    pub received: u64,
    /// Unix seconds of the first and last request.
    pub first: f64,
    pub last: f64,
    /// (µs, count) of the recorded values.
    pub values: Vec<(u64, u64)>,
    /// (unix second, requests, failures).
    pub per_sec: Vec<(u64, u64, u64)>,
}

impl Default for Delta {
    fn default() -> Self {
        Delta {
            requests: 0,
            failures: 0,
            throttled: 0,
            total_us: 0,
            min_us: u64::MAX,
            max_us: 0,
            sent: 0,
            received: 0,
            first: 0.0,
            last: 0.0,
            values: vec![],
            per_sec: vec![],
        }
    }
}

impl Delta {
    /// An entry's figures, as its worker sends them.
    pub fn of(e: &Entry) -> Delta {
        Delta {
            requests: e.num_requests,
            failures: e.num_failures,
            throttled: e.num_throttled,
            total_us: e.total_us,
            min_us: e.min_us,
            max_us: e.max_us,
            sent: e.bytes_sent,
            received: e.bytes_received,
            first: e.first_request,
            last: e.last_request,
            values: e.values(),
            per_sec: e.per_second().collect(),
        }
    }
}

/// One group of errors.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorStat {
    pub name: String,
    pub code: String,
    pub message: String,
    pub count: u64,
    pub throttled: bool,
    pub first_seen: f64,
    pub last_seen: f64,
}

/// One row of the per-second history (Locust's stats_history).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub timestamp: f64,
    pub user_count: u64,
    pub current_rps: f64,
    pub current_fail_per_sec: f64,
    /// Current-window percentiles (ms), labels as [`PERCENTILE_LABELS`].
    pub percentiles_ms: Vec<f64>,
    pub total_requests: u64,
    pub total_failures: u64,
    pub total_throttled: u64,
    pub total_median_ms: f64,
    pub total_avg_ms: f64,
    pub total_min_ms: f64,
    pub total_max_ms: f64,
    pub total_avg_content_size: f64,
    /// Arrivals of open classes dropped so far, all classes.
    pub total_dropped: u64,
    /// Every in-flight slot was taken this second: a user waited for one
    /// (`--max-inflight`).
    pub saturated: bool,
    /// Arrivals of open classes dropped during this second (no free user).
    pub dropped: u64,
    /// How late the runtime's 100 ms probe woke, at worst, this second (ms).
    pub runtime_lag_ms: f64,
    /// The load generator, not the cloud, limited this second's figures:
    /// saturated, arrivals dropped, or a runtime lag above [`LAG_LIMIT_MS`].
    pub generator_limited: bool,
}

impl HistoryRow {
    /// Why the second was generator-limited (empty when it was not).
    pub fn limited_by(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.saturated {
            why.push("in-flight slots full".to_string());
        }
        if self.dropped > 0 {
            why.push(format!("{} arrivals dropped", self.dropped));
        }
        if self.runtime_lag_ms > LAG_LIMIT_MS {
            why.push(format!("runtime lag {:.0} ms", self.runtime_lag_ms));
        }
        why
    }
}

/// What the load generator itself measured over one second, for the
/// history: the engine's in-flight slots and its runtime's lag.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Health {
    /// A user waited for an in-flight slot during the second.
    pub saturated: bool,
    /// The runtime probe's worst lateness over the second (ms).
    pub runtime_lag_ms: f64,
}

/// Runtime lag (ms) above which a second counts as generator-limited: the
/// runtime woke its tasks this late, so measured latencies include it.
pub const LAG_LIMIT_MS: f64 = 50.0;

/// All statistics of a run (or of a delta from one engine): mergeable.
#[derive(Debug, Clone)]
pub struct StatsData {
    pub started: f64,
    pub entries: BTreeMap<String, Entry>,
    pub errors: BTreeMap<(String, String), ErrorStat>,
    /// Ops that a budget cap kept from creating, per entry.
    pub capped: BTreeMap<String, u64>,
    /// Users whose task panicked (each also an error of code `panic`).
    pub user_panics: u64,
    /// Arrivals of open classes that found no free user, per class: never
    /// run, never queued.
    pub dropped: BTreeMap<String, u64>,
    /// Aggregated histograms of the last seconds, for current percentiles.
    window: VecDeque<(u64, Histogram<u64>)>,
    pub history: Vec<HistoryRow>,
}

impl Default for StatsData {
    fn default() -> Self {
        StatsData {
            started: unix_now(),
            entries: BTreeMap::new(),
            errors: BTreeMap::new(),
            capped: BTreeMap::new(),
            user_panics: 0,
            dropped: BTreeMap::new(),
            window: VecDeque::new(),
            history: Vec::new(),
        }
    }
}

impl StatsData {
    /// Records one measurement; answers what the entry measures.
    pub fn record(
        &mut self,
        name: &str,
        took: Duration,
        bytes: Bytes,
        fail: Option<&Failure>,
    ) -> EntryKind {
        self.record_at(unix_now(), name, took, bytes, fail)
    }

    /// Records one measurement as if it completed at unix time `now`
    /// (tests and replays; [`StatsData::record`] uses the clock).
    pub fn record_at(
        &mut self,
        now: f64,
        name: &str,
        took: Duration,
        bytes: Bytes,
        fail: Option<&Failure>,
    ) -> EntryKind {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let throttled = fail.is_some_and(|f| f.throttled);
        let kind = match self.entries.get_mut(name) {
            Some(e) => {
                e.record(now, us, bytes, fail.is_some(), throttled);
                e.kind
            }
            None => {
                let mut e = Entry::named(name);
                e.record(now, us, bytes, fail.is_some(), throttled);
                let kind = e.kind;
                self.entries.insert(name.to_string(), e);
                kind
            }
        };
        let request = kind == EntryKind::Request;
        let sec = now as u64;
        if self.window.back().is_none_or(|w| w.0 != sec) {
            self.window.push_back((sec, new_hist()));
            while self.window.front().is_some_and(|w| w.0 + WINDOW_SECS < sec) {
                self.window.pop_front();
            }
        }
        if request && let Some(w) = self.window.back_mut() {
            w.1.saturating_record(us.clamp(1, MAX_US));
        }
        if let Some(f) = fail {
            self.count_error(now, name, f);
        }
        kind
    }

    fn count_error(&mut self, now: f64, name: &str, f: &Failure) {
        let key = (name.to_string(), f.code.clone());
        let err = self.errors.entry(key).or_insert_with(|| ErrorStat {
            name: name.to_string(),
            code: f.code.clone(),
            message: truncate(&f.message, 300),
            count: 0,
            throttled: f.throttled,
            first_seen: now,
            last_seen: now,
        });
        err.count += 1;
        err.last_seen = err.last_seen.max(now);
        err.first_seen = err.first_seen.min(now);
    }

    /// Counts a user whose task panicked in `name` (an op, or `user:<class>`):
    /// an error grouped by entry and code like the others, but no request
    /// (whether the op had sent one is unknown).
    pub fn record_panic(&mut self, name: &str, f: &Failure) {
        self.user_panics += 1;
        self.count_error(unix_now(), name, f);
    }

    /// Counts an op that a budget cap kept from creating.
    pub fn count_capped(&mut self, name: &str) {
        *self.capped.entry(name.to_string()).or_default() += 1;
    }

    /// Counts `n` arrivals of open class `class` that found no free user
    /// (0 makes the class show with none dropped). The class's
    /// `arrival:<class>` row shows from then on, even before a task starts.
    pub fn count_dropped(&mut self, class: &str, n: u64) {
        match self.dropped.get_mut(class) {
            Some(d) => *d += n,
            None => {
                self.dropped.insert(class.to_string(), n);
                let row = crate::ops::arrival_entry(class);
                let e = Entry::named(&row);
                self.entries.entry(row).or_insert(e);
            }
        }
    }

    /// Adds another engine's statistics (or a delta of them) into these.
    pub fn merge(&mut self, o: &StatsData) {
        self.started = self.started.min(o.started);
        self.user_panics += o.user_panics;
        for (k, n) in &o.capped {
            *self.capped.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &o.dropped {
            self.count_dropped(k, *n);
        }
        for (k, e) in &o.entries {
            self.entries
                .entry(k.clone())
                .or_insert_with(|| Entry::named(k))
                .merge(e);
        }
        for (k, e) in &o.errors {
            match self.errors.get_mut(k) {
                Some(m) => {
                    m.count += e.count;
                    m.first_seen = m.first_seen.min(e.first_seen);
                    m.last_seen = m.last_seen.max(e.last_seen);
                }
                None => {
                    self.errors.insert(k.clone(), e.clone());
                }
            }
        }
        for (s, h) in &o.window {
            match self.window.iter_mut().find(|w| w.0 == *s) {
                Some(w) => w.1.add(h).expect("same bounds"),
                None => {
                    let pos = self
                        .window
                        .iter()
                        .rposition(|w| w.0 < *s)
                        .map_or(0, |p| p + 1);
                    self.window.insert(pos, (*s, h.clone()));
                }
            }
        }
    }

    /// Adds an entry's figures as a worker reported them: into the entry
    /// of that name (made once per run, never per report), and, for
    /// requests, into the window behind current percentiles at the second of
    /// its last request. Cost: the values the report carries, not the
    /// histogram's size.
    pub fn add_delta(&mut self, name: &str, d: &Delta) {
        let e = match self.entries.get_mut(name) {
            Some(e) => e,
            None => self
                .entries
                .entry(name.to_string())
                .or_insert_with(|| Entry::named(name)),
        };
        e.add_delta(d);
        if e.kind != EntryKind::Request || d.requests == 0 {
            return;
        }
        let sec = d.last as u64;
        let pos = match self.window.iter().position(|w| w.0 == sec) {
            Some(p) => p,
            None => {
                let p = self
                    .window
                    .iter()
                    .rposition(|w| w.0 < sec)
                    .map_or(0, |p| p + 1);
                self.window.insert(p, (sec, new_hist()));
                while self.window.len() > WINDOW_SECS as usize + 2 {
                    self.window.pop_front();
                }
                match self.window.iter().position(|w| w.0 == sec) {
                    Some(p) => p,
                    None => return,
                }
            }
        };
        for &(us, n) in &d.values {
            self.window[pos]
                .1
                .saturating_record_n(us.clamp(1, MAX_US), n);
        }
    }

    /// What was recorded since `before` (an earlier copy of these
    /// figures): counts and histograms subtracted, min and max from the
    /// difference's histogram, `started` at `since` (unix seconds), so rates
    /// are per second of that span. A capacity search judges each step on it.
    pub fn since(&self, before: &StatsData, since: f64) -> StatsData {
        let mut out = StatsData {
            started: since,
            ..StatsData::default()
        };
        for (name, e) in &self.entries {
            let mut d = e.clone();
            if let Some(b) = before.entries.get(name) {
                let _ = d.hist.subtract(&b.hist);
                d.num_requests -= b.num_requests.min(d.num_requests);
                d.num_failures -= b.num_failures.min(d.num_failures);
                d.num_throttled -= b.num_throttled.min(d.num_throttled);
                d.total_us -= b.total_us.min(d.total_us);
                d.bytes_sent -= b.bytes_sent.min(d.bytes_sent);
                d.bytes_received -= b.bytes_received.min(d.bytes_received);
            }
            if d.num_requests == 0 {
                continue;
            }
            d.min_us = d.hist.min().max(1);
            d.max_us = d.hist.max();
            d.first_request = d.first_request.max(since);
            out.entries.insert(name.clone(), d);
        }
        for (k, e) in &self.errors {
            let was = before.errors.get(k).map_or(0, |b| b.count);
            if e.count > was {
                let mut e = e.clone();
                e.count -= was;
                out.errors.insert(k.clone(), e);
            }
        }
        for (class, n) in &self.dropped {
            let was = before.dropped.get(class).copied().unwrap_or(0);
            out.dropped.insert(class.clone(), n.saturating_sub(was));
        }
        out
    }

    /// Adds a group of errors (a worker's report read back).
    pub fn add_error(&mut self, e: ErrorStat) {
        match self.errors.get_mut(&(e.name.clone(), e.code.clone())) {
            Some(m) => {
                m.count += e.count;
                m.first_seen = m.first_seen.min(e.first_seen);
                m.last_seen = m.last_seen.max(e.last_seen);
            }
            None => {
                self.errors.insert((e.name.clone(), e.code.clone()), e);
            }
        }
    }

    /// The aggregate of the API request entries (waits such as
    /// `ec2:instance-running` are not requests and stay on their own rows).
    pub fn total(&self) -> Entry {
        let mut t = Entry::default();
        for e in self
            .entries
            .values()
            .filter(|e| e.kind == EntryKind::Request)
        {
            t.merge(e);
        }
        t
    }

    /// Percentiles (ms) of the aggregated requests of the last window.
    fn current_percentiles(&self, now: f64) -> Vec<f64> {
        let lo = (now as u64).saturating_sub(WINDOW_SECS);
        let mut h = new_hist();
        for (s, w) in &self.window {
            if *s >= lo {
                h.add(w).expect("same bounds");
            }
        }
        if h.is_empty() {
            return vec![0.0; PERCENTILES.len()];
        }
        PERCENTILES
            .iter()
            .map(|&q| {
                let v = if q >= 1.0 {
                    h.max()
                } else {
                    h.value_at_quantile(q)
                };
                us_to_ms(v)
            })
            .collect()
    }

    /// The cumulative figures of an entry, or of the aggregated requests
    /// for None (a copy: the SLA monitor diffs them second by second).
    pub fn figures_of(&self, entry: Option<&str>) -> Option<Entry> {
        match entry {
            None => Some(self.total()),
            Some(n) => self.entries.get(n).cloned(),
        }
    }

    /// Appends a per-second history row (no health sample: a master's,
    /// whose users run elsewhere; dropped arrivals still mark the second).
    pub fn history_tick(&mut self, user_count: u64) {
        self.history_tick_with(user_count, Health::default());
    }

    /// Appends a per-second history row with the load generator's health
    /// over that second.
    pub fn history_tick_with(&mut self, user_count: u64, health: Health) {
        let now = unix_now();
        let total_dropped: u64 = self.dropped.values().sum();
        // A reset of the figures starts the count again: never negative.
        let dropped =
            total_dropped.saturating_sub(self.history.last().map_or(0, |r| r.total_dropped));
        let snap = self.summary_of("Aggregated", &self.total(), now);
        let row = HistoryRow {
            timestamp: now,
            user_count,
            current_rps: snap.current_rps,
            current_fail_per_sec: snap.current_fail_per_sec,
            percentiles_ms: self.current_percentiles(now),
            total_requests: snap.num_requests,
            total_failures: snap.num_failures,
            total_throttled: snap.num_throttled,
            total_median_ms: snap.median_ms,
            total_avg_ms: snap.avg_ms,
            total_min_ms: snap.min_ms,
            total_max_ms: snap.max_ms,
            total_avg_content_size: snap.avg_content_size,
            total_dropped,
            saturated: health.saturated,
            dropped,
            runtime_lag_ms: health.runtime_lag_ms,
            generator_limited: health.saturated
                || dropped > 0
                || health.runtime_lag_ms > LAG_LIMIT_MS,
        };
        self.history.push(row);
        // A day of seconds at most: older rows are thinned, never the newest.
        if self.history.len() > 86_400 {
            let keep: Vec<HistoryRow> = self
                .history
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(_, r)| r.clone())
                .collect();
            self.history = keep;
        }
    }

    fn summary_of(&self, name: &str, e: &Entry, now: f64) -> EntrySummary {
        let n = e.num_requests;
        let (cur_rps, cur_fail) = e.current(now, self.started);
        let end = if n > 0 {
            e.last_request.max(now.min(e.last_request + 1.0))
        } else {
            now
        };
        let elapsed = (end - self.started).max(1e-3);
        let pct = |q: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            if q >= 1.0 {
                return us_to_ms(e.max_us);
            }
            us_to_ms(e.hist.value_at_quantile(q).clamp(e.min_us, e.max_us))
        };
        EntrySummary {
            kind: name.split(':').next().unwrap_or("").to_string(),
            name: name.to_string(),
            num_requests: n,
            num_failures: e.num_failures,
            num_throttled: e.num_throttled,
            median_ms: pct(0.5),
            avg_ms: if n > 0 {
                e.total_us as f64 / n as f64 / 1000.0
            } else {
                0.0
            },
            min_ms: if n > 0 { us_to_ms(e.min_us) } else { 0.0 },
            max_ms: us_to_ms(e.max_us),
            avg_content_size: if n > 0 {
                (e.bytes_sent + e.bytes_received) as f64 / n as f64
            } else {
                0.0
            },
            bytes_sent: e.bytes_sent,
            bytes_received: e.bytes_received,
            throughput_bps: if e.total_us > 0 {
                (e.bytes_sent + e.bytes_received) as f64 * 1e6 / e.total_us as f64
            } else {
                0.0
            },
            rps: n as f64 / elapsed,
            fail_per_sec: e.num_failures as f64 / elapsed,
            current_rps: cur_rps,
            current_fail_per_sec: cur_fail,
            percentiles_ms: PERCENTILES.iter().map(|&q| pct(q)).collect(),
        }
    }

    /// A serialisable view of everything, for reports and the API.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(unix_now())
    }

    /// The view at unix time `now` (rates count up to it).
    pub fn snapshot_at(&self, now: f64) -> Snapshot {
        let entries = self
            .entries
            .iter()
            .map(|(k, e)| self.summary_of(k, e, now))
            .collect();
        let mut total = self.summary_of("Aggregated", &self.total(), now);
        total.kind = String::new();
        let mut errors: Vec<ErrorStat> = self.errors.values().cloned().collect();
        errors.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
        Snapshot {
            started: self.started,
            now,
            entries,
            total,
            current_percentiles_ms: self.current_percentiles(now),
            errors,
            capped: self.capped.clone(),
            user_panics: self.user_panics,
            dropped: self.dropped.clone(),
        }
    }
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One entry's figures, as reports show them (times in ms).
#[derive(Debug, Clone, Serialize)]
pub struct EntrySummary {
    /// The service (`ec2`, `s3`), empty for the aggregate.
    pub kind: String,
    pub name: String,
    pub num_requests: u64,
    pub num_failures: u64,
    pub num_throttled: u64,
    pub median_ms: f64,
    pub avg_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub avg_content_size: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Bytes moved per second of request time (sent + received), e.g. a GetObject's throughput.
    pub throughput_bps: f64,
    pub rps: f64,
    pub fail_per_sec: f64,
    pub current_rps: f64,
    pub current_fail_per_sec: f64,
    /// Labels as [`PERCENTILE_LABELS`].
    pub percentiles_ms: Vec<f64>,
}

/// The value for quantile `q` in a list laid out as [`PERCENTILES`].
pub fn percentile_of(values: &[f64], q: f64) -> Option<f64> {
    PERCENTILES
        .iter()
        .position(|&p| (p - q).abs() < 1e-9)
        .and_then(|i| values.get(i).copied())
}

impl EntrySummary {
    pub fn percentile(&self, q: f64) -> Option<f64> {
        percentile_of(&self.percentiles_ms, q)
    }
    pub fn failure_ratio(&self) -> f64 {
        if self.num_requests == 0 {
            0.0
        } else {
            self.num_failures as f64 / self.num_requests as f64
        }
    }
}

/// A point-in-time view of a run's statistics.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub started: f64,
    pub now: f64,
    pub entries: Vec<EntrySummary>,
    pub total: EntrySummary,
    pub current_percentiles_ms: Vec<f64>,
    pub errors: Vec<ErrorStat>,
    pub capped: BTreeMap<String, u64>,
    /// Users whose task panicked.
    pub user_panics: u64,
    /// Arrivals dropped per open class.
    pub dropped: BTreeMap<String, u64>,
}

impl Snapshot {
    /// The arrivals of each open class seen so far: (class, task starts,
    /// dropped, its `arrival:<class>` entry if a task started), by class name.
    pub fn arrivals(&self) -> Vec<(String, u64, u64, Option<&EntrySummary>)> {
        let mut classes: std::collections::BTreeSet<&str> =
            self.dropped.keys().map(String::as_str).collect();
        for e in &self.entries {
            if let Some(c) = e.name.strip_prefix(crate::ops::ARRIVAL_PREFIX) {
                classes.insert(c);
            }
        }
        classes
            .into_iter()
            .map(|c| {
                let e = self
                    .entries
                    .iter()
                    .find(|e| e.name.strip_prefix(crate::ops::ARRIVAL_PREFIX) == Some(c));
                let started = e.map_or(0, |e| e.num_requests);
                let dropped = self.dropped.get(c).copied().unwrap_or(0);
                (c.to_string(), started, dropped, e)
            })
            .collect()
    }
}

/// The shared recorder of one engine.
#[derive(Clone, Default)]
pub struct Stats {
    inner: Arc<Mutex<StatsData>>,
}

impl Stats {
    pub fn new() -> Self {
        Self::default()
    }
    /// Records one measurement; answers what the entry measures.
    pub fn record(
        &self,
        name: &str,
        took: Duration,
        bytes: Bytes,
        fail: Option<&Failure>,
    ) -> EntryKind {
        self.lock().record(name, took, bytes, fail)
    }
    pub fn lock(&self) -> MutexGuard<'_, StatsData> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot()
    }
    /// Takes the figures recorded since the last take, leaving empty ones
    /// that start now: the delta a worker reports to its master.
    pub fn take(&self) -> StatsData {
        std::mem::take(&mut *self.lock())
    }

    /// Clears all figures (Locust's "reset stats"); history is kept.
    pub fn reset(&self) {
        let mut g = self.lock();
        let history = std::mem::take(&mut g.history);
        *g = StatsData {
            history,
            ..StatsData::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_workers_contradictory_figures_are_brought_into_line() {
        let mut data = StatsData::default();
        let good = Delta {
            requests: 4,
            failures: 1,
            total_us: 4_000,
            min_us: 500,
            max_us: 2_000,
            first: 10.0,
            last: 11.0,
            values: vec![(500, 1), (1_000, 2), (2_000, 1)],
            ..Default::default()
        };
        data.add_delta("s3:PutObject", &good);
        // Lies: more failures than requests, a min above the max, a total
        // no min or max allows.
        let bad = Delta {
            requests: 2,
            failures: 9,
            throttled: 7,
            total_us: u64::MAX,
            min_us: 900_000,
            max_us: 3,
            first: 11.0,
            last: 12.0,
            values: vec![(700, 1), (1_500, 1)],
            ..Default::default()
        };
        data.add_delta("s3:PutObject", &bad);
        let e = &data.entries["s3:PutObject"];
        assert_eq!((e.num_requests, e.num_failures, e.num_throttled), (6, 3, 2));
        // The values' own range stands in for the lying min and max.
        assert_eq!((e.min_us, e.max_us), (500, 2_000));
        // 4,000 + at most 2 × 1,500.
        assert_eq!(e.total_us, 7_000);
        assert_eq!(e.hist.len(), 6);
        // A max beyond any response time, a min beyond that: no panic, capped.
        let huge = Delta {
            requests: 1,
            total_us: 5,
            min_us: u64::MAX - 1,
            max_us: u64::MAX,
            values: vec![(1_000, 1)],
            ..Default::default()
        };
        data.add_delta("s3:PutObject", &huge);
        let e = &data.entries["s3:PutObject"];
        assert_eq!(e.max_us, MAX_US);
        assert_eq!(e.total_us, 7_000 + MAX_US);
    }

    #[test]
    fn percentiles_are_exact_to_three_digits_and_ordered() {
        let mut s = StatsData::default();
        for i in 1..=1000u64 {
            s.record(
                "s3:PutObject",
                ms(i),
                Bytes {
                    sent: 10,
                    received: 0,
                },
                None,
            );
        }
        let snap = s.snapshot();
        let e = &snap.entries[0];
        assert_eq!(e.num_requests, 1000);
        assert!((e.median_ms - 500.0).abs() <= 0.5, "{}", e.median_ms);
        assert!((e.percentile(0.95).unwrap() - 950.0).abs() <= 1.0);
        assert!((e.percentile(0.99).unwrap() - 990.0).abs() <= 1.0);
        assert_eq!(e.max_ms, 1000.0);
        assert_eq!(e.min_ms, 1.0);
        assert!((e.avg_ms - 500.5).abs() < 1e-9);
        assert_eq!(e.bytes_sent, 10_000);
        // 10 kB moved in 500.5 s of request time.
        assert!(
            (e.throughput_bps - 10_000.0 / 500.5).abs() < 1e-6,
            "{}",
            e.throughput_bps
        );
        let p = &e.percentiles_ms;
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
        assert_eq!(*p.last().unwrap(), 1000.0);
    }

    #[test]
    fn errors_group_by_entry_and_code_and_throttles_count_apart() {
        let mut s = StatsData::default();
        let slow = Failure::new("SlowDown", "Please reduce your request rate.");
        let limit = Failure::new("InstanceLimitExceeded", "too many");
        s.record("s3:PutObject", ms(5), Bytes::default(), Some(&slow));
        s.record("s3:PutObject", ms(5), Bytes::default(), Some(&slow));
        s.record("ec2:RunInstances", ms(5), Bytes::default(), Some(&limit));
        s.record("ec2:RunInstances", ms(5), Bytes::default(), None);
        let snap = s.snapshot();
        assert_eq!(snap.errors.len(), 2);
        assert_eq!(snap.errors[0].code, "SlowDown");
        assert_eq!(snap.errors[0].count, 2);
        assert!(snap.errors[0].throttled);
        assert_eq!(snap.total.num_requests, 4);
        assert_eq!(snap.total.num_failures, 3);
        assert_eq!(snap.total.num_throttled, 2);
        assert!(Failure::new("HTTP 503", "").throttled);
        // Waits are shown but are not requests: they stay out of the aggregate.
        s.record("ec2:instance-running", ms(90_000), Bytes::default(), None);
        let snap = s.snapshot();
        assert_eq!(snap.total.num_requests, 4);
        assert_eq!(snap.entries.len(), 3);
        assert!(!Failure::new("AccessDenied", "").throttled);
    }

    #[test]
    fn panics_are_errors_grouped_like_others_but_not_requests() {
        let mut s = StatsData::default();
        s.record("s3:PutObject", ms(5), Bytes::default(), None);
        let p = Failure::new("panic", "index out of bounds");
        s.record_panic("s3:PutObject", &p);
        s.record_panic("s3:PutObject", &Failure::new("panic", "another message"));
        s.record_panic("user:storage", &p);
        let snap = s.snapshot();
        assert_eq!(snap.user_panics, 3);
        assert_eq!(snap.total.num_requests, 1);
        assert_eq!(snap.total.num_failures, 0);
        assert_eq!(snap.errors.len(), 2);
        assert_eq!(
            (
                snap.errors[0].name.as_str(),
                snap.errors[0].code.as_str(),
                snap.errors[0].count
            ),
            ("s3:PutObject", "panic", 2)
        );
        assert_eq!(snap.errors[0].message, "index out of bounds");
        assert!(!snap.errors[0].throttled);
        let mut other = StatsData::default();
        other.record_panic("s3:PutObject", &p);
        other.merge(&s);
        assert_eq!(other.user_panics, 4);
        assert_eq!(other.snapshot().errors[0].count, 3);
    }

    #[test]
    fn merge_equals_recording_in_one_place() {
        let (mut a, mut b, mut both) = (
            StatsData::default(),
            StatsData::default(),
            StatsData::default(),
        );
        let f = Failure::new("timeout", "read timed out");
        for i in 0..500u64 {
            let (t, fail) = (ms(i % 37 + 1), (i % 50 == 0).then_some(&f));
            if i % 3 == 0 { &mut a } else { &mut b }.record(
                "ec2:DescribeInstances",
                t,
                Bytes::default(),
                fail,
            );
            both.record("ec2:DescribeInstances", t, Bytes::default(), fail);
        }
        a.merge(&b);
        let (m, w) = (a.snapshot(), both.snapshot());
        assert_eq!(m.total.num_requests, w.total.num_requests);
        assert_eq!(m.total.num_failures, w.total.num_failures);
        assert_eq!(m.total.percentiles_ms, w.total.percentiles_ms);
        assert_eq!(m.errors[0].count, 10);
    }

    #[test]
    fn current_rps_uses_complete_seconds_of_the_window() {
        let mut s = StatsData {
            started: 1000.0,
            ..StatsData::default()
        };
        for sec in 1000..1020u64 {
            for _ in 0..5 {
                s.record_at(sec as f64 + 0.5, "x", ms(1), Bytes::default(), None);
            }
        }
        let e = &s.entries["x"];
        let (rps, fails) = e.current(1020.2, 1000.0);
        assert!((rps - 5.0).abs() < 1e-9, "{rps}");
        assert_eq!(fails, 0.0);
        // Early in a run the window is as long as the run so far.
        let mut early = StatsData {
            started: 1000.0,
            ..StatsData::default()
        };
        for sec in 1000..1003u64 {
            for _ in 0..5 {
                early.record_at(sec as f64 + 0.5, "x", ms(1), Bytes::default(), None);
            }
        }
        let (rps, _) = early.entries["x"].current(1003.0, 1000.0);
        assert!((rps - 5.0).abs() < 1e-9, "{rps}");
    }

    #[test]
    fn dropped_arrivals_count_per_class_merge_and_stay_out_of_requests() {
        let (mut a, mut b) = (StatsData::default(), StatsData::default());
        a.count_dropped("web", 3);
        a.count_dropped("batch", 0);
        b.count_dropped("web", 4);
        b.count_dropped("api", 2);
        // A task start's lateness: a timing row, not a request.
        b.record("arrival:web", ms(7), Bytes::default(), None);
        b.record("s3:PutObject", ms(3), Bytes::default(), None);
        a.merge(&b);
        let want: BTreeMap<String, u64> = [("api", 2), ("batch", 0), ("web", 7)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(a.dropped, want);
        assert_eq!(a.entries["arrival:web"].kind, EntryKind::Timing);
        let snap = a.snapshot();
        assert_eq!(snap.total.num_requests, 1, "lateness is not a request");
        let arr = snap.arrivals();
        let brief: Vec<(&str, u64, u64)> = arr
            .iter()
            .map(|(c, s, d, _)| (c.as_str(), *s, *d))
            .collect();
        assert_eq!(brief, [("api", 0, 2), ("batch", 0, 0), ("web", 1, 7)]);
        // A class with no start yet has its (empty) row all the same.
        assert!(arr[0].3.is_some_and(|e| e.num_requests == 0));
        a.history_tick(1);
        assert_eq!(a.history[0].total_dropped, 9);
    }

    #[test]
    fn history_rows_mark_the_seconds_the_generator_limited() {
        let mut s = StatsData::default();
        s.record("s3:PutObject", ms(3), Bytes::default(), None);
        s.history_tick_with(2, Health::default());
        s.count_dropped("web", 4);
        s.history_tick_with(2, Health::default());
        s.history_tick_with(
            2,
            Health {
                saturated: true,
                runtime_lag_ms: 3.0,
            },
        );
        s.history_tick_with(
            2,
            Health {
                saturated: false,
                runtime_lag_ms: 120.0,
            },
        );
        s.history_tick_with(
            2,
            Health {
                saturated: false,
                runtime_lag_ms: LAG_LIMIT_MS,
            },
        );
        let rows: Vec<(bool, u64, Vec<String>)> = s
            .history
            .iter()
            .map(|r| (r.generator_limited, r.dropped, r.limited_by()))
            .collect();
        assert_eq!(
            rows,
            [
                (false, 0, vec![]),
                (true, 4, vec!["4 arrivals dropped".to_string()]),
                (true, 0, vec!["in-flight slots full".to_string()]),
                (true, 0, vec!["runtime lag 120 ms".to_string()]),
                (false, 0, vec![]),
            ]
        );
        // A reset of the figures does not make the next second negative.
        s.dropped.clear();
        s.history_tick(1);
        assert_eq!(s.history.last().unwrap().dropped, 0);
        assert_eq!(s.history.last().unwrap().total_dropped, 0);
    }

    #[test]
    fn history_rows_carry_users_and_totals() {
        let mut s = StatsData::default();
        s.record("s3:PutObject", ms(3), Bytes::default(), None);
        s.history_tick(7);
        let r = &s.history[0];
        assert_eq!(r.user_count, 7);
        assert_eq!(r.total_requests, 1);
        assert_eq!(r.percentiles_ms.len(), PERCENTILES.len());
    }
}
