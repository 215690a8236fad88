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

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::ResourceType;

    use super::*;
    use crate::tasks::tests::{Moto, ctx_at};

    /// Two workers share run `sizes`: worker 1 names from 1e9 + 1, worker 2
    /// from 2e9 + 1. Worker 1's clean-up takes its own names and what its
    /// journal names, and leaves worker 2's though they carry the run's tag
    /// and marker; told worker 2 went missing, it takes worker 2's too; an
    /// unscoped clean-up (`cleanup --run-id`) takes the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_workers_sweep_spares_the_other_workers_resources_unless_told_they_are_missing() {
        let moto = Moto::start();
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx_at(dir.path(), &moto.url).await;
        let (c, run) = (&ctx.clients, &ctx.run_id);
        let mut volumes = BTreeMap::new();
        for n in [1_000_000_005u64, 2_000_000_005, 7] {
            let name = run.resource_name(n);
            c.ec2
                .create_key_pair()
                .key_name(&name)
                .tag_specifications(run.tags(ResourceType::KeyPair, &name))
                .send()
                .await
                .unwrap();
            c.ec2
                .create_security_group()
                .group_name(&name)
                .description("cloudswarm run")
                .tag_specifications(run.tags(ResourceType::SecurityGroup, &name))
                .send()
                .await
                .unwrap();
            let v = c
                .ec2
                .create_volume()
                .size(1)
                .availability_zone("us-east-1a")
                .tag_specifications(run.tags(ResourceType::Volume, &name))
                .send()
                .await
                .unwrap();
            volumes.insert(n, v.volume_id().unwrap().to_string());
            c.s3.create_bucket().bucket(&name).send().await.unwrap();
            c.s3.put_object()
                .bucket(&name)
                .key(crate::naming::MARKER_KEY)
                .body(run.as_str().as_bytes().to_vec().into())
                .send()
                .await
                .unwrap();
        }
        let state = tempfile::tempdir().unwrap();
        let worker1 = Tracker::open(state.path(), run)
            .unwrap()
            .scoped(1_000_000_001..=2_000_000_000);
        // Worker 1's journal names key pair 7 (an intent that never got
        // its answer): the journal proves it whatever its number.
        worker1.adopt_name(Kind::KeyPair, &run.resource_name(7));
        let (report, left) =
            sweep(c, &worker1, Services::ALL, Duration::from_secs(60), &|_| {}).await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.deleted.get(&Kind::KeyPair), Some(&2), "{report:?}");
        for kind in [Kind::SecurityGroup, Kind::Volume, Kind::Bucket] {
            assert_eq!(report.deleted.get(&kind), Some(&1), "{kind:?}: {report:?}");
        }
        assert!(left.unwrap().is_empty(), "worker 1's scope is empty now");

        let keys = c.ec2.describe_key_pairs().send().await.unwrap();
        let mut keys: Vec<&str> = keys
            .key_pairs()
            .iter()
            .filter_map(|k| k.key_name())
            .collect();
        keys.sort();
        assert_eq!(keys, [run.resource_name(2_000_000_005)]);
        let groups = c.ec2.describe_security_groups().send().await.unwrap();
        let groups: BTreeMap<&str, &str> = groups
            .security_groups()
            .iter()
            .filter_map(|g| Some((g.group_name()?, g.group_id()?)))
            .filter(|(n, _)| n.starts_with("cs-"))
            .collect();
        let spared: Vec<&&str> = groups.keys().collect();
        assert_eq!(
            spared,
            [
                &run.resource_name(2_000_000_005).as_str(),
                &run.resource_name(7).as_str()
            ]
        );
        let vols = c.ec2.describe_volumes().send().await.unwrap();
        let vols: Vec<&str> = vols
            .volumes()
            .iter()
            .filter_map(|v| v.volume_id())
            .collect();
        assert!(
            !vols.contains(&volumes[&1_000_000_005].as_str()),
            "{vols:?}"
        );
        assert!(vols.contains(&volumes[&2_000_000_005].as_str()), "{vols:?}");
        assert!(vols.contains(&volumes[&7].as_str()), "{vols:?}");
        let buckets = list_bucket_names(c, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            buckets,
            [run.resource_name(2_000_000_005), run.resource_name(7)]
        );

        // Worker 2 (index 1) went missing: worker 1, told to sweep for it,
        // widens its scope to worker 2's names and takes those too.
        worker1.widen_scope(crate::naming::worker_names(1));
        let (report, left) =
            sweep(c, &worker1, Services::ALL, Duration::from_secs(60), &|_| {}).await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        for kind in [
            Kind::KeyPair,
            Kind::SecurityGroup,
            Kind::Volume,
            Kind::Bucket,
        ] {
            assert_eq!(report.deleted.get(&kind), Some(&1), "{kind:?}: {report:?}");
        }
        assert!(
            left.unwrap().is_empty(),
            "both workers' scopes are empty now"
        );
        let buckets = list_bucket_names(c, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(buckets, [run.resource_name(7)], "number 7 is in neither");

        // The whole run, as `cloudswarm cleanup --run-id` takes it.
        let all = Tracker::open(state.path(), run).unwrap();
        let (report, left) = sweep(c, &all, Services::ALL, Duration::from_secs(60), &|_| {}).await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.deleted.get(&Kind::KeyPair), None, "{report:?}");
        for kind in [Kind::SecurityGroup, Kind::Volume, Kind::Bucket] {
            assert_eq!(report.deleted.get(&kind), Some(&1), "{kind:?}: {report:?}");
        }
        assert!(left.unwrap().is_empty());
    }
}
