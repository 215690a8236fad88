//! Clean-up: deletes what a run holds and what the cloud proves to be the
//! run's, in dependency order (addresses, instances, volumes, snapshots,
//! key pairs, security groups, buckets with their objects and uploads),
//! retrying what the cloud is not ready to delete yet and throttling. Used
//! by the session at the end of a run, by `cloudswarm cleanup` and by the
//! `s3:DeleteBucket` op for a bucket it cannot empty. What each kind needs
//! (how it is listed, proven and deleted) is in [`kinds`].

mod kinds;
mod retry;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use kinds::{delete_bucket, list_bucket_names, marker_of};
pub use retry::with_retry;

use crate::naming::Services;
use crate::resources::{Kind, Tracker};
use crate::target::Clients;

/// What a clean-up did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CleanupReport {
    /// Deleted by this clean-up (not what was gone already).
    pub deleted: BTreeMap<Kind, u64>,
    /// (kind, id, why) of what is left.
    pub failed: Vec<(Kind, String, String)>,
}

/// Why a resource found in the cloud is taken to be a run's. A name that
/// merely looks like the run's (`cs-<runid>-<n>`) is never proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proof {
    /// The run's journal names it (its id, or the name an intent gave).
    Journal,
    /// It carries the `cloudswarm:run-id` tag with the run's id.
    Tag,
    /// A bucket holding the marker object with the run's id.
    Marker,
}

impl Proof {
    pub fn as_str(self) -> &'static str {
        match self {
            Proof::Journal => "journal",
            Proof::Tag => "tag",
            Proof::Marker => "marker",
        }
    }
}

/// What of a run the cloud holds: per kind, (id, why it is the run's).
pub type Found = BTreeMap<Kind, Vec<(String, Proof)>>;

/// What is left of a run after a sweep, by a fresh listing of the cloud;
/// the error names the listing that failed (then nobody knows what is left).
pub type Leftovers = Result<Found, String>;

/// Listings get at least this long to get past throttling, even when the
/// clean-up's own deadline has passed.
const LISTING_GRACE: Duration = Duration::from_secs(30);

/// Lists what of the tracker's run the cloud still holds, each with its
/// proof (see [`kinds`]). `services` says which of EC2 / S3 to look at.
/// Throttled or failing listings are retried with backoff until `deadline`
/// (at least [`LISTING_GRACE`]); an error names the listing that still
/// failed.
pub async fn list_run(
    c: &Clients,
    tracker: &Tracker,
    services: Services,
    deadline: Instant,
) -> Result<Found, String> {
    let deadline = deadline.max(Instant::now() + LISTING_GRACE);
    let mut out = Found::new();
    for kind in Kind::ALL {
        let wanted = match kinds::service_of(kind) {
            Some(kinds::Service::Ec2) => services.ec2,
            Some(kinds::Service::S3) => services.s3,
            None => false,
        };
        if !wanted {
            continue;
        }
        let mut found = kinds::list(c, tracker, kind, deadline).await?;
        found.sort();
        found.dedup_by(|a, b| a.0 == b.0);
        if !found.is_empty() {
            out.insert(kind, found);
        }
    }
    Ok(out)
}

/// Deletes everything `tracker` holds as alive, kind by kind in dependency
/// order; gives up on a resource at the deadline.
pub async fn delete_tracked(
    c: &Clients,
    tracker: &Tracker,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> CleanupReport {
    let deadline = Instant::now() + timeout;
    let mut report = CleanupReport::default();
    let mut count = |kind: Kind, n: u64| {
        if n > 0 {
            *report.deleted.entry(kind).or_default() += n;
        }
    };
    let mut failed = Vec::new();
    for kind in Kind::ALL {
        let ids = tracker.alive(kind);
        if ids.is_empty() {
            continue;
        }
        progress(&format!(
            "{} {} {}",
            kinds::verb(kind),
            ids.len(),
            kind.as_str()
        ));
        for (id, outcome) in kinds::delete(c, kind, ids, deadline).await {
            match outcome {
                kinds::Outcome::Deleted { objects, bytes } => {
                    tracker.deleted(kind, &id).await;
                    count(kind, 1);
                    if objects > 0 || bytes > 0 {
                        tracker.objects_gone(objects);
                        tracker.release_bytes(bytes);
                        count(Kind::Object, objects);
                    }
                }
                kinds::Outcome::Gone => tracker.deleted(kind, &id).await,
                kinds::Outcome::Failed(why) => failed.push((kind, id, why)),
            }
        }
    }
    report.failed = failed;
    report
}

/// The whole clean-up of a run: deletes what the tracker holds, lists the
/// cloud for what proves to be the run's (its tag, its marker, or a name or
/// id its journal holds: resources whose id never reached the tracker, from
/// a create cut short by the stop timeout or answered by a timeout),
/// deletes those too, and lists once more.
pub async fn sweep(
    c: &Clients,
    tracker: &Tracker,
    services: Services,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> (CleanupReport, Leftovers) {
    let deadline = Instant::now() + timeout;
    let mut report = delete_tracked(c, tracker, timeout, progress).await;
    let found = match list_run(c, tracker, services, deadline).await {
        Ok(f) => f,
        Err(e) => return (report, Err(e)),
    };
    let extra: usize = found.values().map(Vec::len).sum();
    if extra > 0 {
        progress(&format!(
            "{extra} more found in the cloud by the run's tag, marker or journal"
        ));
        for (kind, ids) in &found {
            for (id, _) in ids {
                tracker.adopt(*kind, id);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let again = delete_tracked(c, tracker, left.max(Duration::from_secs(30)), progress).await;
        for (k, n) in again.deleted {
            *report.deleted.entry(k).or_default() += n;
        }
        report.failed = again.failed;
    }
    let left = list_run(c, tracker, services, deadline).await;
    (report, left)
}
