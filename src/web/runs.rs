//! The kept runs on the dashboard (the Runs tab): `GET /runs.json` (the
//! list `cloudswarm runs` prints), `GET /runs/{id}/{file}` (a run's report
//! and downloads), `GET /compare.json?base=ID&new=ID` (the comparison and
//! both runs' chart points). They read the state directory on each call,
//! so runs kept before a restart of `serve`, or by headless runs beside
//! it, are there.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::App;
use crate::naming::RunId;
use crate::output::compare::{self, GateArgs, Metric};
use crate::output::kept;

fn bad(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"success": false, "message": message.into()})),
    )
        .into_response()
}

/// `GET /runs.json`: the kept runs, newest first, and the current run's id.
pub async fn list(State(app): State<Arc<App>>) -> Response {
    let dir = app.limits.state_dir();
    let runs = tokio::task::spawn_blocking(move || kept::list(&dir))
        .await
        .unwrap_or_default();
    let current = app.current().map(|l| l.session.run_id.to_string());
    Json(json!({ "runs": runs, "current": current })).into_response()
}

#[derive(Deserialize)]
pub struct FileQuery {
    download: Option<String>,
}

/// `GET /runs/{id}/{file}`: one of a kept run's files ([`kept::FILES`]);
/// the HTML report opens in the browser unless `?download=1`, the rest
/// download as `cloudswarm_<id>_<file>`.
pub async fn file(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    Query(q): Query<FileQuery>,
) -> Response {
    let Ok(id) = RunId::parse(&id) else {
        return bad(StatusCode::NOT_FOUND, format!("`{id}` is not a run id"));
    };
    let Some((name, mime)) = kept::FILES.iter().find(|(f, _)| *f == name) else {
        return bad(StatusCode::NOT_FOUND, format!("a run has no file `{name}`"));
    };
    let path = id.dir(&app.limits.state_dir()).join(name);
    let Ok(body) = tokio::fs::read(&path).await else {
        return bad(
            StatusCode::NOT_FOUND,
            format!("run {id} has no {name} (`cloudswarm runs` lists what is kept)"),
        );
    };
    let inline = *name == kept::HTML && q.download.is_none();
    let mut resp = ([(header::CONTENT_TYPE, *mime)], body).into_response();
    if !inline {
        let v = format!("attachment; filename=\"cloudswarm_{id}_{name}\"");
        if let Ok(v) = v.parse() {
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    resp
}

#[derive(Deserialize)]
pub struct CompareQuery {
    base: String,
    new: String,
    max_regression: Option<String>,
    on: Option<String>,
    max_failure_increase: Option<String>,
    min_requests: Option<u64>,
}

/// The limits a query gives (`max_regression=10%`, `on=p95,p99`...).
fn limits(q: &CompareQuery) -> Result<compare::Limits, String> {
    let pct = |v: &Option<String>| v.as_deref().map(compare::parse_pct).transpose();
    let on = match &q.on {
        None => vec![],
        Some(s) => s
            .split(',')
            .map(|m| {
                <Metric as clap::ValueEnum>::from_str(m.trim(), true)
                    .map_err(|_| format!("on: `{m}` is not p50, p95, p99, avg, max or rps"))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(GateArgs {
        max_regression: pct(&q.max_regression).map_err(|e| format!("max_regression: {e}"))?,
        on,
        max_failure_increase: pct(&q.max_failure_increase)
            .map_err(|e| format!("max_failure_increase: {e}"))?,
        min_requests: q.min_requests.unwrap_or(compare::DEFAULT_MIN_REQUESTS),
    }
    .limits())
}

/// `GET /compare.json?base=ID&new=ID`: the comparison (as `compare
/// --json` writes it), its table as text, and each run's chart points
/// with its start (the page overlays them on seconds since start).
pub async fn compare_runs(State(app): State<Arc<App>>, Query(q): Query<CompareQuery>) -> Response {
    let limits = match limits(&q) {
        Ok(l) => l,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let dir = app.limits.state_dir();
    let mut sides = Vec::new();
    for (which, id) in [("base", &q.base), ("new", &q.new)] {
        // Run ids only: the dashboard reads no other path.
        if RunId::parse(id).is_err() {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("{which}: `{id}` is not a run id"),
            );
        }
        match kept::resolve(&dir, id) {
            Ok(r) => sides.push(r),
            Err(e) => return bad(StatusCode::NOT_FOUND, format!("{which}: {e}")),
        }
    }
    let (base, new) = (&sides[0], &sides[1]);
    let c = compare::compare(base, &q.base, new, &q.new, limits);
    let side = |r: &crate::output::report::Report, label: &str| json!({"label": format!("{label} {}", r.run_id), "start": r.started_at, "history": r.history});
    Json(json!({
        "comparison": c,
        "headings": compare::COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>(),
        "cells": c.rows.iter().map(compare::cells).collect::<Vec<_>>(),
        "table": compare::table(&c),
        "base": side(base, "base"),
        "new": side(new, "new"),
    }))
    .into_response()
}
