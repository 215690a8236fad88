//! SLA expressions such as `p95(ec2:RunInstances)<2s`, `failure_rate<1%`,
//! `rps>=100`, or over a window of the last minutes, `p95[5m](ec2:RunInstances)<2s`.
//! Grammar: `METRIC[[WINDOW]][(ENTRY)] OP VALUE` with OP one of `< <= > >=`.
//! Metrics: `p50 p66 p75 p80 p90 p95 p98 p99 p99.9 p99.99 median avg min max`
//! (times: `250ms`, `2s`, a bare number is ms), `failure_rate`,
//! `throttle_rate` (`1%` or `0.01`), `rps`, `requests`, `failures`, `throttled`.
//! Without `(ENTRY)` a metric applies to the aggregate of all requests.
//!
//! A [`Monitor`] judges a run's SLAs once a second while it goes:
//! - a plain SLA over the whole run so far, a windowed one over its last
//!   WINDOW (exact: the window's own HDR histogram, built from per-second
//!   deltas of the run's histograms; windows up to 5 minutes move by the
//!   second, longer ones by window/300, so a window holds at most 300 slots);
//! - "no data" is never a breach: an SLA on an entry with no requests yet
//!   (or none in its window) waits;
//! - a lower bound on a count or a throughput (`rps>=100`, `requests>10`)
//!   cannot be judged while a run starts from zero: without a window it is
//!   judged at the end only, with one once the run has lasted the window;
//! - each SLA keeps whether it holds now, when it first broke, since when
//!   it is broken, for how many seconds it was, and its last actual value.
//!
//! At the end a plain SLA is checked over the whole run ([`Sla::check`]);
//! a windowed one holds if no window ever broke it (the last judged at the
//! end, however short the run). Either says when it first broke.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::metrics::sink;
use crate::ops::Op;
use crate::profile::{MAX_SLA_LEN, MAX_SLAS, Profile};
use crate::stats::{Entry, EntrySummary, PERCENTILES, Snapshot, Stats, StatsData, new_hist};

/// Longest window (a day).
pub const MAX_WINDOW_SECS: u64 = 86_400;
/// Most slots a window keeps: longer windows use longer slots.
pub const MAX_SLOTS: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    Percentile(f64),
    Avg,
    Min,
    FailureRate,
    ThrottleRate,
    Rps,
    Requests,
    Failures,
    Throttled,
}

