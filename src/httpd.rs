//! The HTTP server under the dashboard and `--metrics-bind`: HTTP/1.1 only
//! (hyper), and no client can hold it. A request's head must arrive within
//! [`HEADER_TIMEOUT`] (the same limit closes a keep-alive connection left
//! idle), its body within [`BODY_TIMEOUT`]; at most [`MAX_CONNECTIONS`] are
//! open, and at the cap the oldest connection with no request being answered
//! is closed to make room (if every one is busy, the new one is closed). When
//! told to stop, the listener closes, open connections get [`GRACE`] to finish
//! what they are doing, and then they are closed.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Time a client has to send a request's line and headers, from the moment
/// the server waits for them (a new connection, or one idle after an answer).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's whole body, from its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections at most.
pub const MAX_CONNECTIONS: usize = 1000;
/// Time open connections get to finish when the server stops.
pub const GRACE: Duration = Duration::from_secs(5);
/// Largest request head (line and headers); a longer one gets 431.
const MAX_HEAD: usize = 64 * 1024;

/// One open connection: how to close it, and whether a request on it is
/// being answered.
struct Conn {
    close: CancellationToken,
    busy: Arc<AtomicBool>,
}

/// The open connections by arrival (ids grow), with the cap.
struct Conns {
    cap: usize,
    next: u64,
    open: BTreeMap<u64, Conn>,
}

impl Conns {
    fn new(cap: usize) -> Conns {
        Conns {
            cap,
            next: 0,
            open: BTreeMap::new(),
        }
    }

    /// Makes room for a new connection (closing the oldest idle one at the
    /// cap) and registers it; None when every open connection is busy.
    fn admit(&mut self) -> Option<(u64, CancellationToken, Arc<AtomicBool>)> {
        if self.open.len() >= self.cap {
            let idle = self
                .open
                .iter()
                .find(|(_, c)| !c.busy.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(c) = self.open.remove(&idle) {
                c.close.cancel();
            }
        }
        let id = self.next;
        self.next += 1;
        let conn = Conn {
            close: CancellationToken::new(),
            busy: Arc::new(AtomicBool::new(false)),
        };
        let admitted = (id, conn.close.clone(), conn.busy.clone());
        self.open.insert(id, conn);
        Some(admitted)
    }
}

fn lock(conns: &Mutex<Conns>) -> MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves `router` on `listener` until `stop` resolves (see the module's
/// doc); returns once every connection is closed or being closed.
pub async fn serve(listener: TcpListener, router: Router, stop: impl Future<Output = ()>) {
    let conns = Arc::new(Mutex::new(Conns::new(MAX_CONNECTIONS)));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEAD);
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: the connections
                    // open now will end (timeouts), so wait and go on.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // At the cap with every connection busy: dropping the stream closes it.
        let Some((id, close, busy)) = lock(&conns).admit() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), answer(router.clone(), busy));
        let conn = graceful.watch(conn);
        let conns = conns.clone();
        tokio::spawn(async move {
            tokio::select! {
                // Errors (a timeout, a malformed request) end only this connection.
                _ = conn => {}
                _ = close.cancelled() => {}
            }
            lock(&conns).open.remove(&id);
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        for c in lock(&conns).open.values() {
            c.close.cancel();
        }
    }
}

/// The service of one connection: `router`, with each request's body under
/// [`BODY_TIMEOUT`] and the connection marked busy while a request is answered.
fn answer(
    router: Router,
    busy: Arc<AtomicBool>,
) -> impl Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send,
> {
    let router = TowerToHyperService::new(router);
    hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        busy.store(true, Ordering::Relaxed);
        let done = NotBusy(busy.clone());
        let answer = router.call(req.map(|body| Deadline::new(body, BODY_TIMEOUT)));
        async move {
            let _done = done;
            answer.await
        }
    })
}

/// Marks the connection idle again when a request's answer is ready (or
/// given up).
struct NotBusy(Arc<AtomicBool>);

impl Drop for NotBusy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A request body that must arrive in full before a deadline.
struct Deadline {
    body: Incoming,
    /// None for a body that is already complete (most GETs): no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
}

impl Deadline {
    fn new(body: Incoming, limit: Duration) -> Deadline {
        let timer = (!body.is_end_stream()).then(|| Box::pin(tokio::time::sleep(limit)));
        Deadline { body, timer, limit }
    }
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let late = this
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if late {
            let why = format!(
                "the request body did not arrive within {}s",
                this.limit.as_secs()
            );
            return Poll::Ready(Some(Err(why.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let mut c = Conns::new(3);
        let a: Vec<_> = (0..3).map(|_| c.admit().unwrap()).collect();
        // The oldest is busy, the second idle: the second is closed.
        a[0].2.store(true, Ordering::Relaxed);
        let (id, _, _) = c.admit().unwrap();
        assert_eq!(id, 3);
        assert!(!a[0].1.is_cancelled() && a[1].1.is_cancelled() && !a[2].1.is_cancelled());
        assert_eq!(c.open.keys().copied().collect::<Vec<_>>(), [0, 2, 3]);
        // Every one busy: the newcomer is refused and nobody is closed.
        for conn in c.open.values() {
            conn.busy.store(true, Ordering::Relaxed);
        }
        assert!(c.admit().is_none());
        assert_eq!(c.open.len(), 3);
        assert!(c.open.values().all(|conn| !conn.close.is_cancelled()));
    }
}
