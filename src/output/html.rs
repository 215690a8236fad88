//! The self-contained HTML report (`templates/report.html`): styles, data
//! and charts inline, so the one file opens offline. Rendered from a JSON
//! report (schema 1) by the dashboard's `/report`, `run --html` and every
//! kept run; with a baseline, the comparison table and the two runs'
//! charts on one time axis (seconds since start).

use askama::Template;

use super::compare::{self, Comparison};
use super::report::{Point, Report, ReportEntry};
use super::sla::clock;

/// The page's styles and charts, compiled in: the report needs no
/// `static/` folder (a headless run may have none).
const STYLE: &str = include_str!("../../static/style.css");
const CHARTS_JS: &str = include_str!("../../static/charts.js");

/// One statistics row of the report, formatted.
struct Row {
    name: String,
    reqs: u64,
    fails: u64,
    throttled: u64,
    median: String,
    p95: String,
    p99: String,
    p999: String,
    avg: String,
    min: String,
    max: String,
    size: String,
    rps: String,
}

/// One open class of the report: task starts, arrivals dropped, lateness.
struct ArrivalRow {
    class: String,
    starts: u64,
    dropped: u64,
    late_median: String,
    late_p95: String,
    late_max: String,
}

struct ErrRow {
    name: String,
    code: String,
    message: String,
    count: u64,
}

struct ResRow {
    kind: String,
    created: u64,
    alive: u64,
    deleted: u64,
}

/// One SLA of the report: its verdict, and when it first broke.
struct SlaRow {
    sla: String,
    held: bool,
    actual: String,
    first_breach: String,
    breached_seconds: u64,
}

/// Consecutive seconds the load generator limited, and why.
struct LimitedRow {
    from: String,
    to: String,
    seconds: u64,
    why: String,
}

/// One entry of the comparison: its cells, and whether it regressed.
struct CompareRow {
    name: String,
    cells: Vec<String>,
    regressed: bool,
}

/// The comparison with a baseline, formatted.
struct CompareView {
    base: String,
    limits: String,
    gate: bool,
    headings: Vec<&'static str>,
    rows: Vec<CompareRow>,
    failed: Vec<String>,
    checks: usize,
    notes: Vec<String>,
}

/// Most limited periods the report lists.
const MAX_LIMITED_ROWS: usize = 50;

/// One step of a capacity search, formatted.
struct CapacityRow {
    step: u64,
    rate: String,
    achieved: String,
    requests: u64,
    fail_pct: String,
    throttle_pct: String,
    p95: String,
    dropped: u64,
    limited: u64,
    held: bool,
    verdict: String,
}

/// A capacity search (`--find-max`): its answer and steps.
struct CapacityView {
    summary: String,
    rows: Vec<CapacityRow>,
}

fn capacity_view(v: &serde_json::Value) -> CapacityView {
    let f = |s: &serde_json::Value, k: &str| s[k].as_f64().unwrap_or(0.0);
    let rate = |r: f64| crate::units::format_rate(r.max(1e-9));
    let rows = v["steps"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| CapacityRow {
            step: s["step"].as_u64().unwrap_or(0),
            rate: rate(f(s, "rate")),
            achieved: rate(f(s, "achieved_rate")),
            requests: s["requests"].as_u64().unwrap_or(0),
            fail_pct: format!("{:.2}", f(s, "failure_ratio") * 100.0),
            throttle_pct: format!("{:.2}", f(s, "throttle_ratio") * 100.0),
            p95: format!("{:.1}", f(s, "p95_ms")),
            dropped: s["dropped"].as_u64().unwrap_or(0),
            limited: s["limited_seconds"].as_u64().unwrap_or(0),
            held: s["held"].as_bool().unwrap_or(false),
            verdict: s["broke"]
                .as_str()
                .map_or("held".to_string(), |w| format!("broke: {w}")),
        })
        .collect();
    let max = v["max_rate"]
        .as_f64()
        .map_or("no step held".to_string(), |r| {
            format!("the highest arrival rate that held: {}", rate(r))
        });
    CapacityView {
        summary: format!("{max}; {}", v["reason"].as_str().unwrap_or("")),
        rows,
    }
}

