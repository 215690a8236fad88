//! The hot-path sink: each measurement's counters and histograms
//! (requests, failures, throttling, bytes, provisioning waits), and capped
//! ops, dropped arrivals. Labels are the ops' static names: nothing is
//! allocated per request.
//! Error codes are capped at [`MAX_CODES`] distinct labels.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use metrics::{counter, histogram};

use super::exporter::enabled;
use crate::failure::Failure;
use crate::ops::EntryKind;
use crate::stats::Bytes;

/// Distinct error codes exported before the rest become `other`.
const MAX_CODES: usize = 100;

static CODES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// An error code as a label: the code itself for the first [`MAX_CODES`], then `other`.
fn code_label(code: &str) -> String {
    let code: String = code.chars().take(64).collect();
    let mut g = CODES.lock().unwrap_or_else(|p| p.into_inner());
    let seen = g.get_or_insert_with(HashSet::new);
    if seen.contains(&code) {
        return code;
    }
    if seen.len() < MAX_CODES {
        seen.insert(code.clone());
        return code;
    }
    "other".into()
}

/// Records one measurement of entry `name`, of the kind the op catalogue
/// gives it.
pub fn record(
    name: &'static str,
    kind: EntryKind,
    took: Duration,
    bytes: Bytes,
    fail: Option<&Failure>,
) {
    if !enabled() {
        return;
    }
    let outcome = if fail.is_some() { "failure" } else { "success" };
    let secs = took.as_secs_f64();
    if let Some(f) = fail {
        counter!("cloudswarm_errors_total", "op" => name, "code" => code_label(&f.code))
            .increment(1);
        if f.throttled {
            counter!("cloudswarm_throttled_total", "op" => name).increment(1);
        }
    }
    match kind {
        EntryKind::Request => {}
        // A provisioning wait (`ec2:instance-running`): its own histogram.
        EntryKind::Wait => {
            let wait = name.split_once(':').map_or(name, |(_, w)| w);
            histogram!("cloudswarm_provisioning_seconds", "wait" => wait, "outcome" => outcome)
                .record(secs);
            return;
        }
        // Timings inside a request (`s3:GetObject:ttfb`) stay in the stats only.
        EntryKind::Timing => return,
    }
    histogram!("cloudswarm_request_duration_seconds", "op" => name, "outcome" => outcome)
        .record(secs);
    counter!("cloudswarm_requests_total", "op" => name).increment(1);
    if fail.is_some() {
        counter!("cloudswarm_request_failures_total", "op" => name).increment(1);
    }
    if bytes.sent > 0 {
        counter!("cloudswarm_bytes_sent_total", "op" => name).increment(bytes.sent);
    }
    if bytes.received > 0 {
        counter!("cloudswarm_bytes_received_total", "op" => name).increment(bytes.received);
    }
}

/// Counts a user whose task panicked in `name` (an op or `user:<class>`).
pub fn panicked(name: &str) {
    if enabled() {
        counter!("cloudswarm_errors_total", "op" => name.to_string(), "code" => "panic")
            .increment(1);
    }
}

/// Counts `n` arrivals of open class `class` that found no free user
/// (0 makes the class's counter show).
pub fn dropped(class: &str, n: u64) {
    if enabled() {
        counter!("cloudswarm_dropped_arrivals_total", "class" => class.to_string()).increment(n);
    }
}

/// Says whether SLA `expression` holds (1: holding or not judged yet, 0:
/// broken). The label values are the run's expressions: as many as the
/// user configured, at most [`crate::profile::MAX_SLAS`] per run.
pub fn sla_ok(expression: &str, ok: bool) {
    if enabled() {
        metrics::gauge!("cloudswarm_sla_ok", "sla" => expression.to_string()).set(if ok {
            1.0
        } else {
            0.0
        });
    }
}

/// A capacity search (`--find-max`) of run `run` in Prometheus: the step
/// under way and its rate (set as it starts), the highest rate that held
/// so far (0 until one did), whether the search goes on, and the steps
/// judged by verdict. Labelled by run (one search per run), so a
/// dashboard narrowed to a run shows that run's search and no other's.
pub fn capacity_step(run: &str, step: usize, rate: f64, max_rate: Option<f64>) {
    if enabled() {
        let run = run.to_string();
        metrics::gauge!("cloudswarm_capacity_max_rate", "run_id" => run.clone())
            .set(max_rate.unwrap_or(0.0));
        metrics::gauge!("cloudswarm_capacity_searching", "run_id" => run.clone()).set(1.0);
        metrics::gauge!("cloudswarm_capacity_step", "run_id" => run.clone()).set(step as f64);
        metrics::gauge!("cloudswarm_capacity_step_rate", "run_id" => run).set(rate);
    }
}

/// A step judged (see [`capacity_step`]); `done` when the search is over.
pub fn capacity_judged(run: &str, held: bool, max_rate: Option<f64>, done: bool) {
    if enabled() {
        let verdict = if held { "held" } else { "broke" };
        let run = run.to_string();
        counter!("cloudswarm_capacity_steps_total", "run_id" => run.clone(), "verdict" => verdict)
            .increment(1);
        metrics::gauge!("cloudswarm_capacity_max_rate", "run_id" => run.clone())
            .set(max_rate.unwrap_or(0.0));
        metrics::gauge!("cloudswarm_capacity_searching", "run_id" => run).set(if done {
            0.0
        } else {
            1.0
        });
    }
}

/// A capacity search ended without a verdict (run time, a signal, an
/// error): not searching any more, the highest rate that held stays.
pub fn capacity_over(run: &str, max_rate: Option<f64>) {
    if enabled() {
        let run = run.to_string();
        metrics::gauge!("cloudswarm_capacity_max_rate", "run_id" => run.clone())
            .set(max_rate.unwrap_or(0.0));
        metrics::gauge!("cloudswarm_capacity_searching", "run_id" => run).set(0.0);
    }
}

/// A run's identity in Prometheus: `cloudswarm_run_info` 1 for the
/// current run (0 for the one before it), `cloudswarm_run_active` 1 from
/// its start until its users stopped (the Grafana dashboard's run
/// annotation spans it).
pub fn run_gauges(run_id: &str, profile: &str, current: bool, active: bool) {
    if !enabled() {
        return;
    }
    let one = |b: bool| if b { 1.0 } else { 0.0 };
    metrics::gauge!("cloudswarm_run_info", "run_id" => run_id.to_string(), "profile" => profile.to_string())
        .set(one(current));
    metrics::gauge!("cloudswarm_run_active", "run_id" => run_id.to_string(), "profile" => profile.to_string())
        .set(one(active));
}

/// Counts an op a budget cap kept from creating.
pub fn capped(name: &'static str) {
    if enabled() {
        counter!("cloudswarm_capped_total", "op" => name).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_bounded() {
        for i in 0..MAX_CODES + 50 {
            code_label(&format!("Code{i}"));
        }
        assert_eq!(code_label("Code0"), "Code0");
        assert_eq!(code_label("NeverSeenBefore"), "other");
        assert!(code_label(&"x".repeat(500)).len() <= 64 || code_label("y") == "other");
    }
}
