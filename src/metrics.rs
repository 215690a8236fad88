//! Prometheus metrics (`/metrics` on the dashboard, `--metrics-bind` for
//! headless runs) through `metrics` and `metrics-exporter-prometheus`:
//! per-request histograms and counters fed by the live stats recorder, and
//! gauges (users, targets, resources, run info) set from the session at
//! scrape time. Labels stay bounded: ops and resource kinds are fixed sets,
//! error codes are capped, no ids, endpoints or credentials.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::engine::Engine;
use crate::resources::Kind;
use crate::stats::{Bytes, Failure, is_request_entry};

/// Bucket bounds (seconds) for API calls of a millisecond and provisioning of half an hour.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0,
];

/// Distinct error codes exported before the rest become `other`.
const MAX_CODES: usize = 100;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static CODES: Mutex<Option<HashSet<String>>> = Mutex::new(None);
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

/// Records one measurement (called by the live stats recorder). Labels are
/// the ops' static names: nothing is allocated per request.
pub fn record(name: &'static str, took: Duration, bytes: Bytes, fail: Option<&Failure>) {
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
    if !is_request_entry(name) {
        // A provisioning wait (`ec2:instance-running`): its own histogram.
        // Sub-measurements such as `s3:GetObject:ttfb` stay in the stats only.
        if let Some(wait) = name.strip_prefix("ec2:")
            && !wait.contains(':')
        {
            histogram!("cloudswarm_provisioning_seconds", "wait" => wait, "outcome" => outcome)
                .record(secs);
        }
        return;
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

/// Counts an op a budget cap kept from creating.
pub fn capped(name: &'static str) {
    if enabled() {
        counter!("cloudswarm_capped_total", "op" => name).increment(1);
    }
}

/// Sets the gauges from a run's engine (users, targets, resources, run info).
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
    let now = (engine.ctx.run_id.to_string(), profile.to_string());
    let mut run = RUN.lock().unwrap_or_else(|p| p.into_inner());
    if run.as_ref() != Some(&now) {
        if let Some((id, p)) = run.take() {
            gauge!("cloudswarm_run_info", "run_id" => id, "profile" => p).set(0.0);
        }
        *run = Some(now.clone());
    }
    gauge!("cloudswarm_run_info", "run_id" => now.0, "profile" => now.1).set(1.0);
}

/// The scrape body.
pub fn render() -> String {
    let h = install();
    h.run_upkeep();
    h.render()
}

/// The `/metrics` answer.
pub fn response() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(),
    )
        .into_response()
}

/// Serves `/metrics` alone on `listener` (headless runs), observing `engine`
/// at each scrape, for as long as the run lasts.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: std::sync::Arc<Engine>,
    profile: String,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (engine, profile) = (engine.clone(), profile.clone());
            async move {
                observe(&engine, &profile);
                response()
            }
        }),
    );
    // The dashboard's server: the same timeouts and connection cap.
    crate::web::server::serve(listener, app, std::future::pending()).await;
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
