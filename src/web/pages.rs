//! The HTML pages: the dashboard (filled in and kept live by `static/app.js`)
//! and the self-contained report (styles, data and charts inline).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::App;
use super::api::history_point;
use crate::output::sla;

/// Renders a template, or a plain 500 naming the problem.
pub fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("template error: {e}"),
        )
            .into_response(),
    }
}

/// A profile the form offers, with its SLAs (one per line) to prefill.
struct ProfileOption {
    name: String,
    slas: String,
}

#[derive(Template)]
#[template(path = "index.html")]
struct Index<'a> {
    profiles: Vec<ProfileOption>,
    ec2_endpoint: &'a str,
    s3_endpoint: &'a str,
    region: &'a str,
    version: &'a str,
    max_users: u64,
}

/// `GET /`
pub async fn index(State(app): State<Arc<App>>) -> Response {
    let info = &app.clients.info;
    let profiles = app
        .profiles()
        .into_iter()
        .map(|name| ProfileOption {
            slas: app.profile_slas(&name).join("\n"),
            name,
        })
        .collect();
    render(&Index {
        profiles,
        ec2_endpoint: &info.ec2_endpoint,
        s3_endpoint: &info.s3_endpoint,
        region: &info.region,
        version: env!("CARGO_PKG_VERSION"),
        max_users: crate::engine::MAX_USERS,
    })
}

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
    kind: &'static str,
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

/// Most limited periods the report lists.
const MAX_LIMITED_ROWS: usize = 50;

/// Groups the generator-limited seconds of `history` into periods.
fn limited_periods(history: &[crate::stats::HistoryRow]) -> Vec<LimitedRow> {
    let mut out: Vec<(f64, f64, u64, bool, u64, f64)> = Vec::new();
    for r in history.iter().filter(|r| r.generator_limited) {
        match out.last_mut() {
            Some(p) if r.timestamp - p.1 <= 1.5 => {
                p.1 = r.timestamp;
                p.2 += 1;
                p.3 |= r.saturated;
                p.4 += r.dropped;
                p.5 = p.5.max(r.runtime_lag_ms);
            }
            _ => out.push((
                r.timestamp,
                r.timestamp,
                1,
                r.saturated,
                r.dropped,
                r.runtime_lag_ms,
            )),
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
                from: sla::clock(from),
                to: sla::clock(to),
                seconds,
                why: why.join(", "),
            }
        })
        .collect()
}

#[derive(Template)]
#[template(path = "report.html")]
struct Report {
    run_id: String,
    profile: String,
    started: String,
    duration: String,
    target: String,
    peak_users: u64,
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

#[derive(Deserialize)]
pub struct ReportQuery {
    download: Option<String>,
}

/// `GET /report`: one HTML file that opens offline. Long on purpose: it
/// fills the report template's fields one by one.
pub async fn report(State(app): State<Arc<App>>, Query(q): Query<ReportQuery>) -> Response {
    let Some((live, snap, history)) = app.snapshot() else {
        return (StatusCode::NOT_FOUND, "no run yet: start a swarm first").into_response();
    };
    let read = |f: &str| std::fs::read_to_string(app.static_dir.join(f));
    let (Ok(style), Ok(charts_js)) = (read("style.css"), read("charts.js")) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cannot read style.css and charts.js in {}",
                app.static_dir.display()
            ),
        )
            .into_response();
    };
    let s = &live.session;
    let row = |e: &crate::stats::EntrySummary| Row {
        name: e.name.clone(),
        reqs: e.num_requests,
        fails: e.num_failures,
        throttled: e.num_throttled,
        median: ms(e.median_ms),
        p95: ms(e.percentile(0.95).unwrap_or(0.0)),
        p99: ms(e.percentile(0.99).unwrap_or(0.0)),
        p999: ms(e.percentile(0.999).unwrap_or(0.0)),
        avg: ms(e.avg_ms),
        min: ms(e.min_ms),
        max: ms(e.max_ms),
        size: format!("{:.0}", e.avg_content_size),
        rps: format!("{:.2}", e.rps),
    };
    let mut rows: Vec<Row> = snap.entries.iter().map(row).collect();
    rows.push(row(&snap.total));
    let arrivals = snap
        .arrivals()
        .into_iter()
        .map(|(class, starts, dropped, e)| {
            let late = |q: f64| e.and_then(|e| e.percentile(q)).map_or("-".into(), ms);
            ArrivalRow {
                class,
                starts,
                dropped,
                late_median: late(0.5),
                late_p95: late(0.95),
                late_max: late(1.0),
            }
        })
        .collect();
    let ended = live
        .ended_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or(snap.now);
    let info = &app.clients.info;
    let leaked = match live
        .cleanup
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .outcome
        .as_ref()
    {
        Some(o) => match o.leaked {
            Some(0) => "nothing left in the cloud".to_string(),
            Some(n) => format!("{n} resources still in the cloud"),
            None => "the cloud could not be listed".to_string(),
        },
        None => "clean-up has not run yet".to_string(),
    };
    let slas = live
        .monitor
        .verdicts(&snap)
        .into_iter()
        .map(|v| SlaRow {
            first_breach: v.first_breach_at.map_or("never".into(), sla::clock),
            breached_seconds: v.breached_seconds,
            sla: v.sla,
            held: v.held,
            actual: v.actual,
        })
        .collect();
    let aborted = live
        .aborted_by
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map_or(String::new(), |b| {
            format!(
                "{} at {}",
                b.describe(),
                sla::clock(b.first_breach_at.unwrap_or(snap.now))
            )
        });
    let mut limited = limited_periods(&history);
    let limited_count = history.iter().filter(|r| r.generator_limited).count();
    let limited_summary = if limited_count == 0 {
        String::new()
    } else {
        format!("{limited_count} of {} seconds", history.len())
    };
    let limited_more = limited.len().saturating_sub(MAX_LIMITED_ROWS);
    limited.truncate(MAX_LIMITED_ROWS);
    let points: Vec<serde_json::Value> = history.iter().map(history_point).collect();
    let data = serde_json::json!({ "history": points }).to_string();
    let page = Report {
        run_id: s.run_id.to_string(),
        profile: live.profile.clone(),
        started: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(s.started_at),
        )
        .to_string(),
        duration: humantime::format_duration(std::time::Duration::from_secs(
            (ended - s.started_at).max(0.0) as u64,
        ))
        .to_string(),
        target: format!(
            "EC2 {} · S3 {} · region {}",
            info.ec2_endpoint, info.s3_endpoint, info.region
        ),
        peak_users: live.peak_users(),
        rows,
        arrivals,
        errors: snap
            .errors
            .iter()
            .map(|e| ErrRow {
                name: e.name.clone(),
                code: e.code.clone(),
                message: e.message.clone(),
                count: e.count,
            })
            .collect(),
        resources: live
            .resources()
            .into_iter()
            .map(|(k, c)| ResRow {
                kind: k.as_str(),
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
        // Inline text must not close its own element.
        style: style.replace("</", "<\\/"),
        charts_js: charts_js.replace("</", "<\\/"),
        data_json: data.replace("</", "<\\/"),
    };
    let mut resp = render(&page);
    if q.download.is_some() {
        let v = format!(
            "attachment; filename=\"cloudswarm_{}_report.html\"",
            s.run_id
        );
        if let Ok(v) = v.parse() {
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    resp
}
