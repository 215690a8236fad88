//! Two runs side by side (`cloudswarm compare BASE NEW`, `run --baseline`,
//! the dashboard's compare view): per entry present in either, requests,
//! failure %, p50/p95/p99 and RPS of both with the change, and the
//! regression checks: an entry whose judged figure (`--on`, p95 by
//! default) grew by more than `--max-regression`, or whose failure
//! percentage rose by more than `--max-failure-increase` points. The
//! limits have defaults (10 %, 1 point) so regressions are always marked;
//! giving one makes the comparison a gate (exit 1 when something regressed).

use std::fmt::Write as _;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::report::{Report, ReportEntry};

/// A figure a regression check can judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    P50,
    P95,
    P99,
    Avg,
    Max,
    /// Requests per second: a drop is the regression.
    Rps,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::P50 => "p50",
            Metric::P95 => "p95",
            Metric::P99 => "p99",
            Metric::Avg => "avg",
            Metric::Max => "max",
            Metric::Rps => "rps",
        }
    }

    fn of(self, f: &Figures) -> f64 {
        match self {
            Metric::P50 => f.p50_ms,
            Metric::P95 => f.p95_ms,
            Metric::P99 => f.p99_ms,
            Metric::Avg => f.avg_ms,
            Metric::Max => f.max_ms,
            Metric::Rps => f.rps,
        }
    }

    /// `250.0 ms`, or `12.5/s` for RPS.
    fn show(self, v: f64) -> String {
        match self {
            Metric::Rps => format!("{v:.2}/s"),
            _ => format!("{} ms", ms(v)),
        }
    }
}

/// A percentage as flags write it (`10%`, or `10`), as a fraction.
pub fn parse_pct(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let n = t.strip_suffix('%').unwrap_or(t).trim();
    match n.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=100_000.0).contains(&v) => Ok(v / 100.0),
        _ => Err(format!(
            "`{s}` is not a percentage (e.g. 10% or 0.5%; 0 to 100000%)"
        )),
    }
}

/// The regression limits of `compare` and `run --baseline`.
#[derive(Args, Debug, Clone)]
pub struct GateArgs {
    /// Gate: exit 1 when an entry's --on figure (p95 by default) grew by more than PCT (e.g. 10%); default 10%, marking only
    #[arg(long, value_parser = parse_pct, value_name = "PCT")]
    pub max_regression: Option<f64>,
    /// The figure --max-regression judges: p50, p95, p99, avg, max, or rps (a drop); repeatable
    #[arg(long = "on", value_enum, value_name = "FIGURE")]
    pub on: Vec<Metric>,
    /// Gate: exit 1 when an entry's failure percentage rose by more than PCT points (e.g. 1%: 0.5% to 1.6%); default 1%, marking only
    #[arg(long, value_parser = parse_pct, value_name = "PCT")]
    pub max_failure_increase: Option<f64>,
    /// Judge only entries with at least N requests in both runs (fewer make percentiles noise)
    #[arg(long, default_value_t = DEFAULT_MIN_REQUESTS, value_name = "N")]
    pub min_requests: u64,
}

/// Default --max-regression: marks a regression, fails nothing.
pub const DEFAULT_MAX_REGRESSION: f64 = 0.10;
/// Default --max-failure-increase (points, as a fraction).
pub const DEFAULT_MAX_FAILURE_INCREASE: f64 = 0.01;
/// Default --min-requests.
pub const DEFAULT_MIN_REQUESTS: u64 = 10;

impl Default for GateArgs {
    fn default() -> Self {
        GateArgs {
            max_regression: None,
            on: vec![],
            max_failure_increase: None,
            min_requests: DEFAULT_MIN_REQUESTS,
        }
    }
}

impl GateArgs {
    /// True when a limit was given: regressions then fail the exit code.
    pub fn gates(&self) -> bool {
        self.max_regression.is_some() || self.max_failure_increase.is_some()
    }

    pub fn limits(&self) -> Limits {
        let mut on = self.on.clone();
        if on.is_empty() {
            on.push(Metric::P95);
        }
        on.dedup();
        Limits {
            on,
            max_regression: self.max_regression.unwrap_or(DEFAULT_MAX_REGRESSION),
            max_failure_increase: self
                .max_failure_increase
                .unwrap_or(DEFAULT_MAX_FAILURE_INCREASE),
            min_requests: self.min_requests,
            gate: self.gates(),
        }
    }
}

