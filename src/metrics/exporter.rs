//! The exporter: installs the Prometheus recorder, sets the gauges (users,
//! targets, arrival rates, resources, run info and activity, generator health) from a run's engine at
//! scrape time, and answers `/metrics` (on the dashboard, or alone for
//! `--metrics-bind`).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::sink;
use crate::engine::{Engine, RunState};
use crate::resources::Kind;

/// Bucket bounds (seconds) for API calls of a millisecond and provisioning of half an hour.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// The (run id, profile) whose info gauge is 1.
static RUN: Mutex<Option<(String, String)>> = Mutex::new(None);

/// Installs the exporter once (later calls return the same handle); drains
/// histograms every few seconds so memory stays flat between scrapes.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("non-empty buckets");
        let handle = match builder.install_recorder() {
            Ok(h) => h,
            // Another recorder is installed (not ours): keep a private one so
            // rendering still works.
            Err(_) => PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("non-empty buckets")
                .build_recorder()
                .handle(),
        };
        let h = handle.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    h.run_upkeep();
                }
            });
        }
        handle
    })
}

/// True once [`install`] ran: recording is skipped before that.
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// Sets the gauges from a run's engine (users, targets, arrival rates,
/// resources, run info, the generator's health: `cloudswarm_generator_saturated`
/// is 1 while the last second was generator-limited, for any reason).
pub fn observe(engine: &Engine, profile: &str) {
    if !enabled() {
        return;
    }
    let tracker = &engine.ctx.tracker;
    for (class, n) in engine.user_counts() {
        gauge!("cloudswarm_users", "class" => class).set(n as f64);
    }
    let (target, rate) = engine.target();
    gauge!("cloudswarm_target_users").set(target as f64);
    gauge!("cloudswarm_spawn_rate").set(rate);
    for (class, r) in engine.arrival_rates() {
        gauge!("cloudswarm_arrival_rate", "class" => class).set(r);
    }
    let counts = tracker.counts();
    for k in Kind::ALL {
        let c = counts.get(&k).copied().unwrap_or_default();
        let kind = k.as_str().replace(' ', "_");
        gauge!("cloudswarm_resources", "kind" => kind.clone(), "state" => "alive")
            .set(c.alive as f64);
        gauge!("cloudswarm_resources", "kind" => kind.clone(), "state" => "creating")
            .set(tracker.pending(k) as f64);
        counter!("cloudswarm_resources_created_total", "kind" => kind.clone()).absolute(c.created);
        counter!("cloudswarm_resources_deleted_total", "kind" => kind).absolute(c.deleted);
    }
    gauge!("cloudswarm_object_bytes").set(tracker.object_bytes() as f64);
    // The load generator's health over the last second of the history.
    let (limited, lag_ms) = engine
        .ctx
        .stats
        .lock()
        .history
        .last()
        .map_or((false, 0.0), |r| (r.generator_limited, r.runtime_lag_ms));
    gauge!("cloudswarm_generator_saturated").set(if limited { 1.0 } else { 0.0 });
    gauge!("cloudswarm_runtime_lag_seconds").set(lag_ms / 1000.0);
    let now = (engine.ctx.run_id.to_string(), profile.to_string());
    let mut run = RUN.lock().unwrap_or_else(|p| p.into_inner());
    if run.as_ref() != Some(&now) {
        if let Some((id, p)) = run.take() {
            sink::run_gauges(&id, &p, false, false);
        }
        *run = Some(now.clone());
    }
    let active = matches!(
        engine.state(),
        RunState::Hatching | RunState::Running | RunState::Stopping
    );
    sink::run_gauges(&now.0, &now.1, true, active);
}

/// The scrape body.
pub fn render() -> String {
    let h = install();
    h.run_upkeep();
    h.render()
}

/// The `/metrics` answer.
pub fn response() -> axum::response::Response {
    response_with(String::new())
}

