//! Outputs of a run: the Locust-style summary table, CSV files with Locust's
//! column names, the JSON report, and SLA checks.

pub mod sla;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::resources::{Kind, KindCounts};
use crate::stats::{EntrySummary, HistoryRow, PERCENTILE_LABELS, Snapshot};

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The end-of-run summary, as Locust prints it.
pub fn summary_table(s: &Snapshot) -> String {
    let w = s
        .entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(10)
        .max(24);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<w$} {:>9} {:>14} | {:>8} {:>8} {:>8} {:>8} | {:>8} {:>10} {:>9}",
        "Name", "# reqs", "# fails", "Avg", "Min", "Max", "Med", "req/s", "failures/s", "throttled"
    );
    let line = "-".repeat(w + 95);
    let _ = writeln!(out, "{line}");
    let row = |out: &mut String, e: &EntrySummary| {
        let fails = format!("{}({:.2}%)", e.num_failures, e.failure_ratio() * 100.0);
        let _ = writeln!(
            out,
            "{:<w$} {:>9} {:>14} | {:>8} {:>8} {:>8} {:>8} | {:>8.2} {:>10.2} {:>9}",
            e.name,
            e.num_requests,
            fails,
            fmt_ms(e.avg_ms),
            fmt_ms(e.min_ms),
            fmt_ms(e.max_ms),
            fmt_ms(e.median_ms),
            e.rps,
            e.fail_per_sec,
            e.num_throttled
        );
    };
    for e in &s.entries {
        row(&mut out, e);
    }
    let _ = writeln!(out, "{line}");
    row(&mut out, &s.total);
    let _ = writeln!(out);
    let _ = writeln!(out, "Response time percentiles (ms)");
    let _ = write!(out, "{:<w$} {:>9}", "Name", "# reqs");
    for l in PERCENTILE_LABELS {
        let _ = write!(out, " {l:>7}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{line}");
    let prow = |out: &mut String, e: &EntrySummary| {
        let _ = write!(out, "{:<w$} {:>9}", e.name, e.num_requests);
        for v in &e.percentiles_ms {
            let _ = write!(out, " {:>7}", fmt_ms(*v));
        }
        let _ = writeln!(out);
    };
    for e in &s.entries {
        prow(&mut out, e);
    }
    let _ = writeln!(out, "{line}");
    prow(&mut out, &s.total);
    if !s.errors.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Error report");
        let _ = writeln!(out, "{:>9}  {:<w$}  Error", "# occur.", "Name");
        let _ = writeln!(out, "{line}");
        for e in &s.errors {
            let _ = writeln!(
                out,
                "{:>9}  {:<w$}  {}{}: {}",
                e.count,
                e.name,
                e.code,
                if e.throttled { " (throttled)" } else { "" },
                e.message
            );
        }
    }
    if !s.capped.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Kept from creating by budget caps");
        for (name, n) in &s.capped {
            let _ = writeln!(out, "{n:>9}  {name}");
        }
    }
    arrivals_table(&mut out, s, w);
    out
}

/// The open classes' arrivals: task starts, arrivals dropped (no free
/// user), and how late the starts were against their schedule.
fn arrivals_table(out: &mut String, s: &Snapshot, w: usize) {
    let arrivals = s.arrivals();
    if arrivals.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Arrivals (open classes): task starts, dropped (no free user), start lateness (ms)"
    );
    let _ = writeln!(
        out,
        "{:<w$} {:>9} {:>9} | {:>8} {:>8} {:>8}",
        "Class", "# starts", "# dropped", "Med", "95%", "Max"
    );
    let _ = writeln!(out, "{}", "-".repeat(w + 49));
    for (class, started, dropped, e) in arrivals {
        let late = |q: f64| e.and_then(|e| e.percentile(q)).map_or("-".into(), fmt_ms);
        let _ = writeln!(
            out,
            "{class:<w$} {started:>9} {dropped:>9} | {:>8} {:>8} {:>8}",
            late(0.5),
            late(0.95),
            late(1.0)
        );
    }
}

/// Writes PREFIX_stats.csv, PREFIX_failures.csv, PREFIX_stats_history.csv
/// and, for a run with SLAs, PREFIX_sla.csv.
pub fn write_csv(
    prefix: &str,
    s: &Snapshot,
    history: &[HistoryRow],
    slas: &[sla::Verdict],
) -> Result<()> {
    let mut files = vec![
        ("stats", stats_csv(s)),
        ("failures", failures_csv(s)),
        ("stats_history", history_csv(history)),
    ];
    if !slas.is_empty() {
        files.push(("sla", sla_csv(slas)));
    }
    for (suffix, text) in files {
        let path = csv_path(prefix, suffix);
        std::fs::write(&path, text).with_context(|| format!("cannot write {path}"))?;
    }
    Ok(())
}

