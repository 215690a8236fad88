//! Outputs of a run: the Locust-style summary table, CSV files with Locust's
//! column names, the JSON report (`report.rs`), the HTML report
//! (`html.rs`), SLA checks (`sla.rs`), comparisons of two runs
//! (`compare.rs`), JUnit XML (`junit.rs`), the runs kept in the state
//! directory (`kept.rs`), and what a run leaves at its end (`finish.rs`).

pub mod compare;
pub mod finish;
pub mod html;
pub mod junit;
pub mod kept;
pub mod report;
pub mod sla;

pub use report::{RunFacts, generator_summary, json_report};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

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
    for (suffix, text) in csv_files(s, history, slas) {
        let path = csv_path(prefix, suffix);
        std::fs::write(&path, text).with_context(|| format!("cannot write {path}"))?;
    }
    Ok(())
}

/// The CSV files of a run, by suffix (`stats`, `failures`,
/// `stats_history`, and with SLAs `sla`), and their text.
pub fn csv_files(
    s: &Snapshot,
    history: &[HistoryRow],
    slas: &[sla::Verdict],
) -> Vec<(&'static str, String)> {
    let mut files = vec![
        ("stats", stats_csv(s)),
        ("failures", failures_csv(s)),
        ("stats_history", history_csv(history)),
    ];
    if !slas.is_empty() {
        files.push(("sla", sla_csv(slas)));
    }
    files
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

/// Writes the JSON report to a file.
pub fn write_json(path: &Path, report: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}
