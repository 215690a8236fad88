//! The JSON report of a run, schema 1: what `--json` writes, what a kept
//! run holds as `report.json` (and, while it goes, `snapshot.json`), and
//! its typed reading ([`Report`]) for the HTML report, `runs` and
//! `compare`. Fields are only ever added within a schema; a change that
//! would make an older reader misread one is a new schema number, which
//! `compare` refuses (exit 2) rather than compare wrongly.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::compare::Comparison;
use super::sla::{SlaStatus, Verdict};
use crate::resources::{Kind, KindCounts};
use crate::stats::{EntrySummary, HistoryRow, Snapshot, percentile_of};
use crate::target::TargetInfo;

/// The report schema this cloudswarm writes and reads.
pub const SCHEMA: u64 = 1;

/// One entry's figures in the report (times in ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportEntry {
    pub name: String,
    pub num_requests: u64,
    pub num_failures: u64,
    pub num_throttled: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub avg_ms: f64,
    pub min_ms: f64,
    pub avg_content_size: f64,
    pub rps: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub throughput_bps: f64,
}

impl From<&EntrySummary> for ReportEntry {
    fn from(e: &EntrySummary) -> Self {
        ReportEntry {
            name: e.name.clone(),
            num_requests: e.num_requests,
            num_failures: e.num_failures,
            num_throttled: e.num_throttled,
            p50_ms: e.median_ms,
            p95_ms: e.percentile(0.95).unwrap_or(0.0),
            p99_ms: e.percentile(0.99).unwrap_or(0.0),
            p999_ms: e.percentile(0.999).unwrap_or(0.0),
            max_ms: e.max_ms,
            avg_ms: e.avg_ms,
            min_ms: e.min_ms,
            avg_content_size: e.avg_content_size,
            rps: e.rps,
            bytes_sent: e.bytes_sent,
            bytes_received: e.bytes_received,
            throughput_bps: e.throughput_bps,
        }
    }
}

impl ReportEntry {
    /// Failed / all (0 without requests).
    pub fn failure_ratio(&self) -> f64 {
        if self.num_requests == 0 {
            0.0
        } else {
            self.num_failures as f64 / self.num_requests as f64
        }
    }
}

