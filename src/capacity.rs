//! The capacity search (`cloudswarm run --find-max START:STEP:HOLD`): raises
//! the open classes' arrival rate step by step, holding each step, and
//! judges each step on what was recorded during it alone: the SLAs, the
//! failure and throttle rates against their limits, and the load
//! generator's own health (dropped arrivals, generator-limited seconds), so
//! an answer about the generator is never taken for one about the cloud.
//! The highest rate whose step held is the answer.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics::sink;
use crate::output::sla::Sla;
use crate::stats::{Snapshot, Stats, StatsData};
use crate::units::{format_rate, parse_duration, parse_rate};

/// A search: the first rate, the step, how long each step holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub start: f64,
    pub step: f64,
    pub hold: Duration,
}

/// Most steps a search takes.
pub const MAX_STEPS: usize = 1000;

/// Parses `START:STEP:HOLD`, e.g. `1/s:1/s:2m` or `60/min:30/min:5m`.
pub fn parse_plan(s: &str) -> Result<Plan, String> {
    let parts: Vec<&str> = s.split(':').map(str::trim).collect();
    let [start, step, hold] = parts.as_slice() else {
        return Err(format!(
            "--find-max `{s}` is not START:STEP:HOLD (e.g. 1/s:1/s:2m: start at 1/s, add 1/s every 2 minutes)"
        ));
    };
    let start = parse_rate(start).map_err(|e| format!("--find-max START: {e}"))?;
    let step = parse_rate(step).map_err(|e| format!("--find-max STEP: {e}"))?;
    let hold = parse_duration(hold).map_err(|e| format!("--find-max HOLD: {e}"))?;
    if hold < Duration::from_secs(2) {
        return Err("--find-max HOLD: at least 2s, so a step has figures to judge".into());
    }
    Ok(Plan { start, step, hold })
}

/// Parses a ratio as a flag gives it: `1%` or `0.01`.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("`{s}` is not a ratio (write 1% or 0.01)"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("`{s}` is not between 0% and 100%"));
    }
    Ok(v)
}

/// The limits a step must stay under besides the SLAs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Failed requests over requests.
    pub failure_rate: f64,
    /// Throttled requests over requests.
    pub throttle_rate: f64,
    /// Arrivals dropped (no free user) over arrivals due, beyond which the
    /// generator, not the cloud, is the limit.
    pub dropped_rate: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            failure_rate: 0.01,
            throttle_rate: 0.01,
            dropped_rate: 0.001,
        }
    }
}

/// What stopped the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    Sla,
    FailureRate,
    ThrottleRate,
    /// The load generator saturated: the answer is about it, not the cloud.
    Generator,
    /// The run time, a signal, or the most steps.
    Ended,
}

/// One step's figures and verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: usize,
    /// The arrival rate asked for (per second).
    pub rate: f64,
    /// How long the step held, in seconds.
    pub seconds: f64,
    /// Task starts per second achieved.
    pub achieved_rate: f64,
    pub requests: u64,
    pub failures: u64,
    pub failure_ratio: f64,
    pub throttled: u64,
    pub throttle_ratio: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub dropped: u64,
    /// Seconds the load generator was the limit (slots, drops, lag).
    pub limited_seconds: u64,
    pub held: bool,
    /// Why it did not hold.
    pub broke: Option<String>,
}

/// The search's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The highest rate (per second) whose step held; None if none did.
    pub max_rate: Option<f64>,
    pub stopped_by: Stop,
    pub reason: String,
    pub steps: Vec<Step>,
}

impl Outcome {
    /// The answer in a sentence.
    pub fn summary(&self) -> String {
        let max = match self.max_rate {
            Some(r) => format!("the highest arrival rate that held: {}", format_rate(r)),
            None => "no step held".to_string(),
        };
        let about = if self.stopped_by == Stop::Generator {
            " (the load generator saturated first: the answer is about it, not the cloud; add workers or --max-inflight)"
        } else {
            ""
        };
        format!("{max}; {}{about}", self.reason)
    }

