//! Ctrl-C and SIGTERM: taken over as soon as a command starts (so a stop
//! during start-up is a clean stop too), then awaited where a run decides
//! what a stop means.

/// Takes over SIGTERM and Ctrl-C now: tokio keeps a handler once installed,
/// so the default action (exit at once) no longer applies.
pub fn take_over() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let _ = signal(SignalKind::terminate());
        let _ = signal(SignalKind::interrupt());
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