/// One second of the history as charts draw it (the dashboard's
/// `/stats/history` points, the report's `history`). A second the load
/// generator limited says why (`limited`) and by how much.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Point {
    /// Unix seconds.
    pub t: f64,
    pub users: u64,
    pub rps: f64,
    pub fails: f64,
    pub p50: f64,
    pub p95: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limited: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub saturated: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped: u64,
    /// The runtime's lag (ms), on a limited second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<f64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `v` to three decimals: a report's history need not carry 17 digits.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl From<&HistoryRow> for Point {
    fn from(r: &HistoryRow) -> Point {
        let p = |q: f64| round3(percentile_of(&r.percentiles_ms, q).unwrap_or(0.0));
        let limited = r.generator_limited;
        Point {
            // Exact: the dashboard asks for the points after the last one's `t`.
            t: r.timestamp,
            users: r.user_count,
            rps: round3(r.current_rps),
            fails: round3(r.current_fail_per_sec),
            p50: p(0.5),
            p95: p(0.95),
            limited: limited.then(|| r.limited_by().join(", ")),
            saturated: limited && r.saturated,
            dropped: if limited { r.dropped } else { 0 },
            lag_ms: limited.then_some(round3(r.runtime_lag_ms)),
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One chart point, as JSON.
pub fn history_point(r: &HistoryRow) -> serde_json::Value {
    serde_json::to_value(Point::from(r)).unwrap_or_default()
}

/// What the JSON report needs beyond the stats.
pub struct RunFacts<'a> {
    pub run_id: &'a str,
    pub profile: &'a str,
    /// The profile file's text, as the run read it.
    pub profile_text: &'a str,
    /// The endpoints and region (never credentials).
    pub target: &'a TargetInfo,
    pub started_at: f64,
    /// Unix seconds when the run was over (stopped and cleaned up); None
    /// while it goes: the report is then a snapshot (`complete: false`).
    pub ended_at: Option<f64>,
    pub duration_s: f64,
    pub users: u64,
    pub resources: &'a BTreeMap<Kind, KindCounts>,
    /// What a listing of the cloud found left after clean-up; None (`null`
    /// in the report) when nobody knows: the listing failed or clean-up was
    /// interrupted. With `--keep-resources`, what the run holds on purpose.
    pub leaked: Option<u64>,
}

/// A distributed run's target: each worker's own.
pub fn on_workers() -> TargetInfo {
    TargetInfo {
        ec2_endpoint: "each worker's".into(),
        s3_endpoint: "each worker's".into(),
        region: "each worker's".into(),
    }
}

/// The report so far (`facts.ended_at` None): what a crash leaves in the
/// run's folder.
pub fn report_so_far(
    facts: &RunFacts<'_>,
    stats: &crate::stats::Stats,
    monitor: &super::sla::Monitor,
) -> serde_json::Value {
    let (snap, history) = {
        let data = stats.lock();
        (data.snapshot(), data.history.clone())
    };
    json_report(facts, &snap, &history, &monitor.verdicts(&snap))
}

/// How many seconds of the history the load generator limited, and why
/// (a second can have several reasons).
pub fn generator_summary(history: &[HistoryRow]) -> serde_json::Value {
    let count = |f: &dyn Fn(&HistoryRow) -> bool| history.iter().filter(|r| f(r)).count();
    serde_json::json!({
        "seconds": history.len(),
        "limited_seconds": count(&|r| r.generator_limited),
        "saturated_seconds": count(&|r| r.saturated),
        "dropped_seconds": count(&|r| r.dropped > 0),
        "lag_seconds": count(&|r| r.runtime_lag_ms > crate::stats::LAG_LIMIT_MS),
        "max_runtime_lag_ms": history.iter().map(|r| r.runtime_lag_ms).fold(0.0, f64::max),
    })
}

/// The JSON report of a run (schema [`SCHEMA`]): its identity (the
/// profile's text, the target, cloudswarm's version, start and end), its
/// figures, what the load generator limited (`generator`, and each
/// second's chart point in `history`), and the SLA verdicts.
pub fn json_report(
    f: &RunFacts<'_>,
    s: &Snapshot,
    history: &[HistoryRow],
    slas: &[Verdict],
) -> serde_json::Value {
    let created: u64 = f.resources.values().map(|c| c.created).sum();
    let deleted: u64 = f.resources.values().map(|c| c.deleted).sum();
    // What a listing of the cloud found; null when it could not list (or
    // never did): unknown, not a guess.
    let leaked = f.leaked;
    let by_kind: BTreeMap<&str, &KindCounts> =
        f.resources.iter().map(|(k, v)| (k.as_str(), v)).collect();
    serde_json::json!({
        "schema": SCHEMA,
        "cloudswarm_version": env!("CARGO_PKG_VERSION"),
        // False in a snapshot written while the run goes (or left by a crash).
        "complete": f.ended_at.is_some(),
        "run_id": f.run_id,
        "profile": f.profile,
        "profile_text": f.profile_text,
        "target": f.target,
        "started_at": f.started_at,
        "ended_at": f.ended_at,
        "duration_s": f.duration_s,
        "users": f.users,
        "entries": s.entries.iter().map(ReportEntry::from).collect::<Vec<_>>(),
        "total": ReportEntry::from(&s.total),
        "errors": s.errors.iter().map(|e| serde_json::json!({
            "name": e.name, "code": e.code, "message": e.message, "count": e.count,
            "throttled": e.throttled, "first_seen": e.first_seen, "last_seen": e.last_seen,
        })).collect::<Vec<_>>(),
        "capped": s.capped,
        // Arrivals of open classes that found no free user, by class (task
        // starts and their lateness are the `arrival:<class>` entries).
        "dropped": s.dropped,
        "resources": { "created": created, "deleted": deleted, "leaked": leaked, "by_kind": by_kind },
        // Seconds whose figures describe the load generator rather than the cloud.
        "generator": generator_summary(history),
        // Each SLA: `ok`, its actual value, and when it first broke (unix time).
        "sla": slas,
        // Each second's chart point (RPS, failures/s, p50, p95, users).
        "history": history.iter().map(Point::from).collect::<Vec<_>>(),
    })
}

/// The endpoints a report names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetDoc {
    pub ec2_endpoint: String,
    pub s3_endpoint: String,
    pub region: String,
}

/// An error row of a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorDoc {
    pub name: String,
    pub code: String,
    pub message: String,
    pub count: u64,
    pub throttled: bool,
}

/// Per kind, as the report counts them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CountsDoc {
    pub created: u64,
    pub deleted: u64,
    pub alive: u64,
}

/// The report's `resources`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourcesDoc {
    pub created: u64,
    pub deleted: u64,
    pub leaked: Option<u64>,
    pub by_kind: BTreeMap<String, CountsDoc>,
}

/// A JSON report read back (schema 1; a field it lacks reads as empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Report {
    pub schema: Option<u64>,
    pub cloudswarm_version: String,
    pub complete: bool,
    pub run_id: String,
    pub profile: String,
    pub profile_text: String,
    pub target: TargetDoc,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub duration_s: f64,
    pub users: u64,
    pub entries: Vec<ReportEntry>,
    pub total: ReportEntry,
    pub errors: Vec<ErrorDoc>,
    pub capped: BTreeMap<String, u64>,
    pub dropped: BTreeMap<String, u64>,
    pub resources: ResourcesDoc,
    pub sla: Vec<Verdict>,
    pub aborted_by_sla: Option<SlaStatus>,
    pub history: Vec<Point>,
    /// A master's workers (`run --master`, `serve --master`).
    pub workers: Option<serde_json::Value>,
    /// The comparison with a baseline (`run --baseline`).
    pub comparison: Option<Comparison>,
    /// A capacity search's answer (`run --find-max`).
    pub capacity: Option<serde_json::Value>,
}