    /// The steps as a table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:>4} {:>10} {:>10} {:>9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>8} {:>7}  verdict\n",
            "step",
            "rate",
            "achieved",
            "requests",
            "fail %",
            "throttle %",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "dropped",
            "limited"
        );
        for s in &self.steps {
            out += &format!(
                "{:>4} {:>10} {:>10} {:>9} {:>8.2} {:>10.2} {:>9.1} {:>9.1} {:>9.1} {:>8} {:>7}  {}\n",
                s.step,
                format_rate(s.rate),
                format_rate(s.achieved_rate.max(1e-9)),
                s.requests,
                s.failure_ratio * 100.0,
                s.throttle_ratio * 100.0,
                s.p50_ms,
                s.p95_ms,
                s.p99_ms,
                s.dropped,
                s.limited_seconds,
                match &s.broke {
                    None => "held".to_string(),
                    Some(why) => format!("broke: {why}"),
                }
            );
        }
        out
    }
}

impl Outcome {
    /// Writes the steps as CSV (`PREFIX_capacity.csv`).
    pub fn write_csv(&self, path: &std::path::Path) -> Result<(), String> {
        let mut w = csv::Writer::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let err = |e: csv::Error| format!("{}: {e}", path.display());
        w.write_record([
            "Step",
            "Rate",
            "Achieved Rate",
            "Seconds",
            "Requests",
            "Failures",
            "Failure Ratio",
            "Throttled",
            "Throttle Ratio",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "Dropped Arrivals",
            "Generator Limited Seconds",
            "Held",
            "Broke",
        ])
        .map_err(err)?;
        for s in &self.steps {
            w.write_record([
                s.step.to_string(),
                format!("{:.3}", s.rate),
                format!("{:.3}", s.achieved_rate),
                format!("{:.1}", s.seconds),
                s.requests.to_string(),
                s.failures.to_string(),
                format!("{:.5}", s.failure_ratio),
                s.throttled.to_string(),
                format!("{:.5}", s.throttle_ratio),
                format!("{:.3}", s.p50_ms),
                format!("{:.3}", s.p95_ms),
                format!("{:.3}", s.p99_ms),
                s.dropped.to_string(),
                s.limited_seconds.to_string(),
                s.held.to_string(),
                s.broke.clone().unwrap_or_default(),
            ])
            .map_err(err)?;
        }
        w.flush().map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Judges one step's figures: None when it held, else why not and which
/// limit. `sla` judges the SLAs on the step's own snapshot.
fn judge(
    step: &Step,
    snap: &Snapshot,
    limits: Limits,
    sla: &dyn Fn(&Snapshot) -> Option<String>,
) -> Option<(Stop, String)> {
    let started = snap
        .entries
        .iter()
        .filter(|e| e.name.starts_with(crate::ops::ARRIVAL_PREFIX))
        .map(|e| e.num_requests)
        .sum::<u64>();
    let arrivals = started + step.dropped;
    if arrivals > 0 && step.dropped as f64 > limits.dropped_rate * arrivals as f64 {
        return Some((
            Stop::Generator,
            format!(
                "{} of {arrivals} arrivals dropped (no free user): the generator saturated",
                step.dropped
            ),
        ));
    }
    if let Some(why) = sla(snap) {
        return Some((Stop::Sla, why));
    }
    // Throttles are failures too: name them first, they are the more specific.
    if step.requests > 0 && step.throttle_ratio > limits.throttle_rate {
        return Some((
            Stop::ThrottleRate,
            format!(
                "throttle rate {:.2}% above {:.2}%",
                step.throttle_ratio * 100.0,
                limits.throttle_rate * 100.0
            ),
        ));
    }
    if step.requests > 0 && step.failure_ratio > limits.failure_rate {
        return Some((
            Stop::FailureRate,
            format!(
                "failure rate {:.2}% above {:.2}%",
                step.failure_ratio * 100.0,
                limits.failure_rate * 100.0
            ),
        ));
    }
    // One second alone (a blip of the machine's) never condemns a step.
    if step.limited_seconds >= 2 && step.limited_seconds as f64 * 10.0 > step.seconds {
        return Some((
            Stop::Generator,
            format!(
                "the generator was the limit {} of the step's seconds (in-flight slots, runtime lag)",
                step.limited_seconds
            ),
        ));
    }
    None
}

/// The figures of one step from what was recorded during it.
fn figures(n: usize, rate: f64, data: &StatsData, seconds: f64) -> (Step, Snapshot) {
    let snap = data.snapshot();
    let t = &snap.total;
    let started: u64 = snap
        .entries
        .iter()
        .filter(|e| e.name.starts_with(crate::ops::ARRIVAL_PREFIX))
        .map(|e| e.num_requests)
        .sum();
    let pct = |q: f64| t.percentile(q).unwrap_or(0.0);
    let step = Step {
        step: n,
        rate,
        seconds,
        achieved_rate: started as f64 / seconds.max(1e-3),
        requests: t.num_requests,
        failures: t.num_failures,
        failure_ratio: t.failure_ratio(),
        throttled: t.num_throttled,
        throttle_ratio: if t.num_requests > 0 {
            t.num_throttled as f64 / t.num_requests as f64
        } else {
            0.0
        },
        p50_ms: pct(0.5),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        dropped: data.dropped.values().sum(),
        limited_seconds: 0,
        held: true,
        broke: None,
    };
    (step, snap)
}

/// Judges the SLAs on one step's figures: the first that broke, with its
/// value. An SLA on an entry the step did not touch is not judged.
pub fn sla_judge(slas: &[Sla]) -> impl Fn(&Snapshot) -> Option<String> + Sync + '_ {
    move |snap: &Snapshot| {
        slas.iter().find_map(|s| {
            let judged = match s.entry() {
                Some(e) => snap
                    .entries
                    .iter()
                    .any(|x| x.name == e && x.num_requests > 0),
                None => snap.total.num_requests > 0,
            };
            let v = s.check(snap);
            (judged && !v.held).then(|| format!("SLA {} (actual {})", v.sla, v.actual))
        })
    }
}

/// A search going on (the dashboard's): its plan, the steps so far, and
/// its answer once it has one.
#[derive(Debug)]
pub struct Running {
    pub plan: Plan,
    pub steps: std::sync::Mutex<Vec<Step>>,
    pub outcome: std::sync::Mutex<Option<Outcome>>,
}

impl Running {
    pub fn new(plan: Plan) -> Running {
        Running {
            plan,
            steps: Default::default(),
            outcome: Default::default(),
        }
    }

