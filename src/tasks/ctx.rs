//! What every user of a run shares ([`RunCtx`]), and the protocols every
//! op follows: measure a call and record it, create a resource (reserve
//! room under its cap, name it, journal the intent, send, measure, record
//! it created or failed), and wait for a resource's state (the kind's shared
//! poller says when it is ready or broken, or the wait runs out of time;
//! the wait is recorded).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::poller::{self, Pollers};
use super::{Pool, StepError, Want, payload, sdk};
use crate::failure::{self, Failure};
use crate::metrics::sink;
use crate::naming::RunId;
use crate::ops::Op;
use crate::profile::Params;
use crate::resources::{Caps, Kind, Tracker};
use crate::stats::{Bytes, Stats};
use crate::target::Clients;

/// What every user of a run shares.
pub struct RunCtx {
    pub run_id: RunId,
    pub clients: Clients,
    pub stats: Stats,
    pub tracker: Tracker,
    pub caps: Caps,
    /// First availability zone of the region, for `availability_zone = "auto"`.
    pub default_az: Option<String>,
    /// The image `image_id = "auto"` stands for.
    pub auto_image: Option<String>,
    /// The run's one bucket for `bucket = "shared"`, created on first need
    /// (again if the cloud loses it).
    pub(super) shared_bucket: arc_swap::ArcSwapOption<Arc<str>>,
    /// One creator of the shared bucket at a time.
    pub(super) shared_bucket_creation: tokio::sync::Mutex<()>,
    names: AtomicU64,
    /// The S3 endpoint answered ListObjectsV2 as unsupported: use V1.
    pub(super) list_v1: AtomicBool,
    /// The pollers every provisioning wait of the run shares.
    pub(super) pollers: Pollers,
}

impl RunCtx {
    pub fn new(
        run_id: RunId,
        clients: Clients,
        stats: Stats,
        tracker: Tracker,
        caps: Caps,
    ) -> RunCtx {
        let pollers = Pollers::new(&clients.ec2, &stats);
        RunCtx {
            run_id,
            clients,
            stats,
            tracker,
            caps,
            default_az: None,
            auto_image: None,
            shared_bucket: arc_swap::ArcSwapOption::empty(),
            shared_bucket_creation: tokio::sync::Mutex::new(()),
            names: AtomicU64::new(0),
            list_v1: AtomicBool::new(false),
            pollers,
        }
    }

    /// Makes names count from `base` (workers of one run each have their own range).
    pub fn set_name_base(&mut self, base: u64) {
        self.names = AtomicU64::new(base);
    }

    /// A fresh name with the run's prefix: `cs-<runid>-<n>`.
    pub fn new_name(&self) -> String {
        let n = self.names.fetch_add(1, Ordering::Relaxed) + 1;
        self.run_id.resource_name(n)
    }

    /// A payload of `size` random bytes: a slice of a buffer shared by the
    /// whole process (see [`payload`]).
    pub(super) fn payload(&self, size: u64) -> bytes::Bytes {
        payload(size as usize)
    }

    /// Records one measurement of entry `name` (see [`record`]).
    pub(super) fn record(
        &self,
        name: &'static str,
        took: Duration,
        bytes: Bytes,
        fail: Option<&Failure>,
    ) {
        record(&self.stats, name, took, bytes, fail);
    }

    /// Counts an op a budget cap kept from creating.
    pub(super) fn record_capped(&self, op: Op) {
        self.stats.lock().count_capped(op.name());
        sink::capped(op.name());
    }

    /// Counts a user whose task panicked in `name` (an op, or `user:<class>`).
    pub fn record_panic(&self, name: &str, f: &Failure) {
        self.stats.lock().record_panic(name, f);
        sink::panicked(name);
    }

    /// Records a finished SDK call (see [`measure`]); returns the value on success.
    pub(super) fn measure<T, E>(
        &self,
        name: &'static str,
        t0: Instant,
        res: Result<T, SdkError<E, HttpResponse>>,
        bytes: Bytes,
    ) -> Result<T, Failure>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        measure(&self.stats, name, t0, res, bytes)
    }

    /// Journals the intent to create (durably, before the call is sent). If
    /// the journal cannot be written the create is not sent: the op fails as
    /// `journal` and gives back the `reserved` room under the caps.
    pub(super) async fn intent(
        &self,
        kind: crate::resources::Kind,
        name: &str,
        op: &'static str,
        reserved: u64,
    ) -> Result<u64, StepError> {
        match self.tracker.intent(kind, Some(name)).await {
            Ok(seq) => Ok(seq),
            Err(msg) => {
                self.tracker.release(kind, reserved);
                Err(self
                    .fail(op, Duration::ZERO, Failure::new("journal", msg))
                    .into())
            }
        }
    }

    /// Records a failure that is not an SDK error (a wait that timed out).
    pub(super) fn fail(&self, name: &'static str, took: Duration, f: Failure) -> Failure {
        self.record(name, took, Bytes::default(), Some(&f));
        f
    }
}

/// Records one measurement of entry `name` into `stats`: the one place that
/// feeds both the stats and Prometheus (the users' ops and the pollers).
pub(super) fn record(
    stats: &Stats,
    name: &'static str,
    took: Duration,
    bytes: Bytes,
    fail: Option<&Failure>,
) {
    // The stats entry knows its kind (looked up in the catalogue once,
    // when the entry was made): no lookup per request.
    let kind = stats.record(name, took, bytes, fail);
    sink::record(name, kind, took, bytes, fail);
}