fn csv_path(prefix: &str, suffix: &str) -> String {
    format!("{prefix}_{suffix}.csv")
}

/// The files `--csv PREFIX` writes (`with_sla`: the run has SLAs).
pub fn csv_paths(prefix: &str, with_sla: bool) -> Vec<PathBuf> {
    ["stats", "failures", "stats_history", "sla"]
        .iter()
        .filter(|s| with_sla || **s != "sla")
        .map(|s| PathBuf::from(csv_path(prefix, s)))
        .collect()
}

/// The SLA verdicts (`_sla.csv`): each expression, whether it held, its
/// actual value, and when it first broke during the run.
pub fn sla_csv(slas: &[sla::Verdict]) -> String {
    let header = [
        "SLA",
        "OK",
        "Actual",
        "Window (s)",
        "First Breach At",
        "Breached Seconds",
    ]
    .map(String::from)
    .to_vec();
    let rows = slas.iter().map(|v| {
        vec![
            v.sla.clone(),
            v.held.to_string(),
            v.actual.clone(),
            v.window_s.map_or(String::new(), |w| w.to_string()),
            v.first_breach_at
                .map_or(String::new(), |t| format!("{t:.3}")),
            v.breached_seconds.to_string(),
        ]
    });
    to_csv(std::iter::once(header).chain(rows))
}

/// Checks before a run that `path` can be written (its folder exists and
/// takes the file), so a long run does not end with a report it cannot
/// save. A file that did not exist is removed again.
pub fn check_writable(path: &Path) -> Result<()> {
    let existed = path.exists();
    if path.is_dir() {
        bail!("{} is a directory", path.display());
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Rows to CSV text (writing to memory cannot fail).
fn to_csv<I, R>(rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.write_record(r).expect("CSV into memory");
    }
    String::from_utf8(w.into_inner().expect("CSV into memory")).expect("CSV of UTF-8 fields")
}

/// The statistics table (Locust's `_stats.csv`): one row per entry, then Aggregated.
pub fn stats_csv(s: &Snapshot) -> String {
    let mut header: Vec<String> = [
        "Type",
        "Name",
        "Request Count",
        "Failure Count",
        "Median Response Time",
        "Average Response Time",
        "Min Response Time",
        "Max Response Time",
        "Average Content Size",
        "Requests/s",
        "Failures/s",
    ]
    .map(String::from)
    .to_vec();
    header.extend(PERCENTILE_LABELS.iter().map(|l| l.to_string()));
    header.push("Throttled Count".into());
    // Arrivals dropped: on each open class's `arrival:<class>` row (its
    // Request Count is the task starts), all classes on Aggregated.
    header.push("Dropped Arrivals".into());
    let dropped_of = |name: &str| -> u64 {
        name.strip_prefix(crate::ops::ARRIVAL_PREFIX)
            .and_then(|c| s.dropped.get(c))
            .copied()
            .unwrap_or(0)
    };
    let record = |e: &EntrySummary, dropped: u64| {
        let mut rec = vec![
            e.kind.clone(),
            e.name.clone(),
            e.num_requests.to_string(),
            e.num_failures.to_string(),
            format!("{:.3}", e.median_ms),
            format!("{:.3}", e.avg_ms),
            format!("{:.3}", e.min_ms),
            format!("{:.3}", e.max_ms),
            format!("{:.1}", e.avg_content_size),
            format!("{:.3}", e.rps),
            format!("{:.3}", e.fail_per_sec),
        ];
        rec.extend(e.percentiles_ms.iter().map(|v| format!("{v:.3}")));
        rec.push(e.num_throttled.to_string());
        rec.push(dropped.to_string());
        rec
    };
    let rows = s
        .entries
        .iter()
        .map(|e| record(e, dropped_of(&e.name)))
        .chain(std::iter::once(record(&s.total, s.dropped.values().sum())));
    to_csv(std::iter::once(header).chain(rows))
}

/// Errors by entry and code (Locust's `_failures.csv`, plus code, throttled, first and last seen).
pub fn failures_csv(s: &Snapshot) -> String {
    let header = [
        "Method",
        "Name",
        "Error",
        "Occurrences",
        "Code",
        "Throttled",
        "First Seen",
        "Last Seen",
    ]
    .map(String::from)
    .to_vec();
    let rows = s.errors.iter().map(|e| {
        vec![
            e.name.split(':').next().unwrap_or("").to_string(),
            e.name.clone(),
            format!("{}: {}", e.code, e.message),
            e.count.to_string(),
            e.code.clone(),
            e.throttled.to_string(),
            format!("{:.3}", e.first_seen),
            format!("{:.3}", e.last_seen),
        ]
    });
    to_csv(std::iter::once(header).chain(rows))
}

/// The per-second history (Locust's `_stats_history.csv`, Aggregated rows).
pub fn history_csv(history: &[HistoryRow]) -> String {
    let mut header: Vec<String> = [
        "Timestamp",
        "User Count",
        "Type",
        "Name",
        "Requests/s",
        "Failures/s",
    ]
    .map(String::from)
    .to_vec();
    header.extend(PERCENTILE_LABELS.iter().map(|l| l.to_string()));
    header.extend(
        [
            "Total Request Count",
            "Total Failure Count",
            "Total Median Response Time",
            "Total Average Response Time",
            "Total Min Response Time",
            "Total Max Response Time",
            "Total Average Content Size",
            "Total Throttled Count",
            "Total Dropped Arrivals",
            // The load generator's own health over the second: whether it,
            // not the cloud, limited the figures, and why.
            "Generator Limited",
            "Limited By",
            "Runtime Lag (ms)",
        ]
        .map(String::from),
    );
    let rows = history.iter().map(|r| {
        let mut rec = vec![
            format!("{}", r.timestamp as u64),
            r.user_count.to_string(),
            String::new(),
            "Aggregated".to_string(),
            format!("{:.3}", r.current_rps),
            format!("{:.3}", r.current_fail_per_sec),
        ];
        rec.extend(r.percentiles_ms.iter().map(|v| format!("{v:.3}")));
        rec.extend([
            r.total_requests.to_string(),
            r.total_failures.to_string(),
            format!("{:.3}", r.total_median_ms),
            format!("{:.3}", r.total_avg_ms),
            format!("{:.3}", r.total_min_ms),
            format!("{:.3}", r.total_max_ms),
            format!("{:.1}", r.total_avg_content_size),
            r.total_throttled.to_string(),
            r.total_dropped.to_string(),
            u8::from(r.generator_limited).to_string(),
            r.limited_by().join("; "),
            format!("{:.1}", r.runtime_lag_ms),
        ]);
        rec
    });
    to_csv(std::iter::once(header).chain(rows))
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    name: &'a str,
    num_requests: u64,
    num_failures: u64,
    num_throttled: u64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    avg_ms: f64,
    min_ms: f64,
    rps: f64,
    bytes_sent: u64,
    bytes_received: u64,
    throughput_bps: f64,
}

impl<'a> From<&'a EntrySummary> for JsonEntry<'a> {
    fn from(e: &'a EntrySummary) -> Self {
        JsonEntry {
            name: &e.name,
            num_requests: e.num_requests,
            num_failures: e.num_failures,
            num_throttled: e.num_throttled,
            p50_ms: e.median_ms,
            p95_ms: e.percentile(0.95).unwrap_or(0.0),
            p99_ms: e.percentile(0.99).unwrap_or(0.0),
            max_ms: e.max_ms,
            avg_ms: e.avg_ms,
            min_ms: e.min_ms,
            rps: e.rps,
            bytes_sent: e.bytes_sent,
            bytes_received: e.bytes_received,
            throughput_bps: e.throughput_bps,
        }
    }
}