impl Metric {
    /// Counts and throughput: zero before any request, and growing.
    fn is_volume(self) -> bool {
        matches!(
            self,
            Metric::Rps | Metric::Requests | Metric::Failures | Metric::Throttled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed SLA.
#[derive(Debug, Clone, PartialEq)]
pub struct Sla {
    text: String,
    /// The text without blanks: two SLAs that differ only in spacing are one.
    canon: String,
    metric: Metric,
    /// Seconds of the window, or None for the whole run.
    window: Option<u64>,
    entry: Option<String>,
    cmp: Cmp,
    /// In ms for times, a fraction for rates.
    value: f64,
}

impl fmt::Display for Sla {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The end-of-run outcome of one SLA (read back from a kept report too).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    #[serde(rename = "expression")]
    pub sla: String,
    #[serde(rename = "ok")]
    pub held: bool,
    pub actual: String,
    /// The window in seconds; None: the whole run.
    pub window_s: Option<u64>,
    /// Unix time of the first evaluation that found it broken.
    pub first_breach_at: Option<f64>,
    /// Seconds (evaluations, one a second) it was found broken.
    pub breached_seconds: u64,
}

/// What one evaluation found.
enum Measure {
    /// The actual value and how it is shown.
    Value(f64, String),
    /// Nothing to judge yet (why); a value shown if there is one.
    Waiting(String, Option<String>),
}

/// Where an SLA stands while the run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaState {
    /// Not judged yet: no data, or a lower bound waiting for its window.
    Waiting,
    Holding,
    Breached,
}

/// One SLA as the monitor last judged it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlaStatus {
    pub sla: String,
    pub window_s: Option<u64>,
    pub state: SlaState,
    /// Holds now (None: not judged yet).
    pub ok: Option<bool>,
    /// The last actual value, as shown.
    pub actual: Option<String>,
    /// Why it waits.
    pub note: Option<String>,
    /// Unix time of the first evaluation that found it broken.
    pub first_breach_at: Option<f64>,
    /// Unix time since when it is broken (None while it is not).
    pub breached_since: Option<f64>,
    /// Seconds (evaluations, one a second) it was found broken.
    pub breached_seconds: u64,
}

impl SlaStatus {
    /// `SLA `p95(...)<2s` broke: actual 2300.0ms`.
    pub fn describe(&self) -> String {
        format!(
            "SLA `{}` broke: actual {}",
            self.sla,
            self.actual.as_deref().unwrap_or("?")
        )
    }
}

impl Sla {
    /// Parses one expression; the error says what is wrong. Long: the
    /// whole grammar, read left to right (comparison, entry, window,
    /// metric, value), each mistake with its own message.
    pub fn parse(s: &str) -> Result<Sla, String> {
        let text: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let bad = |why: &str| format!("SLA `{}`: {why}", s.trim());
        if s.trim().len() > MAX_SLA_LEN {
            return Err(format!(
                "an SLA is {} characters long; at most {MAX_SLA_LEN}",
                s.trim().len()
            ));
        }
        let op_at = text
            .find(['<', '>'])
            .ok_or_else(|| bad("needs a comparison: <, <=, > or >="))?;
        let (lhs, rest) = text.split_at(op_at);
        let (cmp, rhs) = if let Some(r) = rest.strip_prefix("<=") {
            (Cmp::Le, r)
        } else if let Some(r) = rest.strip_prefix(">=") {
            (Cmp::Ge, r)
        } else if let Some(r) = rest.strip_prefix('<') {
            (Cmp::Lt, r)
        } else {
            (Cmp::Gt, &rest[1..])
        };
        if lhs.ends_with(']') && lhs.find('(').is_some_and(|p| lhs.find('[') > Some(p)) {
            return Err(bad(
                "the window goes before the entry, as in p95[5m](ec2:RunInstances)<2s",
            ));
        }
        let (mname, entry) = match lhs.find('(') {
            Some(i) => {
                let e = lhs[i + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| bad("missing `)` after the entry name"))?;
                if e.is_empty() {
                    return Err(bad("empty entry name in ()"));
                }
                (&lhs[..i], Some(e.to_string()))
            }
            None => (lhs, None),
        };
        let (mname, window) = match mname.find('[') {
            Some(i) => {
                let w = mname[i + 1..]
                    .strip_suffix(']')
                    .ok_or_else(|| bad("missing `]` after the window (e.g. p95[5m])"))?;
                (&mname[..i], Some(window_secs(w).map_err(|e| bad(&e))?))
            }
            None => (mname, None),
        };
        let metric = match mname {
            "median" => Metric::Percentile(0.5),
            "max" => Metric::Percentile(1.0),
            "avg" => Metric::Avg,
            "min" => Metric::Min,
            "failure_rate" => Metric::FailureRate,
            "throttle_rate" => Metric::ThrottleRate,
            "rps" => Metric::Rps,
            "requests" => Metric::Requests,
            "failures" => Metric::Failures,
            "throttled" => Metric::Throttled,
            p if p.starts_with('p') => {
                let q: f64 = p[1..]
                    .parse::<f64>()
                    .map_err(|_| bad(&format!("unknown metric `{p}`")))?
                    / 100.0;
                if !PERCENTILES.iter().any(|x| (x - q).abs() < 1e-9) {
                    return Err(bad(
                        "percentiles available: p50 p66 p75 p80 p90 p95 p98 p99 p99.9 p99.99",
                    ));
                }
                Metric::Percentile(q)
            }
            other => {
                return Err(bad(&format!(
                    "unknown metric `{other}` (use pNN, median, avg, min, max, failure_rate, throttle_rate, rps, requests, failures, throttled)"
                )));
            }
        };
        let value = match metric {
            Metric::Percentile(_) | Metric::Avg | Metric::Min => {
                parse_ms(rhs).map_err(|e| bad(&e))?
            }
            Metric::FailureRate | Metric::ThrottleRate => {
                let v = match rhs.strip_suffix('%') {
                    Some(p) => p.parse::<f64>().map(|v| v / 100.0),
                    None => rhs.parse::<f64>(),
                }
                .map_err(|_| bad(&format!("`{rhs}` is not a rate (try 1% or 0.01)")))?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(bad("a rate is between 0% and 100%"));
                }
                v
            }
            _ => rhs
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(&format!("`{rhs}` is not a number")))?,
        };
        Ok(Sla {
            text: s.trim().to_string(),
            canon: text,
            metric,
            window,
            entry,
            cmp,
            value,
        })
    }

    /// Parses one expression and checks that its entry is in the op
    /// catalogue (a typo would otherwise wait for data forever).
    pub fn parse_known(s: &str) -> Result<Sla, String> {
        let sla = Sla::parse(s)?;
        if let Some(e) = sla.entry()
            && !crate::ops::is_known_entry(e)
        {
            let known: Vec<&str> = Op::all().iter().map(|o| o.name()).collect();
            return Err(format!(
                "SLA `{sla}` names `{e}`, which is not an op (known ops: {})",
                known.join(", ")
            ));
        }
        Ok(sla)
    }

    /// The entry the SLA names, if any.
    pub fn entry(&self) -> Option<&str> {
        self.entry.as_deref()
    }

    /// The window in seconds, if any.
    pub fn window(&self) -> Option<u64> {
        self.window
    }

    fn holds(&self, actual: f64) -> bool {
        match self.cmp {
            Cmp::Lt => actual < self.value,
            Cmp::Le => actual <= self.value,
            Cmp::Gt => actual > self.value,
            Cmp::Ge => actual >= self.value,
        }
    }

    /// A lower bound on a count or throughput: it cannot hold early in a run.
    fn lower_bound_on_volume(&self) -> bool {
        self.metric.is_volume() && matches!(self.cmp, Cmp::Gt | Cmp::Ge)
    }

    fn show(&self, v: f64) -> String {
        match self.metric {
            Metric::Percentile(_) | Metric::Avg | Metric::Min => format!("{v:.1}ms"),
            Metric::FailureRate | Metric::ThrottleRate => format!("{:.3}%", v * 100.0),
            Metric::Rps => format!("{v:.2}"),
            _ => format!("{v:.0}"),
        }
    }

    /// The value over the whole run of an entry's summary.
    fn value_of(&self, e: &EntrySummary) -> f64 {
        match self.metric {
            Metric::Percentile(q) => e.percentile(q).unwrap_or(0.0),
            Metric::Avg => e.avg_ms,
            Metric::Min => e.min_ms,
            Metric::FailureRate => e.failure_ratio(),
            Metric::ThrottleRate => ratio(e.num_throttled, e.num_requests),
            Metric::Rps => e.rps,
            Metric::Requests => e.num_requests as f64,
            Metric::Failures => e.num_failures as f64,
            Metric::Throttled => e.num_throttled as f64,
        }
    }

    /// Checks the SLA against final statistics (the end-of-run verdict of a
    /// plain SLA; no "first broke" information: see [`Monitor::verdicts`]).
    pub fn check(&self, s: &Snapshot) -> Verdict {
        let verdict = |held: bool, actual: String| Verdict {
            sla: self.text.clone(),
            held,
            actual,
            window_s: self.window,
            first_breach_at: None,
            breached_seconds: 0,
        };
        let e: Option<&EntrySummary> = match &self.entry {
            None => Some(&s.total),
            Some(n) => s.entries.iter().find(|e| &e.name == n),
        };
        let Some(e) = e else {
            return verdict(false, "no requests recorded for that entry".into());
        };
        let v = self.value_of(e);
        verdict(self.holds(v), self.show(v))
    }

    /// The whole run so far, while it goes (`last`: the final evaluation).
    fn measure_run(&self, s: &Snapshot, last: bool) -> Measure {
        let e = match &self.entry {
            None => Some(&s.total),
            Some(n) => s.entries.iter().find(|e| &e.name == n),
        };
        let empty = e.is_none_or(|e| e.num_requests == 0);
        if empty && !self.metric.is_volume() {
            return Measure::Waiting("no requests yet".into(), None);
        }
        let v = e.map_or(0.0, |e| self.value_of(e));
        if self.lower_bound_on_volume() && !last && !self.holds(v) {
            return Measure::Waiting(
                "judged at the end: a run's counts start at zero (a window, e.g. rps[1m], judges it while the run goes)".into(),
                Some(self.show(v)),
            );
        }
        Measure::Value(v, self.show(v))
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// A window's length in whole seconds, from 1 s to a day.
fn window_secs(w: &str) -> Result<u64, String> {
    if w.is_empty() {
        return Err("empty window [] (e.g. p95[5m])".into());
    }
    let d = crate::units::parse_duration(w).map_err(|e| format!("window {e}"))?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return Err(format!(
            "window `{w}` is not a whole number of seconds of at least 1s"
        ));
    }
    if d.as_secs() > MAX_WINDOW_SECS {
        return Err(format!("window `{w}` is longer than a day"));
    }
    Ok(d.as_secs())
}

