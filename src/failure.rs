//! Why a request failed ([`Failure`]), as the stats group it, and how an
//! SDK error becomes one ([`classify`]): the AWS error code when the cloud
//! answered with one, the transport kind (timeout, refused, reset, dns, tls)
//! when it did not answer, and `HTTP <status>` with a short excerpt of the
//! body when the answer was not an AWS error document (a proxy's HTML page).
//! Depends on nothing above it.

use std::error::Error as StdError;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// Why a request failed, as the stats group it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// AWS error code (`InstanceLimitExceeded`), transport kind (`timeout`,
    /// `refused`, `reset`...), `HTTP 500` for bodies that are not AWS errors,
    /// or a cloudswarm code such as `wait-timeout`.
    pub code: String,
    pub message: String,
    pub throttled: bool,
}

impl Failure {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        let throttled = is_throttle_code(&code);
        Failure {
            code,
            message: message.into(),
            throttled,
        }
    }
}

/// Codes that mean the cloud is throttling us.
pub fn is_throttle_code(code: &str) -> bool {
    matches!(
        code,
        "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "SlowDown"
            | "HTTP 503"
            | "HTTP 429"
    )
}

/// Classifies any EC2 or S3 SDK error.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let status = se.raw().status().as_u16();
            match e.code() {
                Some(code) if !code.is_empty() => {
                    Failure::new(code, e.message().unwrap_or("").to_string())
                }
                _ => http_failure(status, se.raw()),
            }
        }
        SdkError::ResponseError(re) => http_failure(re.raw().status().as_u16(), re.raw()),
        SdkError::TimeoutError(_) => Failure::new("timeout", chain(err)),
        SdkError::DispatchFailure(df) => {
            let text = chain(err);
            let code = if df.is_timeout() {
                "timeout"
            } else {
                transport_kind(err, &text)
            };
            Failure::new(code, text)
        }
        SdkError::ConstructionFailure(_) => Failure::new("request-error", chain(err)),
        _ => Failure::new("error", chain(err)),
    }
}

fn http_failure(status: u16, raw: &HttpResponse) -> Failure {
    let body = raw
        .body()
        .bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    Failure::new(format!("HTTP {status}"), excerpt(&body))
}

/// The first 200 characters of a body with markup and runs of space removed.
pub fn excerpt(body: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut last_space = true;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            _ if in_tag => {}
            c if c.is_whitespace() => {
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            c => {
                out.push(c);
                last_space = false;
            }
        }
        if out.chars().count() >= 200 {
            break;
        }
    }
    out.trim().to_string()
}

/// The error and all its sources, joined.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p == &s) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

fn transport_kind(err: &(dyn StdError + 'static), text: &str) -> &'static str {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return "refused",
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return "reset";
                }
                TimedOut => return "timeout",
                _ => {}
            }
        }
        cur = e.source();
    }
    let t = text.to_ascii_lowercase();
    if t.contains("connection refused") {
        "refused"
    } else if t.contains("reset") || t.contains("connection closed") || t.contains("broken pipe") {
        "reset"
    } else if t.contains("dns") || t.contains("lookup") || t.contains("resolve") {
        "dns"
    } else if t.contains("tls") || t.contains("certificate") || t.contains("handshake") {
        "tls"
    } else if t.contains("timed out") || t.contains("timeout") {
        "timeout"
    } else {
        "connect"
    }
}

/// Tries `attempt` until it succeeds, fails in a way `again` does not
/// retry, or the next try would start after `deadline`: the one backoff
/// loop of the preflight and the clean-up. Pauses start at `first`, double
/// up to 5 s, with up to half again of jitter. Each try's future is boxed,
/// so a caller's future does not hold an SDK call's inline.
pub async fn retrying<T, F, Fut>(
    deadline: std::time::Instant,
    first: std::time::Duration,
    again: impl Fn(&Failure) -> bool,
    mut attempt: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut pause = first;
    loop {
        let f = match Box::pin(attempt()).await {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        let jitter =
            std::time::Duration::from_millis(rand::random_range(0..=pause.as_millis() as u64 / 2));
        if !again(&f) || std::time::Instant::now() + pause + jitter > deadline {
            return Err(f);
        }
        tracing::debug!("{} ({}); trying again", f.code, f.message);
        tokio::time::sleep(pause + jitter).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_strips_markup() {
        let html = "<html><head><title>502 Bad Gateway</title></head>\n<body>\n<h1>Bad   Gateway</h1></body></html>";
        assert_eq!(excerpt(html), "502 Bad Gateway Bad Gateway");
        assert!(excerpt(&"x".repeat(1000)).len() <= 200);
    }
}
