//! Who may use the dashboard: the access token when set (header
//! `Authorization: Bearer TOKEN`, or the session cookie the login form
//! sets), loopback host names only when not (against DNS rebinding), and no
//! cross-site requests that change something; pages may not be framed.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
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

/// The host of an authority (`name[:port]` or `[IPv6][:port]`), read
/// strictly: letters, digits, `.` and `-` in a name, a port of digits only,
/// no user info (`127.0.0.1:8089@evil.example` is not an authority here).
fn authority_host(authority: &str) -> Option<&str> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']')?;
            ip.parse::<std::net::Ipv6Addr>().ok()?;
            (ip, after)
        }
        None => {
            let end = authority.find(':').unwrap_or(authority.len());
            let name = &authority[..end];
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            (name_ok.then_some(name)?, &authority[end..])
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        });
    port_ok.then_some(host)
}

/// True for the names of this machine's loopback.
fn loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
        || host
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host names a request gives: its Host header and the authority of
/// its target (an absolute-form request line, or HTTP/2's `:authority`).
/// Err when they are malformed: more than one Host, or a Host that is not
/// an authority (a byte that is not ASCII, user info, stray characters).
fn request_hosts<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Result<Vec<&'a str>, &'static str> {
    let mut all = headers.get_all(header::HOST).iter();
    let host = all.next();
    if all.next().is_some() {
        return Err("more than one Host header");
    }
    let mut hosts = Vec::new();
    if let Some(h) = host {
        let h = h.to_str().ok().and_then(authority_host);
        hosts.push(h.ok_or("the Host header is not a host name with an optional port")?);
    }
    if let Some(a) = uri.authority() {
        hosts.push(
            authority_host(a.as_str())
                .ok_or("the request's target is not a host name with an optional port")?,
        );
    }
    Ok(hosts)
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
    let hosts = match request_hosts(req.uri(), req.headers()) {
        Ok(h) => h,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    if changes_state(&req) && cross_site(req.headers()) {
        return refuse(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    let Some(token) = app.token.as_deref() else {
        // Without a Host (HTTP/1.0 clients) the request is not a browser's.
        if !hosts.iter().all(|h| loopback_name(h)) {
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
        || cookie(req.headers(), &app.cookie_name).is_some_and(|s| same(s, &app.cookie_value));
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
                app.cookie_name, app.cookie_value
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

    /// The hosts of a request with these Host header values (raw bytes) and target.
    fn hosts(values: &[&[u8]], target: &str) -> Result<Vec<String>, &'static str> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::HOST, header::HeaderValue::from_bytes(v).unwrap());
        }
        let uri: Uri = target.parse().unwrap();
        request_hosts(&uri, &h).map(|v| v.into_iter().map(str::to_string).collect())
    }

    /// True when a dashboard without a token answers such a request.
    fn answered(values: &[&[u8]], target: &str) -> bool {
        hosts(values, target).is_ok_and(|h| h.iter().all(|h| loopback_name(h)))
    }

    #[test]
    fn only_loopback_names_reach_a_dashboard_without_token() {
        for ok in [
            &b"127.0.0.1:8089"[..],
            b"localhost:8089",
            b"LocalHost",
            b"[::1]:8089",
            b"127.0.0.1",
            b"127.3.4.5:1",
        ] {
            assert!(answered(&[ok], "/"), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"evil.example:8089"[..],
            b"10.0.0.5:8089",
            b"localhost.evil.example",
            b"[::2]:8089",
        ] {
            assert!(!answered(&[bad], "/"), "{}", String::from_utf8_lossy(bad));
        }
        // No Host at all (HTTP/1.0): not a browser, answered.
        assert!(answered(&[], "/"));
    }

    #[test]
    fn a_host_with_a_byte_that_is_not_ascii_is_refused() {
        assert!(hosts(&[b"127.0.0.1\xff:8089"], "/").is_err());
        assert!(hosts(&[b"\xe9vil.example"], "/").is_err());
        assert!(!answered(&[b"localhost\x80"], "/"));
    }

    #[test]
    fn user_info_and_stray_characters_are_not_a_host() {
        for bad in [
            &b"127.0.0.1:8089@evil.example"[..],
            b"localhost@evil.example",
            b"127.0.0.1:80:80",
            b"127.0.0.1:",
            b"127.0.0.1:99999",
            b"127.0.0.1:+80",
            b"127.0.0.1/x",
            b"127.0.0.1 evil.example",
            b"[::1",
            b"[::1]x",
            b"[evil.example]",
            b"::1",
            b"",
        ] {
            assert!(
                hosts(&[bad], "/").is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(authority_host("[::1]:8089"), Some("::1"));
        assert_eq!(authority_host("localhost:8089"), Some("localhost"));
    }

    #[test]
    fn two_host_headers_are_refused() {
        assert!(hosts(&[b"127.0.0.1:8089", b"127.0.0.1:8089"], "/").is_err());
        assert!(hosts(&[b"127.0.0.1:8089", b"evil.example"], "/").is_err());
        assert!(hosts(&[b"evil.example", b"127.0.0.1:8089"], "/").is_err());
    }

    #[test]
    fn the_target_authority_counts_as_well_as_host() {
        // HTTP/2 puts the host in `:authority`, an absolute-form request line
        // in the target: both must be loopback, whatever Host says.
        assert!(!answered(&[b"evil.example"], "http://127.0.0.1:8089/"));
        assert!(!answered(&[b"127.0.0.1:8089"], "http://evil.example/"));
        assert!(!answered(&[], "http://evil.example:8089/stats/requests"));
        assert!(hosts(&[b"127.0.0.1"], "http://127.0.0.1:8089@evil.example/").is_err());
        assert!(answered(&[b"localhost:8089"], "http://127.0.0.1:8089/"));
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
