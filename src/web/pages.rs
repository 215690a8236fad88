//! The HTML pages: the dashboard (filled in and kept live by `static/app.js`)
//! and the self-contained report (`output::html`: styles, data and charts
//! inline).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::App;

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

#[derive(Deserialize)]
pub struct ReportQuery {
    download: Option<String>,
}

/// `GET /report`: one HTML file that opens offline (`output::html`).
pub async fn report(State(app): State<Arc<App>>, Query(q): Query<ReportQuery>) -> Response {
    let Some(v) = app.report_json() else {
        return (StatusCode::NOT_FOUND, "no run yet: start a swarm first").into_response();
    };
    let html = match crate::output::html::render_value(&v, None) {
        Ok(h) => h,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let mut resp = Html(html).into_response();
    if q.download.is_some() {
        let v = format!(
            "attachment; filename=\"cloudswarm_{}_report.html\"",
            v["run_id"].as_str().unwrap_or("run")
        );
        if let Ok(v) = v.parse() {
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    resp
}