fn parse_ms(s: &str) -> Result<f64, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v * mult)
        .ok_or_else(|| format!("`{s}` is not a time (try 250ms, 2s, 1m)"))
}

/// Parses a list of expressions (flags, a form's lines), each once, at
/// most [`MAX_SLAS`]; the error names the expression and what is wrong.
pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<Sla>, String> {
    let mut out = Vec::new();
    for s in items {
        push_once(&mut out, Sla::parse_known(s)?)?;
    }
    Ok(out)
}

fn push_once(out: &mut Vec<Sla>, sla: Sla) -> Result<(), String> {
    if out.iter().any(|o| o.canon == sla.canon) {
        return Ok(());
    }
    if out.len() >= MAX_SLAS {
        return Err(format!("more than {MAX_SLAS} SLAs"));
    }
    out.push(sla);
    Ok(())
}

/// The SLAs of a run: the profile's (`sla = [...]`, errors located in
/// `path`), then `extra` (`--sla`), each once.
pub fn for_run(profile: &Profile, path: &Path, extra: &[String]) -> Result<Vec<Sla>, String> {
    let mut out = Vec::new();
    for s in &profile.slas {
        let sla = Sla::parse_known(&s.text)
            .map_err(|e| format!("{}:{}:{}: {e}", path.display(), s.line, s.column))?;
        push_once(&mut out, sla)?;
    }
    for s in extra {
        push_once(&mut out, Sla::parse_known(s)?)?;
    }
    Ok(out)
}

/// One slot of a window: what the run's cumulative figures gained in it.
struct Slot {
    /// Unix second the slot starts at.
    start: u64,
    /// (histogram value, count) gained.
    values: Vec<(u64, u64)>,
    counts: Counts,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    failures: u64,
    throttled: u64,
    total_us: u64,
}

impl Counts {
    fn of(e: &Entry) -> Counts {
        Counts {
            requests: e.num_requests,
            failures: e.num_failures,
            throttled: e.num_throttled,
            total_us: e.total_us,
        }
    }
    fn add(&mut self, o: Counts) {
        self.requests += o.requests;
        self.failures += o.failures;
        self.throttled += o.throttled;
        self.total_us += o.total_us;
    }
    fn sub(&mut self, o: Counts) {
        self.requests = self.requests.saturating_sub(o.requests);
        self.failures = self.failures.saturating_sub(o.failures);
        self.throttled = self.throttled.saturating_sub(o.throttled);
        self.total_us = self.total_us.saturating_sub(o.total_us);
    }
    fn since(&self, base: Counts) -> Counts {
        let mut d = *self;
        d.sub(base);
        d
    }
}

