//! Who may use the dashboard: the access token when set (header
//! `Authorization: Bearer TOKEN`, or the session cookie the login form
//! sets), loopback host names only when not (against DNS rebinding), and no
//! cross-site requests that change something; pages may not be framed.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::App;

/// Compares in time that depends only on the presented string's length.
fn same(presented: &str, secret: &str) -> bool {
    let (a, b) = (presented.as_bytes(), secret.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0
}

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// A cookie's value.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// True when a request that changes something comes from another site:
/// the browser says so (`Sec-Fetch-Site`), or its Origin is not the host it
/// was sent to.
fn cross_site(headers: &HeaderMap) -> bool {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && matches!(site, "cross-site" | "same-site")
    {
        return true;
    }
    let Some(origin) = get(header::ORIGIN) else {
        return false;
    };
    let host = get(header::HOST).unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    origin == "null" || origin_host != host
}

/// True when the Host header names this machine's loopback (a page on
/// another name that resolves to 127.0.0.1 must not drive the dashboard).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true; // HTTP/1.0 clients: not a browser
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    matches!(name, "localhost" | "::1")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Routes that change something even though they are GETs (as in Locust).
fn changes_state(req: &Request) -> bool {
    req.method() != axum::http::Method::GET || matches!(req.uri().path(), "/stop" | "/stats/reset")
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"success": false, "message": message})),
    )
        .into_response()
}

/// Middleware: the checks above, and no framing of any answer.
pub async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let mut resp = check(&app, req, next).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("frame-ancestors 'none'"),
    );
    resp
}

async fn check(app: &App, req: Request, next: Next) -> Response {
    if changes_state(&req) && cross_site(req.headers()) {
        return refuse(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    let Some(token) = app.token.as_deref() else {
        if !loopback_host(req.headers()) {
            return refuse(
                StatusCode::FORBIDDEN,
                "this dashboard answers only to 127.0.0.1, localhost or [::1] (serve with --token to expose it)",
            );
        }
        return next.run(req).await;
    };
    if req.uri().path() == "/login" {
        return next.run(req).await;
    }
    let ok = bearer(req.headers()).is_some_and(|t| same(t, token))
        || cookie(req.headers(), &app.cookie_name).is_some_and(|s| same(s, &app.session));
    if ok {
        return next.run(req).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
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
    if !same(&f.token, token) {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
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
            format!(
                "{}={}; Path=/; HttpOnly; SameSite=Strict",
                app.cookie_name, app.session
            ),
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
            "a=b; cloudswarm_session_8089=s3cret".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "cloudswarm_session_8089"), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(bearer(&h), Some("other"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "abcd"));
        assert!(!same("", "abc") && !same("ab", "abc"));
    }

    #[test]
    fn only_loopback_names_reach_a_dashboard_without_token() {
        let host = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, v.parse().unwrap());
            loopback_host(&h)
        };
        assert!(host("127.0.0.1:8089") && host("localhost:8089") && host("[::1]:8089"));
        assert!(!host("evil.example:8089") && !host("10.0.0.5:8089"));
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
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h));
    }
}
