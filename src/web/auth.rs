//! The access token: checked on every request when set (header
//! `Authorization: Bearer TOKEN`, or the cookie the login form sets), and a
//! same-origin check on requests that change something.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::App;

const COOKIE: &str = "cloudswarm_token";

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries, from the header or the cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// True when a state-changing request comes from another site (its Origin
/// names a host other than the one it was sent to).
fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    origin == "null" || origin_host != host
}

/// Middleware: the token check and the same-origin check.
pub async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::GET && cross_site(req.headers()) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(
                serde_json::json!({"success": false, "message": "cross-site request refused"}),
            ),
        )
            .into_response();
    }
    let Some(token) = app.token.as_deref() else {
        return next.run(req).await;
    };
    if req.uri().path() == "/login" {
        return next.run(req).await;
    }
    if presented(req.headers()).is_some_and(|t| same(&t, token)) {
        return next.run(req).await;
    }
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if req.method() == axum::http::Method::GET && wants_html {
        return Redirect::to("/login").into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({
            "success": false,
            "message": "access token missing or wrong: log in, or send `Authorization: Bearer TOKEN`"
        })),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    error: Option<&'static str>,
}

pub async fn login_page() -> Response {
    super::pages::render(&Login { error: None })
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// Sets the token cookie when the token is right.
pub async fn login(State(app): State<Arc<App>>, Form(f): Form<LoginForm>) -> Response {
    let Some(token) = app.token.as_deref() else {
        return Redirect::to("/").into_response();
    };
    if !same(f.token.trim(), token) {
        let page = Login {
            error: Some("That token is not right."),
        };
        return (
            StatusCode::UNAUTHORIZED,
            Html(page.render().unwrap_or_default()),
        )
            .into_response();
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_header_or_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; cloudswarm_token=s3cret".parse().unwrap(),
        );
        assert_eq!(presented(&h).as_deref(), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("other"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "abcd"));
    }

    #[test]
    fn cross_site_posts_are_spotted() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8089".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8089".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&h));
    }
}