/// The last WINDOW seconds of one entry (or the aggregate): slots of what
/// the run's figures gained, and their sum, kept up to date by adding the
/// newest slot and subtracting the ones that leave.
struct Window {
    entry: Option<String>,
    secs: u64,
    slot_secs: u64,
    /// The cumulative figures last seen (None: nothing yet).
    base: Option<Entry>,
    slots: VecDeque<Slot>,
    hist: Histogram<u64>,
    scratch: Histogram<u64>,
    counts: Counts,
}

impl Window {
    fn new(entry: Option<String>, secs: u64) -> Window {
        Window {
            entry,
            secs,
            slot_secs: secs.div_ceil(MAX_SLOTS).max(1),
            base: None,
            slots: VecDeque::new(),
            hist: new_hist(),
            scratch: new_hist(),
            counts: Counts::default(),
        }
    }

    /// Takes what the cumulative figures `cur` gained since the last look
    /// into the slot of `now`, and lets the slots older than the window go.
    fn observe(&mut self, now: f64, cur: Option<Entry>) {
        let now_s = now.max(0.0) as u64;
        let cur = cur.unwrap_or_default();
        // The figures were reset (the dashboard's "Reset stats"): start again.
        if self
            .base
            .as_ref()
            .is_some_and(|b| cur.num_requests < b.num_requests)
        {
            self.base = None;
            self.slots.clear();
            self.hist.reset();
            self.counts = Counts::default();
        }
        let mut values = Vec::new();
        for v in cur.hist.iter_recorded() {
            let at = v.value_iterated_to();
            let before = self.base.as_ref().map_or(0, |b| b.hist.count_at(at));
            if v.count_at_value() > before {
                values.push((at, v.count_at_value() - before));
            }
        }
        let gained = Counts::of(&cur).since(self.base.as_ref().map(Counts::of).unwrap_or_default());
        self.base = Some(cur);
        for &(v, n) in &values {
            self.hist.saturating_record_n(v, n);
        }
        self.counts.add(gained);
        let start = now_s - now_s % self.slot_secs;
        match self.slots.back_mut() {
            Some(s) if s.start == start => {
                s.values.extend(values);
                s.counts.add(gained);
            }
            _ => self.slots.push_back(Slot {
                start,
                values,
                counts: gained,
            }),
        }
        while self
            .slots
            .front()
            .is_some_and(|s| s.start + self.secs <= now_s)
        {
            let gone = self.slots.pop_front().expect("a front slot");
            self.scratch.reset();
            for &(v, n) in &gone.values {
                self.scratch.saturating_record_n(v, n);
            }
            if self.hist.subtract(&self.scratch).is_err() {
                self.rebuild();
            }
            self.counts.sub(gone.counts);
        }
    }

    /// Sums the slots again (a subtraction that did not fit: never expected).
    fn rebuild(&mut self) {
        self.hist.reset();
        for s in &self.slots {
            for &(v, n) in &s.values {
                self.hist.saturating_record_n(v, n);
            }
        }
    }

    /// The SLA's value over the window; `span` is the seconds the window
    /// covers so far (less than its length early in a run).
    fn measure(&self, sla: &Sla, span: f64, full: bool, last: bool) -> Measure {
        let c = &self.counts;
        let secs = humantime::format_duration(std::time::Duration::from_secs(self.secs));
        if c.requests == 0 && !sla.metric.is_volume() {
            return Measure::Waiting(format!("no requests in the last {secs}"), None);
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let v = match sla.metric {
            Metric::Percentile(q) if q >= 1.0 => ms(self.hist.max()),
            Metric::Percentile(q) => ms(self.hist.value_at_quantile(q)),
            Metric::Avg => c.total_us as f64 / c.requests as f64 / 1000.0,
            Metric::Min => ms(self.hist.min_nz()),
            Metric::FailureRate => ratio(c.failures, c.requests),
            Metric::ThrottleRate => ratio(c.throttled, c.requests),
            Metric::Rps => c.requests as f64 / span.max(1.0),
            Metric::Requests => c.requests as f64,
            Metric::Failures => c.failures as f64,
            Metric::Throttled => c.throttled as f64,
        };
        if sla.lower_bound_on_volume() && !full && !last && !sla.holds(v) {
            return Measure::Waiting(
                format!("judged once the run has lasted {secs}"),
                Some(sla.show(v)),
            );
        }
        Measure::Value(v, sla.show(v))
    }
}

struct Inner {
    windows: Vec<Window>,
    status: Vec<SlaStatus>,
}

/// Judges a run's SLAs once a second while it goes (see the module's notes).
pub struct Monitor {
    slas: Vec<Sla>,
    /// For each SLA, its window in `Inner::windows` (None: the whole run).
    window_of: Vec<Option<usize>>,
    /// Unix time the run started: a window covers no more than the run.
    started: f64,
    inner: Mutex<Inner>,
}

impl Monitor {
    /// A monitor of `slas` for a run that started at unix time `started`.
    pub fn new(slas: Vec<Sla>, started: f64) -> Monitor {
        let mut windows: Vec<Window> = Vec::new();
        let window_of = slas
            .iter()
            .map(|s| {
                let secs = s.window?;
                let at = windows
                    .iter()
                    .position(|w| w.secs == secs && w.entry == s.entry)
                    .unwrap_or_else(|| {
                        windows.push(Window::new(s.entry.clone(), secs));
                        windows.len() - 1
                    });
                Some(at)
            })
            .collect();
        let status = slas
            .iter()
            .map(|s| SlaStatus {
                sla: s.text.clone(),
                window_s: s.window,
                state: SlaState::Waiting,
                ok: None,
                actual: None,
                note: Some("not judged yet".into()),
                first_breach_at: None,
                breached_since: None,
                breached_seconds: 0,
            })
            .collect();
        Monitor {
            slas,
            window_of,
            started,
            inner: Mutex::new(Inner { windows, status }),
        }
    }