/// The `/metrics` answer with `more` (exposition lines) after the recorder's.
pub fn response_with(more: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut body = render();
    body.push_str(&more);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What a master's workers measured, as exposition text made at scrape
/// time from the merged statistics (a master sends no requests itself):
/// the request, failure, throttle and byte counters and errors by code
/// exactly, and the request and provisioning histograms from the exact
/// histograms, bucket by bucket (outcome `all`: the merged figures do not
/// say which values failed). Nothing is recorded per reported value.
pub fn render_stats(data: &crate::stats::StatsData) -> String {
    use crate::ops::EntryKind;
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut counters: [(&str, Vec<(String, u64)>); 5] = [
        ("cloudswarm_requests_total", vec![]),
        ("cloudswarm_request_failures_total", vec![]),
        ("cloudswarm_throttled_total", vec![]),
        ("cloudswarm_bytes_sent_total", vec![]),
        ("cloudswarm_bytes_received_total", vec![]),
    ];
    let mut hists: Vec<(&str, String, &crate::stats::Entry)> = vec![];
    for (name, e) in &data.entries {
        match e.kind {
            EntryKind::Request => {
                let op = format!("op=\"{}\"", label(name));
                for (i, v) in [
                    e.num_requests,
                    e.num_failures,
                    e.num_throttled,
                    e.bytes_sent,
                    e.bytes_received,
                ]
                .into_iter()
                .enumerate()
                {
                    if v > 0 || i == 0 {
                        counters[i].1.push((op.clone(), v));
                    }
                }
                hists.push(("cloudswarm_request_duration_seconds", op, e));
            }
            EntryKind::Wait => {
                let wait = name.split_once(':').map_or(name.as_str(), |(_, w)| w);
                hists.push((
                    "cloudswarm_provisioning_seconds",
                    format!("wait=\"{}\"", label(wait)),
                    e,
                ));
            }
            EntryKind::Timing => {}
        }
    }
    for (family, rows) in &counters {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# TYPE {family} counter");
        for (labels, v) in rows {
            let _ = writeln!(out, "{family}{{{labels}}} {v}");
        }
    }
    let errors: Vec<_> = data.errors.values().take(1000).collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "# TYPE cloudswarm_errors_total counter");
        for e in errors {
            let code: String = e.code.chars().take(64).collect();
            let _ = writeln!(
                out,
                "cloudswarm_errors_total{{op=\"{}\",code=\"{}\"}} {}",
                label(&e.name),
                label(&code),
                e.count
            );
        }
    }
    let mut typed = std::collections::HashSet::new();
    for (family, labels, e) in hists {
        if typed.insert(family) {
            let _ = writeln!(out, "# TYPE {family} histogram");
        }
        for &le in BUCKETS {
            let n = e.hist.count_between(0, (le * 1e6) as u64);
            let _ = writeln!(
                out,
                "{family}_bucket{{{labels},outcome=\"all\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "{family}_bucket{{{labels},outcome=\"all\",le=\"+Inf\"}} {}",
            e.num_requests
        );
        let _ = writeln!(
            out,
            "{family}_sum{{{labels},outcome=\"all\"}} {}",
            e.total_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "{family}_count{{{labels},outcome=\"all\"}} {}",
            e.num_requests
        );
    }
    out
}

/// Serves `/metrics` alone on `listener` (headless runs), observing `engine`
/// at each scrape, for as long as the run lasts.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: std::sync::Arc<Engine>,
    profile: String,
) {
    serve_with(listener, move || {
        observe(&engine, &profile);
        String::new()
    })
    .await
}

/// Serves `/metrics` alone on `listener`, calling `observe` at each scrape
/// to set the gauges (a worker's engine changes from run to run; a master
/// has no engine) and append what it answers (a master's merged series).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    observe: impl Fn() -> String + Clone + Send + Sync + 'static,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let observe = observe.clone();
            async move {
                let more = observe();
                response_with(more)
            }
        }),
    );
    // The dashboard's server: the same timeouts and connection cap.
    crate::httpd::serve(listener, app, std::future::pending()).await;
}