/// Records a finished SDK call started at `t0` under `name`, a failure with
/// its classified code; returns the value on success.
pub(super) fn measure<T, E>(
    stats: &Stats,
    name: &'static str,
    t0: Instant,
    res: Result<T, SdkError<E, HttpResponse>>,
    bytes: Bytes,
) -> Result<T, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let took = t0.elapsed();
    match res {
        Ok(v) => {
            record(stats, name, took, bytes, None);
            Ok(v)
        }
        Err(e) => {
            let f = failure::classify(&e);
            let sent = Bytes {
                sent: bytes.sent,
                received: 0,
            };
            record(stats, name, took, sent, Some(&f));
            Err(f)
        }
    }
}

/// What one poll of a provisioning wait saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Poll {
    Ready,
    Pending(String),
    Broken(String),
}

/// A create call's failure to name what it made: `no-volume` and the like.
pub(super) fn none(what: &str, op: &str) -> StepError {
    Failure::new(format!("no-{what}"), format!("{op} returned no {what}")).into()
}

impl RunCtx {
    /// The create protocol, the same for every kind: reserve `n` under
    /// `cap` (None: no cap for this kind), take a fresh name, journal the
    /// intent (durably, before anything is sent), send `send(name)`, measure
    /// it under `op`, and record each id `made` finds in the answer (or the
    /// name, for kinds named by it) as
    /// created (what was reserved and not made as failed). An answer that
    /// names nothing fails as `no-<what>`. Returns the answer and the ids.
    pub(super) async fn create<T, E, Fut>(
        &self,
        op: Op,
        kind: Kind,
        reserve: Option<(u64, u64)>,
        send: impl FnOnce(String) -> Fut,
        made: impl FnOnce(&T, &str) -> Vec<String>,
    ) -> Result<(T, Vec<String>), StepError>
    where
        Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let n = match reserve {
            Some((n, cap)) => {
                if !self.tracker.reserve(kind, n, cap) {
                    return Err(StepError::Capped);
                }
                n
            }
            None => 0,
        };
        let name = self.new_name();
        let seq = self.intent(kind, &name, op.name(), n).await?;
        let t0 = Instant::now();
        let res = sdk(|| send(name.clone())).await;
        let out = match self.measure(op.name(), t0, res, Bytes::default()) {
            Ok(out) => out,
            Err(f) => {
                self.tracker.failed(seq, kind, n).await;
                return Err(f.into());
            }
        };
        let ids = made(&out, &name);
        for id in &ids {
            self.tracker.created(seq, kind, id).await;
        }
        let short = n.saturating_sub(ids.len() as u64);
        if ids.is_empty() || short > 0 {
            self.tracker.failed(seq, kind, short).await;
        }
        if ids.is_empty() {
            let call = op.name().split(':').nth(1).unwrap_or(op.name());
            return Err(none(kind.one(), call));
        }
        Ok((out, ids))
    }

    /// The wait protocol: registers `id` of `pool` with the kind's shared
    /// poller (see [`poller`]), to be polled every `poll_interval`, until a
    /// poll says `want` is reached (recorded under `name` as the time since
    /// `since`), the resource broke (failed as `state-<state>`), a poll
    /// failed (with its code; throttling and timeouts are sat out), or
    /// `wait_timeout` has passed since `since` (failed as `wait-timeout`, at
    /// that deadline whatever the poller does). A wait that starts at or
    /// after its deadline (a resource made long before) still waits up to
    /// two intervals for one poll, as it was always polled once.
    pub(super) async fn wait_for(
        &self,
        params: &Params,
        name: &'static str,
        (pool, id, want): (Pool, &str, Want),
        since: Instant,
    ) -> Result<(), StepError> {
        let deadline = since + params.wait_timeout;
        let mut watch = self.pollers.watch(pool, id, want, params.poll_interval);
        // The first poll's answer comes within an interval and a call
        // (unless throttling holds the poller back).
        let mut until = deadline.max(Instant::now() + 2 * params.poll_interval);
        let mut last = String::from("not polled yet");
        loop {
            let polled = tokio::time::timeout_at(until.into(), watch.next()).await;
            until = deadline;
            let Ok(polled) = polled else {
                let f = Failure::new(
                    "wait-timeout",
                    format!(
                        "{} {id} not ready after {:?} (last state: {last})",
                        pool.what(),
                        params.wait_timeout
                    ),
                );
                return Err(self.fail(name, since.elapsed(), f).into());
            };
            match polled {
                Ok(Poll::Ready) => {
                    self.record(name, since.elapsed(), Bytes::default(), None);
                    return Ok(());
                }
                Ok(Poll::Broken(state)) => {
                    let f = Failure::new(
                        format!("state-{state}"),
                        format!("{} {id} went to `{state}` while waiting", pool.what()),
                    );
                    return Err(self.fail(name, since.elapsed(), f).into());
                }
                Ok(Poll::Pending(state)) => last = state,
                Err(f) if poller::sat_out(&f) => last = f.code,
                Err(f) => return Err(self.fail(name, since.elapsed(), f).into()),
            }
        }
    }
}