    pub fn slas(&self) -> &[Sla] {
        &self.slas
    }

    pub fn is_empty(&self) -> bool {
        self.slas.is_empty()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Judges every SLA on the run's figures now (`last`: the final
    /// evaluation, which judges lower bounds too). Answers the first SLA
    /// that broke at this evaluation and held (or waited) before.
    pub fn evaluate(&self, stats: &Stats, last: bool) -> Option<SlaStatus> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.evaluate_as_of(stats, now, last)
    }

    /// The final evaluation, as of unix time `load_ended` (when the users
    /// were stopped): a window (`rps[10s]`) judges the run's last seconds
    /// of load, not the stop timeout and clean-up that came after. Figures
    /// that arrived since (a worker's last report) count as of then.
    pub fn evaluate_final(&self, stats: &Stats, load_ended: f64) {
        self.evaluate_as_of(stats, load_ended, true);
    }

    /// Judges on the figures as of unix time `now` (the lock is held only
    /// while they are read).
    fn evaluate_as_of(&self, stats: &Stats, now: f64, last: bool) -> Option<SlaStatus> {
        if self.slas.is_empty() {
            return None;
        }
        let data = stats.lock();
        let (snap, figures) = self.observe(&data, now);
        drop(data);
        self.judge(now, &snap, figures, last)
    }

    /// [`Monitor::evaluate`] on figures at unix time `now` (tests, replays).
    pub fn evaluate_at(&self, data: &StatsData, now: f64, last: bool) -> Option<SlaStatus> {
        let (snap, figures) = self.observe(data, now);
        self.judge(now, &snap, figures, last)
    }

    /// What the judging needs from the figures: taken while they are locked.
    fn observe(&self, data: &StatsData, now: f64) -> (Snapshot, Vec<Option<Entry>>) {
        let entries: Vec<Option<String>> = {
            let g = self.inner();
            g.windows.iter().map(|w| w.entry.clone()).collect()
        };
        let figures = entries
            .iter()
            .map(|e| data.figures_of(e.as_deref()))
            .collect();
        (data.snapshot_at(now), figures)
    }

    fn judge(
        &self,
        now: f64,
        snap: &Snapshot,
        figures: Vec<Option<Entry>>,
        last: bool,
    ) -> Option<SlaStatus> {
        let mut g = self.inner();
        for (w, f) in g.windows.iter_mut().zip(figures) {
            w.observe(now, f);
        }
        let ran = (now - self.started).max(0.0);
        let mut broke = None;
        for (k, sla) in self.slas.iter().enumerate() {
            let m = match (self.window_of[k], sla.window) {
                (Some(w), Some(secs)) => {
                    let span = ran.min(secs as f64);
                    g.windows[w].measure(sla, span, ran >= secs as f64, last)
                }
                _ => sla.measure_run(snap, last),
            };
            let st = &mut g.status[k];
            match m {
                Measure::Value(v, shown) => {
                    st.actual = Some(shown);
                    st.note = None;
                    if sla.holds(v) {
                        st.state = SlaState::Holding;
                        st.ok = Some(true);
                        st.breached_since = None;
                    } else {
                        if st.state != SlaState::Breached && broke.is_none() {
                            broke = Some(k);
                        }
                        st.state = SlaState::Breached;
                        st.ok = Some(false);
                        st.first_breach_at.get_or_insert(now);
                        st.breached_since.get_or_insert(now);
                        st.breached_seconds += 1;
                    }
                }
                Measure::Waiting(why, shown) => {
                    st.state = SlaState::Waiting;
                    st.ok = None;
                    st.note = Some(why);
                    st.actual = shown;
                    st.breached_since = None;
                }
            }
            sink::sla_ok(&sla.text, st.state != SlaState::Breached);
        }
        broke.map(|k| g.status[k].clone())
    }

    /// Each SLA as last judged.
    pub fn statuses(&self) -> Vec<SlaStatus> {
        self.inner().status.clone()
    }