#[derive(Template)]
#[template(path = "report.html")]
struct Page {
    run_id: String,
    profile: String,
    started: String,
    duration: String,
    target: String,
    peak_users: u64,
    version: String,
    rows: Vec<Row>,
    arrivals: Vec<ArrivalRow>,
    errors: Vec<ErrRow>,
    resources: Vec<ResRow>,
    leaked: String,
    slas: Vec<SlaRow>,
    /// The SLA breach that stopped the run (empty: none).
    aborted: String,
    /// "N of M seconds", or empty when the generator never limited.
    limited_summary: String,
    limited: Vec<LimitedRow>,
    limited_more: usize,
    comparison: Option<CompareView>,
    capacity: Option<CapacityView>,
    style: String,
    charts_js: String,
    data_json: String,
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn row(e: &ReportEntry) -> Row {
    Row {
        name: e.name.clone(),
        reqs: e.num_requests,
        fails: e.num_failures,
        throttled: e.num_throttled,
        median: ms(e.p50_ms),
        p95: ms(e.p95_ms),
        p99: ms(e.p99_ms),
        p999: ms(e.p999_ms),
        avg: ms(e.avg_ms),
        min: ms(e.min_ms),
        max: ms(e.max_ms),
        size: format!("{:.0}", e.avg_content_size),
        rps: format!("{:.2}", e.rps),
    }
}

/// Groups the generator-limited seconds of `history` into periods.
fn limited_periods(history: &[Point]) -> Vec<LimitedRow> {
    let mut out: Vec<(f64, f64, u64, bool, u64, f64)> = Vec::new();
    for r in history.iter().filter(|r| r.limited.is_some()) {
        let lag = r.lag_ms.unwrap_or(0.0);
        match out.last_mut() {
            Some(p) if r.t - p.1 <= 1.5 => {
                p.1 = r.t;
                p.2 += 1;
                p.3 |= r.saturated;
                p.4 += r.dropped;
                p.5 = p.5.max(lag);
            }
            _ => out.push((r.t, r.t, 1, r.saturated, r.dropped, lag)),
        }
    }
    out.into_iter()
        .map(|(from, to, seconds, saturated, dropped, lag)| {
            let mut why = Vec::new();
            if saturated {
                why.push("in-flight slots full".to_string());
            }
            if dropped > 0 {
                why.push(format!("{dropped} arrivals dropped"));
            }
            if lag > crate::stats::LAG_LIMIT_MS {
                why.push(format!("runtime lag up to {lag:.0} ms"));
            }
            LimitedRow {
                from: clock(from),
                to: clock(to),
                seconds,
                why: why.join(", "),
            }
        })
        .collect()
}

fn compare_view(c: &Comparison) -> CompareView {
    let on: Vec<&str> = c.limits.on.iter().map(|m| m.as_str()).collect();
    CompareView {
        base: format!(
            "run {} ({}, started {})",
            c.base.run_id,
            c.base.profile,
            clock(c.base.started_at)
        ),
        limits: format!(
            "{} more than {}% worse, or the failure percentage up by more than {} {}",
            on.join("/"),
            (c.limits.max_regression * 1e6).round() / 1e4,
            (c.limits.max_failure_increase * 1e6).round() / 1e4,
            compare::points(c.limits.max_failure_increase)
        ),
        gate: c.limits.gate,
        headings: compare::COLUMNS.iter().map(|c| c.0).collect(),
        rows: c
            .rows
            .iter()
            .map(|r| CompareRow {
                name: r.name.clone(),
                cells: compare::cells(r),
                regressed: r.regressed,
            })
            .collect(),
        failed: c.failed_checks().map(|ch| ch.message.clone()).collect(),
        checks: c.checks.len(),
        notes: c.notes.clone(),
    }
}

/// Inline text must not close its own element.
fn inline(s: &str) -> String {
    s.replace("</", "<\\/")
}

/// The report's page. `baseline`: the run the report was compared with,
/// whose charts are drawn under this run's on a common time axis. Long on
/// purpose: it fills the template's fields one by one.
pub fn render(r: &Report, baseline: Option<&Report>) -> Result<String, String> {
    let mut rows: Vec<Row> = r.entries.iter().map(row).collect();
    rows.push(row(&r.total));
    let arrivals = r
        .arrivals()
        .into_iter()
        .map(|(class, starts, dropped, e)| {
            let late = |f: fn(&ReportEntry) -> f64| e.map_or("-".into(), |e| ms(f(e)));
            ArrivalRow {
                class,
                starts,
                dropped,
                late_median: late(|e| e.p50_ms),
                late_p95: late(|e| e.p95_ms),
                late_max: late(|e| e.max_ms),
            }
        })
        .collect();
    let leaked = match r.resources.leaked {
        Some(0) => "nothing left in the cloud".to_string(),
        Some(n) => format!("{n} resources still in the cloud"),
        None if r.complete => {
            "unknown (the cloud could not be listed, or clean-up was cut short)".to_string()
        }
        None => "clean-up has not run yet".to_string(),
    };
    let slas = r
        .sla
        .iter()
        .map(|v| SlaRow {
            first_breach: v.first_breach_at.map_or("never".into(), clock),
            breached_seconds: v.breached_seconds,
            sla: v.sla.clone(),
            held: v.held,
            actual: v.actual.clone(),
        })
        .collect();
    let aborted = r.aborted_by_sla.as_ref().map_or(String::new(), |b| {
        format!(
            "{} at {}",
            b.describe(),
            clock(b.first_breach_at.unwrap_or(r.started_at + r.duration_s))
        )
    });
    let mut limited = limited_periods(&r.history);
    let limited_count = r.history.iter().filter(|p| p.limited.is_some()).count();
    let limited_summary = if limited_count == 0 {
        String::new()
    } else {
        format!("{limited_count} of {} seconds", r.history.len())
    };
    let limited_more = limited.len().saturating_sub(MAX_LIMITED_ROWS);
    limited.truncate(MAX_LIMITED_ROWS);
    // The charts: this run's points; with a baseline, both runs' points
    // and their starts (the overlay's axis is seconds since start).
    let mut data = serde_json::json!({ "history": r.history });
    if let Some(b) = baseline {
        data["compare"] = serde_json::json!({
            "base": {"label": format!("base {}", b.run_id), "start": b.started_at, "history": b.history},
            "new": {"label": format!("this run {}", r.run_id), "start": r.started_at, "history": r.history},
        });
    }
    let page = Page {
        run_id: r.run_id.clone(),
        profile: r.profile.clone(),
        started: clock(r.started_at),
        duration: humantime::format_duration(std::time::Duration::from_secs(
            r.duration_s.max(0.0) as u64
        ))
        .to_string(),
        target: format!(
            "EC2 {} · S3 {} · region {}",
            r.target.ec2_endpoint, r.target.s3_endpoint, r.target.region
        ),
        peak_users: r.users,
        version: r.cloudswarm_version.clone(),
        rows,
        arrivals,
        errors: r
            .errors
            .iter()
            .map(|e| ErrRow {
                name: e.name.clone(),
                code: e.code.clone(),
                message: e.message.clone(),
                count: e.count,
            })
            .collect(),
        resources: r
            .resources
            .by_kind
            .iter()
            .map(|(k, c)| ResRow {
                kind: k.clone(),
                created: c.created,
                alive: c.alive,
                deleted: c.deleted,
            })
            .collect(),
        leaked,
        slas,
        aborted,
        limited_summary,
        limited,
        limited_more,
        comparison: r.comparison.as_ref().map(compare_view),
        capacity: r.capacity.as_ref().map(capacity_view),
        style: inline(STYLE),
        charts_js: inline(CHARTS_JS),
        data_json: inline(&data.to_string()),
    };
    page.render().map_err(|e| format!("template error: {e}"))
}

/// Renders a JSON report value (as `json_report` builds it).
pub fn render_value(v: &serde_json::Value, baseline: Option<&Report>) -> Result<String, String> {
    let r = Report::from_value(v.clone())?;
    render(&r, baseline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::compare::{GateArgs, compare};
    use crate::output::report::ReportEntry;
    use crate::output::sla::Verdict;

    fn report(id: &str, p95: f64) -> Report {
        let e = ReportEntry {
            name: "s3:GetObject".into(),
            num_requests: 10,
            p95_ms: p95,
            ..Default::default()
        };
        Report {
            schema: Some(1),
            complete: true,
            run_id: id.into(),
            profile: "smoke".into(),
            entries: vec![e.clone()],
            total: ReportEntry {
                name: "Aggregated".into(),
                ..e
            },
            history: vec![Point {
                t: 1.0,
                rps: 5.0,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_page_is_self_contained_with_slas_and_the_comparison() {
        let base = report("base1", 10.0);
        let mut r = report("new1", 30.0);
        r.sla = vec![Verdict {
            sla: "p95<20ms".into(),
            held: false,
            actual: "30.0ms".into(),
            window_s: None,
            first_breach_at: Some(5.0),
            breached_seconds: 4,
        }];
        let gate = GateArgs {
            max_regression: Some(0.1),
            ..Default::default()
        };
        r.comparison = Some(compare(&base, "base1", &r, "new1", gate.limits()));
        let html = render(&r, Some(&base)).unwrap();
        for must in [
            "<style>",
            "CloudswarmCharts.drawAll",
            "id=\"slas\"",
            "<td class=\"bad\">FAILED</td>",
            "id=\"comparison\"",
            "p95(s3:GetObject): 10.0 ms → 30.0 ms",
            "chart-compare-p95",
            "\"label\":\"base base1\"",
        ] {
            assert!(html.contains(must), "lacks {must}:\n{html}");
        }
        for never in ["src=\"http", "href=\"http", "href=\"/static", "<link"] {
            assert!(!html.contains(never), "has {never}");
        }
        // No baseline: no comparison.
        let plain = render(&report("x", 1.0), None).unwrap();
        assert!(!plain.contains("id=\"comparison\""));
    }
}
