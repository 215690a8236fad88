//! Sending a clean-up or listing call again while the cloud is busy or
//! throttling, with backoff, until a deadline.

use std::time::{Duration, Instant};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::failure::{classify, retrying};

/// Codes worth another try during clean-up (the resource is busy, or we are throttled).
fn transient(code: &str) -> bool {
    crate::failure::is_throttle_code(code)
        || matches!(
            code,
            "IncorrectState"
                | "IncorrectInstanceState"
                | "VolumeInUse"
                | "DependencyViolation"
                | "InvalidSnapshot.InUse"
                | "InvalidIPAddress.InUse"
                | "timeout"
                | "reset"
                | "refused"
                | "HTTP 500"
                | "HTTP 502"
                | "HTTP 504"
                | "InternalError"
                | "ServiceUnavailable"
                | "Unavailable"
        )
}

/// Sends until success, a permanent error, or the deadline (the shared
/// backoff of [`crate::failure::retrying`]); errors as "CODE: message".
pub async fn with_retry<T, E, F, Fut>(deadline: Instant, mut send: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let attempt = || {
        let call = send();
        async move { call.await.map_err(|e| classify(&e)) }
    };
    retrying(
        deadline,
        Duration::from_millis(500),
        |f| transient(&f.code),
        attempt,
    )
    .await
    .map_err(|f| format!("{}: {}", f.code, f.message))
}