/// What counts as a regression, and whether it fails the exit code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub on: Vec<Metric>,
    /// A fraction: 0.1 is 10 %.
    pub max_regression: f64,
    /// Percentage points as a fraction: 0.01 is one point.
    pub max_failure_increase: f64,
    /// Entries with fewer requests in either run are not judged.
    #[serde(default)]
    pub min_requests: u64,
    pub gate: bool,
}

impl Default for Limits {
    fn default() -> Self {
        GateArgs::default().limits()
    }
}

/// One side of a comparison.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Side {
    pub run_id: String,
    pub profile: String,
    pub started_at: f64,
    pub duration_s: f64,
    pub complete: bool,
    /// What was given: a run id or a report's path.
    pub source: String,
}

impl Side {
    fn of(r: &Report, source: &str) -> Side {
        Side {
            run_id: r.run_id.clone(),
            profile: r.profile.clone(),
            started_at: r.started_at,
            duration_s: r.duration_s,
            complete: r.complete,
            source: source.to_string(),
        }
    }
}

/// An entry's figures on one side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Figures {
    pub requests: u64,
    pub failures: u64,
    pub failure_pct: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
    pub rps: f64,
}

impl From<&ReportEntry> for Figures {
    fn from(e: &ReportEntry) -> Figures {
        Figures {
            requests: e.num_requests,
            failures: e.num_failures,
            failure_pct: e.failure_ratio() * 100.0,
            p50_ms: e.p50_ms,
            p95_ms: e.p95_ms,
            p99_ms: e.p99_ms,
            avg_ms: e.avg_ms,
            max_ms: e.max_ms,
            rps: e.rps,
        }
    }
}

/// One entry of either run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    pub name: String,
    /// None: the entry is not in that run.
    pub base: Option<Figures>,
    pub new: Option<Figures>,
    pub regressed: bool,
}

/// One regression check (a JUnit test case of class `regression`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Check {
    /// `p95(s3:GetObject)`, `failure_rate(Aggregated)`.
    pub name: String,
    pub entry: String,
    /// `p95`..., or `failure_rate`.
    pub metric: String,
    pub base: f64,
    pub new: f64,
    /// Relative change (0.25: 25 % more), or for `failure_rate` the change
    /// in points as a fraction (0.01: one point more).
    pub change: f64,
    pub limit: f64,
    pub failed: bool,
    pub message: String,
}

/// The comparison of two runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Comparison {
    pub base: Side,
    pub new: Side,
    pub limits: Limits,
    pub rows: Vec<Row>,
    pub checks: Vec<Check>,
    /// A check failed.
    pub regressed: bool,
    /// What to keep in mind (different profiles, a run that is a snapshot).
    pub notes: Vec<String>,
}

impl Comparison {
    /// The exit code's part: 1 when a gate's limit was passed.
    pub fn failed(&self) -> bool {
        self.limits.gate && self.regressed
    }

    pub fn failed_checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.failed)
    }
}