impl Report {
    /// Reads a report of this schema from a JSON value; the error says why
    /// it is not one.
    pub fn from_value(v: serde_json::Value) -> Result<Report, String> {
        match v.get("schema").and_then(serde_json::Value::as_u64) {
            Some(SCHEMA) => {}
            Some(n) => {
                return Err(format!(
                    "report schema {n}: this cloudswarm ({}) reads schema {SCHEMA}",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            None if v.get("run_id").is_some() => {
                return Err(format!(
                    "a report without a schema (written by a cloudswarm before schema {SCHEMA}): run it again to compare"
                ));
            }
            None => return Err("not a cloudswarm JSON report".into()),
        }
        serde_json::from_value(v).map_err(|e| format!("not a cloudswarm report: {e}"))
    }

    /// Reads a report file.
    pub fn read(path: &Path) -> Result<Report, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        Report::from_value(v).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every entry, then Aggregated.
    pub fn rows(&self) -> impl Iterator<Item = &ReportEntry> {
        self.entries.iter().chain(std::iter::once(&self.total))
    }

    /// The SLA verdict in a word: `held`, `FAILED` or `none`.
    pub fn sla_verdict(&self) -> &'static str {
        if self.sla.is_empty() {
            "none"
        } else if self.sla.iter().all(|v| v.held) && self.aborted_by_sla.is_none() {
            "held"
        } else {
            "FAILED"
        }
    }

    /// The open classes' arrivals: (class, task starts, dropped, its
    /// `arrival:<class>` entry), by class name.
    pub fn arrivals(&self) -> Vec<(String, u64, u64, Option<&ReportEntry>)> {
        let prefix = crate::ops::ARRIVAL_PREFIX;
        let mut classes: std::collections::BTreeSet<&str> =
            self.dropped.keys().map(String::as_str).collect();
        for e in &self.entries {
            if let Some(c) = e.name.strip_prefix(prefix) {
                classes.insert(c);
            }
        }
        classes
            .into_iter()
            .map(|c| {
                let e = self
                    .entries
                    .iter()
                    .find(|e| e.name.strip_prefix(prefix) == Some(c));
                let dropped = self.dropped.get(c).copied().unwrap_or(0);
                (c.to_string(), e.map_or(0, |e| e.num_requests), dropped, e)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::StatsData;

    #[test]
    fn a_report_reads_back_and_other_schemas_are_refused() {
        let mut s = StatsData::default();
        for ms in [10u64, 20, 30] {
            s.record(
                "s3:PutObject",
                std::time::Duration::from_millis(ms),
                Default::default(),
                None,
            );
        }
        s.history_tick(2);
        let snap = s.snapshot();
        let target = TargetInfo {
            ec2_endpoint: "http://127.0.0.1:5000".into(),
            s3_endpoint: "http://127.0.0.1:5000".into(),
            region: "us-east-1".into(),
        };
        let facts = RunFacts {
            run_id: "abc123",
            profile: "smoke",
            profile_text: "[params]\n",
            target: &target,
            started_at: 100.0,
            ended_at: Some(130.0),
            duration_s: 30.0,
            users: 2,
            resources: &BTreeMap::new(),
            leaked: Some(0),
        };
        let v = json_report(&facts, &snap, &s.history, &[]);
        assert_eq!(v["schema"], 1);
        assert_eq!(v["complete"], true);
        assert_eq!(v["target"]["region"], "us-east-1");
        let r = Report::from_value(v.clone()).unwrap();
        assert_eq!(r.run_id, "abc123");
        assert_eq!(r.profile_text, "[params]\n");
        assert_eq!(r.entries[0].name, "s3:PutObject");
        assert_eq!(r.entries[0].num_requests, 3);
        assert!(r.entries[0].p95_ms >= 29.0, "{:?}", r.entries[0]);
        assert_eq!(r.history.len(), 1);
        assert_eq!(r.sla_verdict(), "none");
        let mut other = v.clone();
        other["schema"] = 2.into();
        let e = Report::from_value(other).unwrap_err();
        assert!(e.contains("report schema 2"), "{e}");
        let mut old = v;
        old.as_object_mut().unwrap().remove("schema");
        assert!(
            Report::from_value(old)
                .unwrap_err()
                .contains("without a schema")
        );
        assert!(
            Report::from_value(serde_json::json!({"a": 1}))
                .unwrap_err()
                .contains("not a cloudswarm")
        );
    }
}