/// What the JSON report needs beyond the stats.
pub struct RunFacts<'a> {
    pub run_id: &'a str,
    pub profile: &'a str,
    pub started_at: f64,
    pub duration_s: f64,
    pub users: u64,
    pub resources: &'a BTreeMap<Kind, KindCounts>,
    /// What a listing of the cloud found left after clean-up; None (`null`
    /// in the report) when nobody knows: the listing failed or clean-up was
    /// interrupted. With `--keep-resources`, what the run holds on purpose.
    pub leaked: Option<u64>,
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

/// The JSON report of a run: its figures, what the load generator limited
/// (`history`), and the SLA verdicts.
pub fn json_report(
    f: &RunFacts<'_>,
    s: &Snapshot,
    history: &[HistoryRow],
    slas: &[sla::Verdict],
) -> serde_json::Value {
    let created: u64 = f.resources.values().map(|c| c.created).sum();
    let deleted: u64 = f.resources.values().map(|c| c.deleted).sum();
    // What a listing of the cloud found; null when it could not list (or
    // never did): unknown, not a guess.
    let leaked = f.leaked;
    let by_kind: BTreeMap<&str, &KindCounts> =
        f.resources.iter().map(|(k, v)| (k.as_str(), v)).collect();
    serde_json::json!({
        "run_id": f.run_id,
        "profile": f.profile,
        "started_at": f.started_at,
        "duration_s": f.duration_s,
        "users": f.users,
        "entries": s.entries.iter().map(JsonEntry::from).collect::<Vec<_>>(),
        "total": JsonEntry::from(&s.total),
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
    })
}

/// Writes the JSON report to a file.
pub fn write_json(path: &Path, report: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}