/// Compares run `new` with run `base` (`*_src`: what the user named them by).
pub fn compare(
    base: &Report,
    base_src: &str,
    new: &Report,
    new_src: &str,
    limits: Limits,
) -> Comparison {
    let mut names: Vec<&str> = base
        .entries
        .iter()
        .chain(&new.entries)
        .map(|e| e.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let find = |r: &Report, n: &str| r.entries.iter().find(|e| e.name == n).map(Figures::from);
    let mut rows: Vec<Row> = names
        .into_iter()
        .map(|n| Row {
            name: n.to_string(),
            base: find(base, n),
            new: find(new, n),
            regressed: false,
        })
        .collect();
    rows.push(Row {
        name: "Aggregated".into(),
        base: Some(Figures::from(&base.total)),
        new: Some(Figures::from(&new.total)),
        regressed: false,
    });
    let mut checks = Vec::new();
    let mut few = 0;
    for row in &mut rows {
        let (Some(b), Some(n)) = (&row.base, &row.new) else {
            continue;
        };
        // An open class's start lateness measures cloudswarm, not the cloud.
        if b.requests == 0 || n.requests == 0 || row.name.starts_with(crate::ops::ARRIVAL_PREFIX) {
            continue;
        }
        if b.requests.min(n.requests) < limits.min_requests {
            few += 1;
            continue;
        }
        for &m in &limits.on {
            let (bv, nv) = (m.of(b), m.of(n));
            if bv <= 0.0 {
                continue;
            }
            let change = (nv - bv) / bv;
            let failed = match m {
                Metric::Rps => change < -limits.max_regression,
                _ => change > limits.max_regression,
            };
            let name = format!("{}({})", m.as_str(), row.name);
            let sign = if m == Metric::Rps { "-" } else { "+" };
            checks.push(Check {
                message: format!(
                    "{name}: {} → {} ({:+.1}%; limit {sign}{}%)",
                    m.show(bv),
                    m.show(nv),
                    change * 100.0,
                    pct(limits.max_regression * 100.0)
                ),
                name,
                entry: row.name.clone(),
                metric: m.as_str().into(),
                base: bv,
                new: nv,
                change,
                limit: limits.max_regression,
                failed,
            });
            row.regressed |= failed;
        }
        let change = (n.failure_pct - b.failure_pct) / 100.0;
        let failed = change > limits.max_failure_increase + 1e-12;
        let name = format!("failure_rate({})", row.name);
        checks.push(Check {
            message: format!(
                "{name}: {}% → {}% ({:+.2} points; limit +{} {})",
                pct(b.failure_pct),
                pct(n.failure_pct),
                change * 100.0,
                pct(limits.max_failure_increase * 100.0),
                points(limits.max_failure_increase)
            ),
            name,
            entry: row.name.clone(),
            metric: "failure_rate".into(),
            base: b.failure_pct / 100.0,
            new: n.failure_pct / 100.0,
            change,
            limit: limits.max_failure_increase,
            failed,
        });
        row.regressed |= failed;
    }
    let mut notes = Vec::new();
    if few > 0 {
        notes.push(format!(
            "{few} entries with fewer than {} requests in a run are not judged (--min-requests)",
            limits.min_requests
        ));
    }
    if base.profile != new.profile {
        notes.push(format!(
            "the runs used different profiles ({} and {})",
            base.profile, new.profile
        ));
    } else if base.profile_text != new.profile_text {
        notes.push(format!("profile {} changed between the runs", new.profile));
    }
    for (r, which) in [(base, "base"), (new, "new")] {
        if !r.complete {
            notes.push(format!(
                "the {which} run {} has no final report (it crashed, or still runs): its last snapshot is compared",
                r.run_id
            ));
        }
    }
    Comparison {
        base: Side::of(base, base_src),
        new: Side::of(new, new_src),
        regressed: checks.iter().any(|c| c.failed),
        limits,
        rows,
        checks,
        notes,
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `point` or `points` for a limit in points (as a fraction).
pub fn points(limit: f64) -> &'static str {
    if (limit * 100.0 - 1.0).abs() < 1e-9 {
        "point"
    } else {
        "points"
    }
}

/// A percentage without needless digits: 10, 0.5, 12.25.
fn pct(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `base → new (+12%)` of one figure; `-` where a side lacks the entry.
pub fn cell(base: Option<f64>, new: Option<f64>, fmt: fn(f64) -> String, points: bool) -> String {
    match (base, new) {
        (Some(b), Some(n)) => {
            let change = if points {
                format!("{:+.2}", n - b)
            } else if b > 0.0 {
                format!("{:+.0}%", (n - b) / b * 100.0)
            } else if n > 0.0 {
                "new".into()
            } else {
                "=".into()
            };
            format!("{} → {} ({change})", fmt(b), fmt(n))
        }
        (Some(b), None) => format!("{} → -", fmt(b)),
        (None, Some(n)) => format!("- → {}", fmt(n)),
        (None, None) => "-".into(),
    }
}

/// The columns of the table: heading, figure, format, in points.
type Column = (&'static str, fn(&Figures) -> f64, fn(f64) -> String, bool);

/// The columns `compare` prints, the dashboard and the HTML report show.
pub const COLUMNS: [Column; 6] = [
    (
        "Requests",
        |f| f.requests as f64,
        |v| format!("{v:.0}"),
        false,
    ),
    ("Failure %", |f| f.failure_pct, |v| format!("{v:.2}"), true),
    ("p50 (ms)", |f| f.p50_ms, ms, false),
    ("p95 (ms)", |f| f.p95_ms, ms, false),
    ("p99 (ms)", |f| f.p99_ms, ms, false),
    ("RPS", |f| f.rps, |v| format!("{v:.2}"), false),
];

/// A row's cells, column by column.
pub fn cells(row: &Row) -> Vec<String> {
    COLUMNS
        .iter()
        .map(|(_, get, fmt, points)| {
            cell(
                row.base.as_ref().map(get),
                row.new.as_ref().map(get),
                *fmt,
                *points,
            )
        })
        .collect()
}

/// The comparison as `compare` prints it: who is compared, the table
/// (regressed rows marked `!`), the failed checks and the notes.
pub fn table(c: &Comparison) -> String {
    let side = |s: &Side| {
        format!(
            "{} ({}, started {}, {})",
            s.run_id,
            s.profile,
            super::sla::clock(s.started_at),
            humantime::format_duration(
                std::time::Duration::from_secs(s.duration_s.max(0.0) as u64)
            )
        )
    };
    let mut out = String::new();
    let _ = writeln!(out, "base {}", side(&c.base));
    let _ = writeln!(out, "new  {}", side(&c.new));
    let on: Vec<&str> = c.limits.on.iter().map(|m| m.as_str()).collect();
    let _ = writeln!(
        out,
        "regression: {} more than {}% worse, or the failure percentage up by more than {} {}{}",
        on.join("/"),
        pct(c.limits.max_regression * 100.0),
        pct(c.limits.max_failure_increase * 100.0),
        points(c.limits.max_failure_increase),
        if c.limits.gate {
            ""
        } else {
            " (marked only: give --max-regression or --max-failure-increase to gate)"
        }
    );
    let _ = writeln!(out);
    let all: Vec<Vec<String>> = c.rows.iter().map(cells).collect();
    let name_w = c
        .rows
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(10);
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|i| {
            all.iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(COLUMNS[i].0.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let _ = write!(out, "  {:<name_w$}", "Name");
    for (i, (h, ..)) in COLUMNS.iter().enumerate() {
        let _ = write!(out, "  {:>w$}", h, w = widths[i]);
    }
    let _ = writeln!(out);
    for (row, cells) in c.rows.iter().zip(&all) {
        let _ = write!(
            out,
            "{} {:<name_w$}",
            if row.regressed { "!" } else { " " },
            row.name
        );
        for (i, v) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(v.chars().count());
            let _ = write!(out, "  {}{v}", " ".repeat(pad));
        }
        let _ = writeln!(out);
    }
    let failed: Vec<&Check> = c.failed_checks().collect();
    let _ = writeln!(out);
    if failed.is_empty() {
        let _ = writeln!(out, "no regression ({} checks)", c.checks.len());
    } else {
        let _ = writeln!(
            out,
            "REGRESSED: {} of {} checks",
            failed.len(),
            c.checks.len()
        );
        for ch in failed {
            let _ = writeln!(out, "  {}", ch.message);
        }
    }
    for n in &c.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, reqs: u64, fails: u64, p95: f64, rps: f64) -> ReportEntry {
        ReportEntry {
            name: name.into(),
            num_requests: reqs,
            num_failures: fails,
            p50_ms: p95 / 2.0,
            p95_ms: p95,
            p99_ms: p95 * 1.5,
            avg_ms: p95 / 2.0,
            max_ms: p95 * 2.0,
            rps,
            ..Default::default()
        }
    }

    fn report(id: &str, entries: Vec<ReportEntry>) -> Report {
        let mut total = entry("Aggregated", 0, 0, 0.0, 0.0);
        for e in &entries {
            total.num_requests += e.num_requests;
            total.num_failures += e.num_failures;
            total.p95_ms = total.p95_ms.max(e.p95_ms);
            total.rps += e.rps;
        }
        Report {
            schema: Some(1),
            complete: true,
            run_id: id.into(),
            profile: "smoke".into(),
            entries,
            total,
            ..Default::default()
        }
    }

    #[test]
    fn a_run_against_itself_has_no_regression() {
        let a = report(
            "a",
            vec![
                entry("s3:GetObject", 100, 0, 20.0, 10.0),
                entry("s3:PutObject", 100, 1, 30.0, 10.0),
            ],
        );
        let c = compare(&a, "a", &a, "a", GateArgs::default().limits());
        assert!(!c.regressed && !c.failed(), "{}", table(&c));
        // p95 and failure_rate for each entry and Aggregated.
        assert_eq!(c.checks.len(), 6);
        assert!(table(&c).contains("no regression (6 checks)"));
    }

    #[test]
    fn slower_and_failing_entries_regress_and_a_gate_fails() {
        let a = report(
            "a",
            vec![
                entry("s3:GetObject", 100, 0, 20.0, 10.0),
                entry("s3:PutObject", 100, 0, 30.0, 10.0),
                entry("ec2:RunInstances", 10, 0, 300.0, 1.0),
            ],
        );
        let b = report(
            "b",
            vec![
                // 25 % slower: a regression at 10 %, not at 30 %.
                entry("s3:GetObject", 100, 0, 25.0, 8.0),
                // 1.5 points more failures.
                entry("s3:PutObject", 200, 3, 30.0, 10.0),
                entry("s3:HeadObject", 50, 0, 5.0, 5.0),
            ],
        );
        let marked = compare(&a, "a", &b, "b", GateArgs::default().limits());
        assert!(marked.regressed && !marked.failed(), "marking only");
        let gate = GateArgs {
            max_regression: Some(0.10),
            ..Default::default()
        };
        let c = compare(&a, "a", &b, "b", gate.limits());
        assert!(c.failed());
        let failed: Vec<&str> = c.failed_checks().map(|c| c.name.as_str()).collect();
        assert_eq!(
            failed,
            ["p95(s3:GetObject)", "failure_rate(s3:PutObject)"],
            "{}",
            table(&c)
        );
        // Entries with few requests are not judged: noise.
        let strict = GateArgs {
            max_regression: Some(0.10),
            min_requests: 101,
            ..Default::default()
        };
        let c = compare(&a, "a", &b, "b", strict.limits());
        let judged: Vec<&str> = c.checks.iter().map(|c| c.entry.as_str()).collect();
        assert_eq!(judged, ["Aggregated", "Aggregated"]);
        assert!(
            c.notes[0].contains("2 entries with fewer than 101 requests"),
            "{:?}",
            c.notes
        );
        let c = compare(&a, "a", &b, "b", gate.limits());
        // Entries of one run only are shown, never judged.
        let only: Vec<&str> = c
            .rows
            .iter()
            .filter(|r| r.base.is_none() || r.new.is_none())
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(only, ["ec2:RunInstances", "s3:HeadObject"]);
        let t = table(&c);
        assert!(t.contains("! s3:GetObject"), "{t}");
        assert!(t.contains("20.0 → 25.0 (+25%)"), "{t}");
        assert!(t.contains("- → 50 "), "{t}");
        assert!(t.contains("REGRESSED: 2 of"), "{t}");
        // At 30 % and 2 points, nothing regresses.
        let loose = GateArgs {
            max_regression: Some(0.30),
            max_failure_increase: Some(0.02),
            ..Default::default()
        };
        assert!(!compare(&a, "a", &b, "b", loose.limits()).regressed);
        // RPS judged: a drop of 20 % regresses.
        let rps = GateArgs {
            max_regression: Some(0.10),
            on: vec![Metric::Rps],
            max_failure_increase: Some(0.5),
            ..Default::default()
        };
        let c = compare(&a, "a", &b, "b", rps.limits());
        let failed: Vec<&str> = c.failed_checks().map(|c| c.name.as_str()).collect();
        assert_eq!(failed, ["rps(s3:GetObject)"]);
    }

    #[test]
    fn percentages_parse_as_flags_write_them() {
        assert_eq!(parse_pct("10%"), Ok(0.1));
        assert_eq!(parse_pct("0.5%"), Ok(0.005));
        assert_eq!(parse_pct("25"), Ok(0.25));
        for bad in ["", "%", "-1%", "ten", "inf%", "1e9%"] {
            assert!(parse_pct(bad).is_err(), "{bad}");
        }
    }
}
