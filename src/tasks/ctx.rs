//! What every user of a run shares ([`RunCtx`]), and the protocols every
//! op follows: measure a call and record it, create a resource (reserve
//! room under its cap, name it, journal the intent, send, measure, record
//! it created or failed), and wait for a resource's state (poll until ready,
//! failed or out of time, recording the wait).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::{StepError, payload, sdk};
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
}

impl RunCtx {
    pub fn new(
        run_id: RunId,
        clients: Clients,
        stats: Stats,
        tracker: Tracker,
        caps: Caps,
    ) -> RunCtx {
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

    /// Records one measurement of entry `name`: the one place that feeds
    /// both the stats and Prometheus.
    pub(super) fn record(
        &self,
        name: &'static str,
        took: Duration,
        bytes: Bytes,
        fail: Option<&Failure>,
    ) {
        // The stats entry knows its kind (looked up in the catalogue once,
        // when the entry was made): no lookup per request.
        let kind = self.stats.record(name, took, bytes, fail);
        sink::record(name, kind, took, bytes, fail);
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

    /// Records a finished SDK call; returns the value on success.
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
        let took = t0.elapsed();
        match res {
            Ok(v) => {
                self.record(name, took, bytes, None);
                Ok(v)
            }
            Err(e) => {
                let f = failure::classify(&e);
                self.record(
                    name,
                    took,
                    Bytes {
                        sent: bytes.sent,
                        received: 0,
                    },
                    Some(&f),
                );
                Err(f)
            }
        }
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

/// What one poll of a provisioning wait saw.
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

    /// The wait protocol: polls `check` every `poll_interval` until it says
    /// ready (recorded under `name` as the time since `since`), broken
    /// (failed as `state-<state>`) or `wait_timeout` has passed since `since`
    /// (failed as `wait-timeout`). A throttled or timed-out poll is retried
    /// until the deadline.
    pub(super) async fn wait_for<F, Fut>(
        &self,
        params: &Params,
        name: &'static str,
        what: &str,
        since: Instant,
        mut check: F,
    ) -> Result<(), StepError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Poll, Failure>>,
    {
        let deadline = since + params.wait_timeout;
        let mut last: String;
        loop {
            match check().await {
                Ok(Poll::Ready) => {
                    self.record(name, since.elapsed(), Bytes::default(), None);
                    return Ok(());
                }
                Ok(Poll::Broken(state)) => {
                    let f = Failure::new(
                        format!("state-{state}"),
                        format!("{what} went to `{state}` while waiting"),
                    );
                    return Err(self.fail(name, since.elapsed(), f).into());
                }
                Ok(Poll::Pending(state)) => last = state,
                Err(f) if f.throttled || f.code == "timeout" => last = f.code,
                Err(f) => return Err(self.fail(name, since.elapsed(), f).into()),
            }
            if Instant::now() + params.poll_interval > deadline {
                let f = Failure::new(
                    "wait-timeout",
                    format!(
                        "{what} not ready after {:?} (last state: {last})",
                        params.wait_timeout
                    ),
                );
                return Err(self.fail(name, since.elapsed(), f).into());
            }
            tokio::time::sleep(params.poll_interval).await;
        }
    }
}