    /// The end-of-run verdicts (after a final [`Monitor::evaluate`]): a
    /// plain SLA checked over the whole run, a windowed one held if no
    /// evaluation ever found it broken; both say when it first broke.
    pub fn verdicts(&self, snap: &Snapshot) -> Vec<Verdict> {
        let g = self.inner();
        self.slas
            .iter()
            .zip(&g.status)
            .map(|(sla, st)| {
                let mut v = match sla.window {
                    None => sla.check(snap),
                    Some(_) => Verdict {
                        sla: sla.text.clone(),
                        held: st.ok == Some(true) && st.breached_seconds == 0,
                        actual: st
                            .actual
                            .clone()
                            .or_else(|| st.note.clone())
                            .unwrap_or_default(),
                        window_s: sla.window,
                        first_breach_at: None,
                        breached_seconds: 0,
                    },
                };
                v.first_breach_at = st.first_breach_at;
                v.breached_seconds = st.breached_seconds;
                v
            })
            .collect()
    }
}

/// A unix time as people read it (UTC, to the second).
pub fn clock(t: f64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0)),
    )
    .to_string()
}

impl Verdict {
    /// `held (actual 120.0ms)`, with when it broke during the run if it did.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} (actual {}",
            if self.held { "held" } else { "FAILED" },
            self.actual
        );
        if let Some(t) = self.first_breach_at {
            s.push_str(&format!(
                "; first broke at {}, broken {} s",
                clock(t),
                self.breached_seconds
            ));
        }
        s.push(')');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Failure;
    use crate::stats::{Bytes, StatsData};
    use std::time::Duration;

    fn snap() -> Snapshot {
        let mut s = StatsData::default();
        for i in 1..=100u64 {
            s.record(
                "ec2:RunInstances",
                Duration::from_millis(i * 10),
                Bytes::default(),
                None,
            );
        }
        let f = Failure::new("RequestLimitExceeded", "slow down");
        s.record(
            "ec2:RunInstances",
            Duration::from_millis(5),
            Bytes::default(),
            Some(&f),
        );
        s.snapshot()
    }

    #[test]
    fn parses_and_checks() {
        let s = snap();
        let held = |e: &str| Sla::parse(e).unwrap().check(&s).held;
        assert!(held("p95(ec2:RunInstances)<2s"));
        assert!(!held("p95(ec2:RunInstances) < 500ms"));
        assert!(held("p50 <= 600"));
        assert!(held("failure_rate<1%"));
        assert!(!held("failure_rate<0.5%"));
        assert!(held("throttled>=1"));
        assert!(held("requests>=101"));
        assert!(held("max(ec2:RunInstances)<=1s"));
        assert!(!held("rps>=1000000"));
        let v = Sla::parse("p99(s3:PutObject)<1s").unwrap().check(&s);
        assert!(!v.held && v.actual.contains("no requests"));
    }

    #[test]
    fn rejects_bad_expressions() {
        for bad in [
            "p95",
            "p42<1s",
            "latency<1s",
            "p95(<1s",
            "failure_rate<abc",
            "p95<fast",
            "rps>=-1",
            "p95()<1s",
        ] {
            assert!(Sla::parse(bad).is_err(), "{bad} should not parse");
        }
        assert!(Sla::parse("p42<1s").unwrap_err().contains("p99.9"));
    }

    #[test]
    fn windows_parse_and_mistakes_are_explained() {
        let s = Sla::parse("p95[5m](ec2:RunInstances) < 2s").unwrap();
        assert_eq!(
            (s.window(), s.entry(), s.to_string().as_str()),
            (
                Some(300),
                Some("ec2:RunInstances"),
                "p95[5m](ec2:RunInstances) < 2s"
            )
        );
        assert_eq!(
            Sla::parse("failure_rate[90s]<1%").unwrap().window(),
            Some(90)
        );
        assert_eq!(Sla::parse("rps[1h]>=5").unwrap().window(), Some(3600));
        for (bad, says) in [
            (
                "p95(ec2:RunInstances)[5m]<2s",
                "the window goes before the entry",
            ),
            ("p95[5m<2s", "missing `]`"),
            ("p95[]<2s", "empty window"),
            ("p95[soon]<2s", "is not a duration"),
            ("p95[1500ms]<2s", "whole number of seconds"),
            ("p95[0s]<2s", "whole number of seconds of at least 1s"),
            ("p95[2d]<2s", "longer than a day"),
        ] {
            let e = Sla::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.starts_with(&format!("SLA `{bad}`")), "{bad}: {e}");
        }
        let e = Sla::parse_known("p95[1m](ec2:RunInstance)<2s").unwrap_err();
        assert!(
            e.contains("names `ec2:RunInstance`, which is not an op"),
            "{e}"
        );
        let long = format!("p95({})<1s", "x".repeat(300));
        assert!(Sla::parse(&long).unwrap_err().contains("at most 200"));
    }

    #[test]
    fn the_profile_and_the_flags_combine_each_once_with_located_errors() {
        let text = "sla = [\"p95(s3:PutObject)<2s\", \"failure_rate < 1%\"]\n\
                    [[user]]\nname = \"a\"\n[[user.task]]\nop = \"s3:PutObject\"\n";
        let p = crate::profile::parse(Path::new("p.toml"), text).unwrap();
        let all = for_run(
            &p,
            Path::new("p.toml"),
            &["failure_rate<1%".into(), "rps[1m]>=2".into()],
        )
        .unwrap();
        let texts: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            texts,
            ["p95(s3:PutObject)<2s", "failure_rate < 1%", "rps[1m]>=2"]
        );
        let bad = crate::profile::parse(
            Path::new("p.toml"),
            &text.replace("failure_rate < 1%", "failure_rate < lots"),
        )
        .unwrap();
        let e = for_run(&bad, Path::new("p.toml"), &[]).unwrap_err();
        assert!(
            e.starts_with("p.toml:1:32: SLA `failure_rate < lots`: `lots` is not a rate"),
            "{e}"
        );
        let many: Vec<String> = (0..101).map(|i| format!("requests<{i}")).collect();
        let e = parse_list(many.iter().map(String::as_str)).unwrap_err();
        assert!(e.contains("more than 100 SLAs"), "{e}");
    }

    const T0: f64 = 1_700_000_000.0;

    /// Records `n` requests of `ms` each at second `sec` of the run.
    fn put(d: &mut StatsData, sec: u64, n: u64, ms: u64, failed: bool) {
        let f = Failure::new("InternalError", "boom");
        for _ in 0..n {
            d.record_at(
                T0 + sec as f64 + 0.5,
                "s3:PutObject",
                Duration::from_millis(ms),
                Bytes::default(),
                failed.then_some(&f),
            );
        }
    }

    fn data() -> StatsData {
        let mut d = StatsData::default();
        d.started = T0;
        d
    }

    #[test]
    fn a_window_is_exact_over_its_seconds_not_an_average_of_them() {
        // p95 over the last 10 s, evaluated each second of a 40 s run whose
        // latency changes: its value is the p95 of a histogram of exactly
        // the requests of those seconds.
        let sla = Sla::parse("p95[10s](s3:PutObject)<1s").unwrap();
        let m = Monitor::new(vec![sla], T0);
        let mut d = data();
        let lat = |sec: u64| {
            if (15..25).contains(&sec) {
                40 + sec * 7
            } else {
                5 + sec % 4
            }
        };
        let count = |sec: u64| 3 + sec % 5;
        for sec in 0..40u64 {
            put(&mut d, sec, count(sec), lat(sec), false);
            m.evaluate_at(&d, T0 + sec as f64 + 1.0, false);
            // The seconds the evaluation at sec+1 covers: sec-9 ..= sec.
            let mut h = new_hist();
            for s in sec.saturating_sub(9)..=sec {
                h.record_n(lat(s) * 1000, count(s)).unwrap();
            }
            let want = format!("{:.1}ms", h.value_at_quantile(0.95) as f64 / 1000.0);
            let st = &m.statuses()[0];
            assert_eq!(st.actual.as_deref(), Some(want.as_str()), "second {sec}");
            assert_eq!(st.state, SlaState::Holding);
        }
        // The whole-run p95 differs from the window's at the end.
        let whole = Sla::parse("p95(s3:PutObject)<1s")
            .unwrap()
            .check(&d.snapshot());
        assert_ne!(Some(whole.actual), m.statuses()[0].actual);
    }

    #[test]
    fn breaches_are_tracked_with_when_they_began_and_how_long_they_lasted() {
        let slas = parse_list([
            "p95[5s](s3:PutObject)<100ms",
            "failure_rate<10%",
            "p50(ec2:RunInstances)<1s",
        ])
        .unwrap();
        let m = Monitor::new(slas, T0);
        let mut d = data();
        let at = |s: u64| T0 + s as f64 + 1.0;
        // 0-4 s fast, 5-7 s slow (and failing), then fast again.
        let mut broke = vec![];
        for sec in 0..20u64 {
            let slow = (5..8).contains(&sec);
            put(&mut d, sec, 10, if slow { 300 } else { 20 }, slow);
            if let Some(b) = m.evaluate_at(&d, at(sec), false) {
                broke.push((sec, b.sla.clone()));
            }
        }
        // The window breaks at 5 s (10 of its 50 requests slow: above the
        // p95), and holds again once the slow seconds leave it, at 12 s.
        // The failure rate broke at 5 s too (10 of 60): the first SLA that
        // broke at an evaluation is the one answered.
        assert_eq!(broke, [(5, "p95[5s](s3:PutObject)<100ms".to_string())]);
        let st = m.statuses();
        assert_eq!(st[0].state, SlaState::Holding);
        assert_eq!(st[0].first_breach_at, Some(at(5)));
        assert_eq!(st[0].breached_since, None);
        assert_eq!(st[0].breached_seconds, 7, "5 s to 11 s");
        // 30 of 200 requests failed: 15%, broken since 5 s and still.
        assert_eq!(st[1].state, SlaState::Breached);
        assert_eq!(st[1].actual.as_deref(), Some("15.000%"));
        assert_eq!(st[1].breached_since, Some(at(5)));
        assert_eq!(st[1].breached_seconds, 15);
        // No data is not a breach.
        assert_eq!(st[2].state, SlaState::Waiting);
        assert_eq!(st[2].note.as_deref(), Some("no requests yet"));
        assert_eq!(st[2].first_breach_at, None);

        let v = m.verdicts(&d.snapshot_at(at(19)));
        assert!(!v[0].held, "a window that broke fails the run");
        assert_eq!(
            (v[0].first_breach_at, v[0].breached_seconds),
            (Some(at(5)), 7)
        );
        assert!(!v[1].held);
        assert!(!v[2].held, "no requests at the end fails, as it always did");
        assert_eq!(v[2].actual, "no requests recorded for that entry");
        assert!(
            v[0].describe().starts_with(
                "FAILED (actual 20.0ms; first broke at 2023-11-14T22:13:26Z, broken 7 s"
            ),
            "{}",
            v[0].describe()
        );
    }

    #[test]
    fn lower_bounds_on_counts_wait_for_a_full_window_or_the_end() {
        let slas =
            parse_list(["rps>=7", "rps[10s]>=5", "requests[10s]>=100", "requests<45"]).unwrap();
        let m = Monitor::new(slas, T0);
        let mut d = data();
        let at = |s: u64| T0 + s as f64 + 1.0;
        let state =
            |m: &Monitor| -> Vec<SlaState> { m.statuses().iter().map(|s| s.state).collect() };
        use SlaState::*;
        // 2 requests a second: the lower bounds wait; the upper one holds.
        for sec in 0..5 {
            put(&mut d, sec, 2, 10, false);
            assert!(m.evaluate_at(&d, at(sec), false).is_none());
        }
        assert_eq!(state(&m), [Waiting, Waiting, Waiting, Holding]);
        assert!(
            m.statuses()[1]
                .note
                .as_ref()
                .unwrap()
                .contains("once the run has lasted 10s")
        );
        // Once the run has lasted the window, the windowed ones are judged.
        for sec in 5..10 {
            put(&mut d, sec, 2, 10, false);
            m.evaluate_at(&d, at(sec), false);
        }
        assert_eq!(state(&m), [Waiting, Breached, Breached, Holding]);
        assert_eq!(m.statuses()[1].actual.as_deref(), Some("2.00"));
        // 30 a second: rps[10s] holds again; 45 requests broke `requests<45`
        // (a count only grows: once broken, broken).
        for sec in 10..12 {
            put(&mut d, sec, 30, 10, false);
            m.evaluate_at(&d, at(sec), false);
        }
        assert_eq!(state(&m), [Waiting, Holding, Breached, Breached]);
        assert_eq!(m.statuses()[0].actual.as_deref(), Some("6.67"));
        // At the end the whole-run lower bound is judged: 80 in 12 s.
        let broke = m.evaluate_at(&d, at(11), true).unwrap();
        assert_eq!(
            (broke.sla.as_str(), broke.first_breach_at),
            ("rps>=7", Some(at(11)))
        );
        assert_eq!(state(&m), [Breached, Holding, Breached, Breached]);
        assert!(!m.verdicts(&d.snapshot_at(at(11)))[0].held);
    }

    #[test]
    fn the_final_verdict_is_of_the_load_not_of_the_clean_up() {
        // 10 puts a second for 6 s, judged each second; then the users stop
        // and the clean-up takes 5 s more, with no puts.
        let slas = || parse_list(["rps[3s](s3:PutObject)>=5", "rps>=5"]).unwrap();
        let (final_at_end, late) = (Monitor::new(slas(), T0), Monitor::new(slas(), T0));
        let stats = Stats::new();
        stats.lock().started = T0;
        for sec in 0..6 {
            put(&mut stats.lock(), sec, 10, 10, false);
            for m in [&final_at_end, &late] {
                assert!(
                    m.evaluate_at(&stats.lock(), T0 + sec as f64 + 1.0, false)
                        .is_none()
                );
            }
        }
        // Judged as of the load's end: both hold.
        final_at_end.evaluate_final(&stats, T0 + 6.0);
        let ok: Vec<Option<bool>> = final_at_end.statuses().iter().map(|s| s.ok).collect();
        assert_eq!(ok, [Some(true), Some(true)]);
        // Judged once the clean-up is over, the window would see no load.
        late.evaluate_at(&stats.lock(), T0 + 11.0, true);
        let ok: Vec<Option<bool>> = late.statuses().iter().map(|s| s.ok).collect();
        assert_eq!(ok, [Some(false), Some(true)]);
    }

    #[test]
    fn a_reset_of_the_figures_starts_the_windows_again() {
        let m = Monitor::new(parse_list(["requests[1m]<100"]).unwrap(), T0);
        let mut d = data();
        put(&mut d, 0, 80, 10, false);
        m.evaluate_at(&d, T0 + 1.0, false);
        assert_eq!(m.statuses()[0].actual.as_deref(), Some("80"));
        let mut d = data();
        put(&mut d, 1, 30, 10, false);
        m.evaluate_at(&d, T0 + 2.0, false);
        assert_eq!(m.statuses()[0].actual.as_deref(), Some("30"));
        assert_eq!(m.statuses()[0].state, SlaState::Holding);
    }

    #[test]
    fn long_windows_keep_at_most_300_slots() {
        let m = Monitor::new(parse_list(["p99[1h]<1s"]).unwrap(), T0);
        let mut d = data();
        for sec in (0..7200u64).step_by(3) {
            put(&mut d, sec, 1, 1 + sec % 50, false);
            m.evaluate_at(&d, T0 + sec as f64 + 1.0, false);
        }
        let g = m.inner();
        assert_eq!(g.windows[0].slot_secs, 12);
        assert!(
            g.windows[0].slots.len() <= 300,
            "{}",
            g.windows[0].slots.len()
        );
        // An hour of one request every 3 s, to a slot.
        let n = g.windows[0].counts.requests;
        assert!((1196..=1200).contains(&n), "{n}");
        assert_eq!(g.windows[0].hist.len(), n);
    }
}