    /// As the JSON report has it: the answer (as `run --find-max` writes
    /// it) once there is one, else the search so far.
    pub fn report_json(&self) -> serde_json::Value {
        match self.outcome.lock().ok().and_then(|o| o.clone()) {
            Some(o) => serde_json::to_value(o).unwrap_or_default(),
            None => self.to_json(),
        }
    }

    /// As `/stats/requests` shows it: the plan, whether it goes on, the
    /// step under way and its rate, the highest rate that held so far, the
    /// steps, and the answer once there is one.
    pub fn to_json(&self) -> serde_json::Value {
        let steps = self.steps.lock().map(|s| s.clone()).unwrap_or_default();
        let outcome = self.outcome.lock().ok().and_then(|o| o.clone());
        let held = steps
            .iter()
            .filter(|s| s.held)
            .map(|s| s.rate)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
        let n = steps.len();
        serde_json::json!({
            "plan": {
                "start": self.plan.start,
                "step": self.plan.step,
                "hold_s": self.plan.hold.as_secs_f64(),
            },
            "searching": outcome.is_none(),
            "step": outcome.is_none().then_some(n + 1),
            "step_rate": outcome.is_none().then_some(self.plan.start + n as f64 * self.plan.step),
            "max_rate": outcome.as_ref().map_or(held, |o| o.max_rate),
            "steps": steps,
            "stopped_by": outcome.as_ref().map(|o| o.stopped_by),
            "reason": outcome.as_ref().map(|o| o.reason.clone()),
            "summary": outcome.as_ref().map(Outcome::summary),
        })
    }
}

/// What a search drives: the local engine, or a master over its workers.
pub trait Target: Sync {
    /// Sets the open classes' arrival rate in all (per second).
    fn set_rate(&self, rate: f64) -> Result<(), String>;
    /// The run's figures.
    fn figures(&self) -> Stats;
    /// Waits until the figures hold what was measured up to now (a
    /// master: until each worker has reported since).
    fn settle(&self) -> impl std::future::Future<Output = ()> + Send;
    /// The run's id (the search's metrics carry it).
    fn run_id(&self) -> String;
}

impl Target for crate::engine::Engine {
    fn set_rate(&self, rate: f64) -> Result<(), String> {
        self.set_arrival_rate(rate)
    }
    fn figures(&self) -> Stats {
        self.ctx.stats.clone()
    }
    async fn settle(&self) {}
    fn run_id(&self) -> String {
        self.ctx.run_id.to_string()
    }
}

impl Target for crate::cluster::master::Master {
    fn set_rate(&self, rate: f64) -> Result<(), String> {
        self.set_arrival_rate(rate)
    }
    fn figures(&self) -> Stats {
        self.stats()
    }
    /// Workers report every 3 s: a step's figures wait for the reports
    /// that cover it (the rate does not change meanwhile).
    async fn settle(&self) {
        self.fresh_reports(Duration::from_secs(10)).await
    }
    fn run_id(&self) -> String {
        crate::cluster::master::Master::run_id(self).map_or_else(String::new, |r| r.to_string())
    }
}

/// Runs the search on a started run (see [`Target`]): step after step
/// until one breaks or `MAX_STEPS`; each step's verdict is printed as it
/// comes. Cancel it (drop the future) to end early: the steps so far are
/// in `progress`.
pub async fn search(
    target: &impl Target,
    plan: &Plan,
    limits: Limits,
    sla: &(dyn Fn(&Snapshot) -> Option<String> + Sync),
    progress: &std::sync::Mutex<Vec<Step>>,
) -> Outcome {
    let hold = plan.hold.as_secs_f64();
    let stats = target.figures();
    let mut rate = plan.start;
    let mut last_held = None;
    let run = target.run_id();
    for n in 1..=MAX_STEPS {
        sink::capacity_step(&run, n, rate, last_held);
        if let Err(e) = target.set_rate(rate) {
            sink::capacity_over(&run, last_held);
            return Outcome {
                max_rate: last_held,
                stopped_by: Stop::Ended,
                reason: format!("step {n} at {}: {e}", format_rate(rate)),
                steps: progress.lock().map(|s| s.clone()).unwrap_or_default(),
            };
        }
        let before = stats.lock().clone();
        let from = unix_now();
        let t0 = Instant::now();
        tokio::time::sleep(plan.hold).await;
        target.settle().await;
        let to = unix_now();
        let (delta, limited) = {
            let now = stats.lock();
            let limited = now
                .history
                .iter()
                .filter(|r| r.timestamp >= from && r.timestamp < to && r.generator_limited)
                .count() as u64;
            (now.since(&before, from), limited)
        };
        let (mut step, snap) = figures(n, rate, &delta, t0.elapsed().as_secs_f64().max(hold));
        step.limited_seconds = limited;
        let verdict = judge(&step, &snap, limits, sla);
        if let Some((_, why)) = &verdict {
            step.held = false;
            step.broke = Some(why.clone());
        }
        eprintln!(
            "find-max: step {n} at {}: {} (achieved {}, {} requests, p95 {:.0} ms, {:.2}% failed, {:.2}% throttled, {} dropped)",
            format_rate(rate),
            step.broke
                .as_deref()
                .map_or("held".to_string(), |w| format!("broke: {w}")),
            format_rate(step.achieved_rate.max(1e-9)),
            step.requests,
            step.p95_ms,
            step.failure_ratio * 100.0,
            step.throttle_ratio * 100.0,
            step.dropped
        );
        if let Ok(mut p) = progress.lock() {
            p.push(step.clone());
        }
        if step.held {
            last_held = Some(rate);
        }
        sink::capacity_judged(
            &run,
            step.held,
            last_held,
            verdict.is_some() || n == MAX_STEPS,
        );
        if let Some((stop, why)) = verdict {
            return Outcome {
                max_rate: last_held,
                stopped_by: stop,
                reason: format!("step {n} at {} broke: {why}", format_rate(rate)),
                steps: progress.lock().map(|s| s.clone()).unwrap_or_default(),
            };
        }
        rate += plan.step;
    }
    Outcome {
        max_rate: last_held,
        stopped_by: Stop::Ended,
        reason: format!("{MAX_STEPS} steps held"),
        steps: progress.lock().map(|s| s.clone()).unwrap_or_default(),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The outcome of a search that ended before a step broke (run time, a
/// signal): the steps done so far.
pub fn cut_short(run: &str, steps: Vec<Step>, why: &str) -> Outcome {
    let max_rate = steps
        .iter()
        .filter(|s| s.held)
        .map(|s| s.rate)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    sink::capacity_over(run, max_rate);
    Outcome {
        max_rate,
        stopped_by: Stop::Ended,
        reason: format!("the search ended before a step broke ({why})"),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_explain_mistakes() {
        let p = parse_plan("1/s:1/s:2m").unwrap();
        assert_eq!(
            (p.start, p.step, p.hold),
            (1.0, 1.0, Duration::from_secs(120))
        );
        let p = parse_plan("60/min:30/min:5s").unwrap();
        assert_eq!((p.start, p.step), (1.0, 0.5));
        assert!(
            parse_plan("1/s:1/s")
                .unwrap_err()
                .contains("START:STEP:HOLD")
        );
        assert!(parse_plan("x:1/s:2m").unwrap_err().contains("START"));
        assert!(parse_plan("1/s:0/s:2m").unwrap_err().contains("STEP"));
        assert!(
            parse_plan("1/s:1/s:1s")
                .unwrap_err()
                .contains("at least 2s")
        );
        assert_eq!(parse_ratio("1%"), Ok(0.01));
        assert_eq!(parse_ratio("0.5"), Ok(0.5));
        assert!(parse_ratio("150%").is_err() && parse_ratio("x").is_err());
    }

    fn step(requests: u64, failures: u64, throttled: u64, dropped: u64, limited: u64) -> Step {
        Step {
            step: 1,
            rate: 10.0,
            seconds: 10.0,
            achieved_rate: 10.0,
            requests,
            failures,
            failure_ratio: failures as f64 / requests.max(1) as f64,
            throttled,
            throttle_ratio: throttled as f64 / requests.max(1) as f64,
            p50_ms: 1.0,
            p95_ms: 1.0,
            p99_ms: 1.0,
            dropped,
            limited_seconds: limited,
            held: true,
            broke: None,
        }
    }

    #[test]
    fn a_step_is_judged_generator_first_then_slas_then_limits() {
        let mut d = StatsData::default();
        for _ in 0..100 {
            d.record(
                &crate::ops::arrival_entry("api"),
                Duration::from_millis(1),
                crate::stats::Bytes::default(),
                None,
            );
        }
        let snap = d.snapshot();
        let none = |_: &Snapshot| None;
        let l = Limits::default();
        assert!(judge(&step(100, 0, 0, 0, 0), &snap, l, &none).is_none());
        // One drop in 101 arrivals is past 0.1%: the generator, not the cloud.
        let (stop, why) = judge(&step(100, 50, 50, 1, 0), &snap, l, &none).unwrap();
        assert_eq!(stop, Stop::Generator, "{why}");
        let sla = |_: &Snapshot| Some("SLA p95<1ms (actual 2 ms)".to_string());
        assert_eq!(
            judge(&step(100, 50, 0, 0, 0), &snap, l, &sla).unwrap().0,
            Stop::Sla
        );
        assert_eq!(
            judge(&step(100, 5, 5, 0, 0), &snap, l, &none).unwrap().0,
            Stop::ThrottleRate
        );
        assert_eq!(
            judge(&step(100, 5, 0, 0, 0), &snap, l, &none).unwrap().0,
            Stop::FailureRate
        );
        // Limited 2 of 10 seconds: more than a tenth.
        assert_eq!(
            judge(&step(100, 0, 0, 0, 2), &snap, l, &none).unwrap().0,
            Stop::Generator
        );
        assert!(judge(&step(100, 0, 0, 0, 1), &snap, l, &none).is_none());
        // One limited second of a 4 s step is a quarter, but one second
        // alone is a blip: it takes two.
        let short = |limited| Step {
            seconds: 4.0,
            ..step(40, 0, 0, 0, limited)
        };
        assert!(judge(&short(1), &snap, l, &none).is_none());
        assert_eq!(
            judge(&short(2), &snap, l, &none).unwrap().0,
            Stop::Generator
        );
    }
}
