//! Clean-up: finds a run's resources in the cloud (by its tag and name
//! prefix, never with an empty filter) and deletes everything a tracker holds
//! as alive, in dependency order (addresses, instances, volumes, snapshots,
//! key pairs, security groups, buckets with their objects and uploads),
//! retrying what the cloud is not ready to delete yet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::errors::classify;
use crate::naming::{MARKER_KEY, Services, is_run_name, run_tag_of};
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

fn err_text<E>(e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = classify(e);
    format!("{}: {}", f.code, f.message)
}

/// Listings get at least this long to get past throttling, even when the
/// clean-up's own deadline has passed.
const LISTING_GRACE: Duration = Duration::from_secs(30);

/// Reads a bucket's marker: Some(run id) when it holds one, None when it
/// does not (or is gone, or is not ours to read); an error when the cloud
/// would not say (throttled past the deadline, down).
pub async fn marker_of(
    c: &Clients,
    bucket: &str,
    deadline: Instant,
) -> Result<Option<String>, String> {
    let got = with_retry(deadline, || {
        c.s3.get_object().bucket(bucket).key(MARKER_KEY).send()
    })
    .await;
    match got {
        Ok(o) => {
            let body = o
                .body
                .collect()
                .await
                .map_err(|e| format!("GetObject {bucket}/{MARKER_KEY}: {e}"))?;
            let text = String::from_utf8_lossy(&body.into_bytes())
                .trim()
                .to_string();
            Ok(Some(text))
        }
        Err(why)
            if [
                "NoSuchKey",
                "NoSuchBucket",
                "AccessDenied",
                "HTTP 404",
                "HTTP 403",
            ]
            .iter()
            .any(|c| why.starts_with(c)) =>
        {
            Ok(None)
        }
        Err(why) => Err(format!("GetObject {bucket}/{MARKER_KEY}: {why}")),
    }
}

/// Lists what of the tracker's run the cloud still holds, each with its
/// proof: EC2 resources carrying the run tag (checked on each answer, not
/// only by the filter, in case a cloud ignores filters) or whose id or name
/// the journal holds; buckets whose marker names the run or whose name the
/// journal holds. `services` says which of EC2 / S3 to look at. Throttled
/// or failing listings are retried with backoff until `deadline` (at least
/// a minute); an error names the listing that still failed.
pub async fn list_run(
    c: &Clients,
    tracker: &Tracker,
    services: Services,
    deadline: Instant,
) -> Result<Found, String> {
    let run = tracker.run_id();
    let run_id = run.as_str();
    let deadline = deadline.max(Instant::now() + LISTING_GRACE);
    let mut out = Found::new();
    let mut add = |kind: Kind, id: &str, proof: Proof| {
        out.entry(kind).or_default().push((id.to_string(), proof));
    };
    // Tag first; the journal where the tag is missing.
    let proof = |kind: Kind, tags: &[aws_sdk_ec2::types::Tag], ids: &[&str]| {
        if run_tag_of(tags) == Some(run_id) {
            Some(Proof::Tag)
        } else if ids.iter().any(|i| tracker.knows(kind, i)) {
            Some(Proof::Journal)
        } else {
            None
        }
    };
    if services.ec2 {
        let ec2 = &c.ec2;
        let live = || {
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build()
        };
        // By tag, then by the journal's ids (a cloud that dropped the tags).
        for by in [
            Some(run.tag_filter()),
            id_filter("instance-id", &tracker.alive(Kind::Instance)),
        ]
        .into_iter()
        .flatten()
        {
            let mut token = None;
            loop {
                let page = with_retry(deadline, || {
                    ec2.describe_instances()
                        .filters(by.clone())
                        .filters(live())
                        .set_next_token(token.clone())
                        .send()
                })
                .await
                .map_err(|e| format!("DescribeInstances: {e}"))?;
                for i in page.reservations().iter().flat_map(|r| r.instances()) {
                    if let Some(id) = i.instance_id()
                        && let Some(p) = proof(Kind::Instance, i.tags(), &[id])
                    {
                        add(Kind::Instance, id, p);
                    }
                }
                token = page
                    .next_token()
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        for by in [
            Some(run.tag_filter()),
            id_filter("volume-id", &tracker.alive(Kind::Volume)),
        ]
        .into_iter()
        .flatten()
        {
            let mut token = None;
            loop {
                let page = with_retry(deadline, || {
                    ec2.describe_volumes()
                        .filters(by.clone())
                        .set_next_token(token.clone())
                        .send()
                })
                .await
                .map_err(|e| format!("DescribeVolumes: {e}"))?;
                for v in page.volumes() {
                    let going = matches!(
                        v.state(),
                        Some(
                            aws_sdk_ec2::types::VolumeState::Deleting
                                | aws_sdk_ec2::types::VolumeState::Deleted
                        )
                    );
                    if let Some(id) = v.volume_id().filter(|_| !going)
                        && let Some(p) = proof(Kind::Volume, v.tags(), &[id])
                    {
                        add(Kind::Volume, id, p);
                    }
                }
                token = page
                    .next_token()
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        for by in [
            Some(run.tag_filter()),
            id_filter("snapshot-id", &tracker.alive(Kind::Snapshot)),
        ]
        .into_iter()
        .flatten()
        {
            let mut token = None;
            loop {
                let page = with_retry(deadline, || {
                    ec2.describe_snapshots()
                        .owner_ids("self")
                        .filters(by.clone())
                        .set_next_token(token.clone())
                        .send()
                })
                .await
                .map_err(|e| format!("DescribeSnapshots: {e}"))?;
                for s in page.snapshots() {
                    if let Some(id) = s.snapshot_id()
                        && let Some(p) = proof(Kind::Snapshot, s.tags(), &[id])
                    {
                        add(Kind::Snapshot, id, p);
                    }
                }
                token = page
                    .next_token()
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        // Addresses: by tag; the journal's are looked for among all of them
        // (their key is an allocation id or, on classic clouds, a public IP).
        let journal_addresses = !tracker.alive(Kind::Address).is_empty();
        for by in [Some(run.tag_filter()), None] {
            if by.is_none() && !journal_addresses {
                continue;
            }
            let addrs = with_retry(deadline, || {
                ec2.describe_addresses()
                    .set_filters(by.clone().map(|f| vec![f]))
                    .send()
            })
            .await
            .map_err(|e| format!("DescribeAddresses: {e}"))?;
            for a in addrs.addresses() {
                let ids: Vec<&str> = [a.allocation_id(), a.public_ip()]
                    .into_iter()
                    .flatten()
                    .collect();
                if let Some(key) = ids.first()
                    && let Some(p) = proof(Kind::Address, a.tags(), &ids)
                {
                    add(Kind::Address, key, p);
                }
            }
        }
        // Key pairs and groups: the name narrows the listing, the tag or the
        // journal proves.
        let named = |n: &str| {
            Filter::builder()
                .name(n)
                .values(format!("cs-{run_id}-*"))
                .build()
        };
        let keys = with_retry(deadline, || {
            ec2.describe_key_pairs().filters(named("key-name")).send()
        })
        .await
        .map_err(|e| format!("DescribeKeyPairs: {e}"))?;
        for k in keys.key_pairs() {
            if let Some(n) = k.key_name()
                && let Some(p) = proof(Kind::KeyPair, k.tags(), &[n])
            {
                add(Kind::KeyPair, n, p);
            }
        }
        let mut token = None;
        loop {
            let page = with_retry(deadline, || {
                ec2.describe_security_groups()
                    .filters(named("group-name"))
                    .set_next_token(token.clone())
                    .send()
            })
            .await
            .map_err(|e| format!("DescribeSecurityGroups: {e}"))?;
            for g in page.security_groups() {
                let ids: Vec<&str> = [g.group_id(), g.group_name()]
                    .into_iter()
                    .flatten()
                    .collect();
                if let Some(id) = g.group_id()
                    && let Some(p) = proof(Kind::SecurityGroup, g.tags(), &ids)
                {
                    add(Kind::SecurityGroup, id, p);
                }
            }
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }
    if services.s3 {
        for name in list_bucket_names(c, deadline).await? {
            if !is_run_name(&name, run_id) {
                continue;
            }
            if tracker.knows(Kind::Bucket, &name) {
                add(Kind::Bucket, &name, Proof::Journal);
            } else if marker_of(c, &name, deadline).await?.as_deref() == Some(run_id) {
                add(Kind::Bucket, &name, Proof::Marker);
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
    }
    Ok(out)
}

/// A filter on `name` for `ids`, or None when there are none.
fn id_filter(name: &str, ids: &[String]) -> Option<Filter> {
    (!ids.is_empty()).then(|| {
        Filter::builder()
            .name(name)
            .set_values(Some(ids.to_vec()))
            .build()
    })
}

/// Every bucket's name (following continuation tokens where the server
/// gives them), retried through throttling until `deadline`.
pub async fn list_bucket_names(c: &Clients, deadline: Instant) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = with_retry(deadline, || {
            c.s3.list_buckets()
                .set_continuation_token(token.clone())
                .send()
        })
        .await
        .map_err(|e| format!("ListBuckets: {e}"))?;
        names.extend(
            page.buckets()
                .iter()
                .filter_map(|b| b.name().map(str::to_string)),
        );
        token = page
            .continuation_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok(names);
        }
    }
}

/// Records one delete's outcome: gone (deleted now, or `already_gone` says
/// the cloud no longer has it) or failed with the reason.
async fn settle(
    tracker: &Tracker,
    report: &mut CleanupReport,
    kind: Kind,
    id: String,
    res: Result<(), String>,
    already_gone: impl Fn(&str) -> bool,
) {
    match res {
        Ok(()) => {
            tracker.deleted(kind, &id).await;
            *report.deleted.entry(kind).or_default() += 1;
        }
        Err(why) if already_gone(&why) => tracker.deleted(kind, &id).await,
        Err(why) => report.failed.push((kind, id, why)),
    }
}

/// Deletes everything `tracker` holds as alive; gives up on a resource at the deadline.
pub async fn delete_tracked(
    c: &Clients,
    tracker: &Tracker,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> CleanupReport {
    let deadline = Instant::now() + timeout;
    let mut report = CleanupReport::default();
    let done = |report: &mut CleanupReport, kind: Kind, n: u64| {
        if n > 0 {
            *report.deleted.entry(kind).or_default() += n;
        }
    };

    let addresses = tracker.alive(Kind::Address);
    if !addresses.is_empty() {
        progress(&format!("releasing {} address(es)", addresses.len()));
    }
    for id in addresses {
        let is_alloc = id.starts_with("eipalloc-");
        // Disassociate first where it is associated (a release would fail).
        let desc = if is_alloc {
            c.ec2.describe_addresses().allocation_ids(&id).send().await
        } else {
            c.ec2.describe_addresses().public_ips(&id).send().await
        };
        if let Ok(d) = desc {
            for a in d.addresses() {
                let r = match (a.association_id(), a.public_ip()) {
                    (Some(assoc), _) => {
                        c.ec2
                            .disassociate_address()
                            .association_id(assoc)
                            .send()
                            .await
                    }
                    (None, Some(ip)) if a.instance_id().is_some() && !is_alloc => {
                        c.ec2.disassociate_address().public_ip(ip).send().await
                    }
                    _ => continue,
                };
                if let Err(e) = r {
                    tracing::debug!("disassociate {id}: {}", err_text(&e));
                }
            }
        }
        let res = with_retry(deadline, || {
            let req = c.ec2.release_address();
            let req = if is_alloc {
                req.allocation_id(&id)
            } else {
                req.public_ip(&id)
            };
            req.send()
        })
        .await
        .map(drop);
        settle(tracker, &mut report, Kind::Address, id, res, |w| {
            w.contains("NotFound")
        })
        .await;
    }

    let instances = tracker.alive(Kind::Instance);
    if !instances.is_empty() {
        progress(&format!("terminating {} instance(s)", instances.len()));
    }
    for chunk in instances.chunks(50) {
        let mut req = c.ec2.terminate_instances();
        for id in chunk {
            req = req.instance_ids(id);
        }
        match with_retry(deadline, || req.clone().send()).await {
            Ok(_) => {
                for id in chunk {
                    tracker.deleted(Kind::Instance, id).await;
                }
                done(&mut report, Kind::Instance, chunk.len() as u64);
            }
            Err(why) if chunk.len() > 1 && why.starts_with("InvalidInstanceID") => {
                // One id is gone already: go one by one.
                for id in chunk {
                    let res = with_retry(deadline, || {
                        c.ec2.terminate_instances().instance_ids(id).send()
                    })
                    .await
                    .map(drop);
                    settle(tracker, &mut report, Kind::Instance, id.clone(), res, |w| {
                        w.starts_with("InvalidInstanceID")
                    })
                    .await;
                }
            }
            Err(why) if why.starts_with("InvalidInstanceID") => {
                for id in chunk {
                    tracker.deleted(Kind::Instance, id).await;
                }
            }
            Err(why) => {
                for id in chunk {
                    report
                        .failed
                        .push((Kind::Instance, id.clone(), why.clone()));
                }
            }
        }
    }

    let volumes = tracker.alive(Kind::Volume);
    if !volumes.is_empty() {
        progress(&format!("deleting {} volume(s)", volumes.len()));
    }
    for id in volumes {
        // Volumes still attached to an instance that is going detach with it; retry meanwhile.
        let res = with_retry(deadline, || c.ec2.delete_volume().volume_id(&id).send())
            .await
            .map(drop);
        settle(tracker, &mut report, Kind::Volume, id, res, |w| {
            w.starts_with("InvalidVolume.NotFound")
        })
        .await;
    }

    let snapshots = tracker.alive(Kind::Snapshot);
    if !snapshots.is_empty() {
        progress(&format!("deleting {} snapshot(s)", snapshots.len()));
    }
    for id in snapshots {
        let res = with_retry(deadline, || c.ec2.delete_snapshot().snapshot_id(&id).send())
            .await
            .map(drop);
        settle(tracker, &mut report, Kind::Snapshot, id, res, |w| {
            w.starts_with("InvalidSnapshot.NotFound")
        })
        .await;
    }

    let keys = tracker.alive(Kind::KeyPair);
    if !keys.is_empty() {
        progress(&format!("deleting {} key pair(s)", keys.len()));
    }
    for name in keys {
        // DeleteKeyPair succeeds for a missing key too: idempotent.
        let res = with_retry(deadline, || c.ec2.delete_key_pair().key_name(&name).send())
            .await
            .map(drop);
        settle(tracker, &mut report, Kind::KeyPair, name, res, |_| false).await;
    }

    let groups = tracker.alive(Kind::SecurityGroup);
    if !groups.is_empty() {
        progress(&format!("deleting {} security group(s)", groups.len()));
    }
    for id in groups {
        // DependencyViolation while terminated instances still hold it: retried.
        let res = with_retry(deadline, || {
            c.ec2.delete_security_group().group_id(&id).send()
        })
        .await
        .map(drop);
        settle(tracker, &mut report, Kind::SecurityGroup, id, res, |w| {
            w.starts_with("InvalidGroup.NotFound")
        })
        .await;
    }

    let buckets = tracker.alive(Kind::Bucket);
    if !buckets.is_empty() {
        progress(&format!(
            "emptying and deleting {} bucket(s)",
            buckets.len()
        ));
    }
    for b in buckets {
        match delete_bucket(c, &b, deadline).await {
            Ok(Emptied {
                objects,
                bytes,
                gone_already,
            }) => {
                tracker.deleted(Kind::Bucket, &b).await;
                tracker.objects_gone(objects);
                tracker.release_bytes(bytes);
                if !gone_already {
                    done(&mut report, Kind::Bucket, 1);
                }
                done(&mut report, Kind::Object, objects);
            }
            Err(why) => report.failed.push((Kind::Bucket, b, why)),
        }
    }
    report
}

/// What is left of a run after a sweep, by a fresh listing of the cloud;
/// the error names the listing that failed (then nobody knows what is left).
pub type Leftovers = Result<Found, String>;

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

/// Codes worth another try during clean-up (the resource is busy, or we are throttled).
fn transient(code: &str) -> bool {
    crate::stats::is_throttle_code(code)
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

/// Sends until success, a permanent error, or the deadline; errors as "CODE: message".
pub async fn with_retry<T, E, F, Fut>(deadline: Instant, mut send: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
            Output = Result<
                T,
                aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
            >,
        >,
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut pause = Duration::from_millis(500);
    loop {
        // Boxed: a run's ops call this (s3:DeleteBucket empties a bucket),
        // and an inline SDK future would swell every op's future.
        match Box::pin(send()).await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let f = classify(&e);
                if !transient(&f.code) || Instant::now() + pause > deadline {
                    return Err(format!("{}: {}", f.code, f.message));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What emptying and deleting a bucket did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Emptied {
    /// Objects deleted (the marker not counted: it is not a user's object).
    pub objects: u64,
    pub bytes: u64,
    /// The cloud no longer had the bucket: nothing was deleted now.
    pub gone_already: bool,
}

/// Aborts the uploads, deletes every object of one of the run's buckets
/// (its marker last, with the bucket), then the bucket.
pub(super) async fn delete_bucket(
    c: &Clients,
    bucket: &str,
    deadline: Instant,
) -> Result<Emptied, String> {
    let gone = Emptied {
        gone_already: true,
        ..Emptied::default()
    };
    let s3 = &c.s3;
    let mut done = Emptied::default();
    match with_retry(deadline, || {
        s3.list_multipart_uploads().bucket(bucket).send()
    })
    .await
    {
        Ok(ups) => {
            for u in ups.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    let _ = s3
                        .abort_multipart_upload()
                        .bucket(bucket)
                        .key(k)
                        .upload_id(id)
                        .send()
                        .await;
                }
            }
        }
        Err(why) if why.starts_with("NoSuchBucket") => return Ok(gone),
        Err(why) => tracing::debug!("list uploads of {bucket}: {why}"),
    }
    let mut v1 = false;
    loop {
        // (key, size) of the first page; ListObjects V1 where V2 is not known.
        let listed: Result<Vec<(String, u64)>, String> = if v1 {
            with_retry(deadline, || s3.list_objects().bucket(bucket).send())
                .await
                .map(|p| {
                    p.contents()
                        .iter()
                        .filter_map(|o| {
                            Some((o.key()?.to_string(), o.size().unwrap_or(0).max(0) as u64))
                        })
                        .collect()
                })
        } else {
            with_retry(deadline, || s3.list_objects_v2().bucket(bucket).send())
                .await
                .map(|p| {
                    p.contents()
                        .iter()
                        .filter_map(|o| {
                            Some((o.key()?.to_string(), o.size().unwrap_or(0).max(0) as u64))
                        })
                        .collect()
                })
        };
        let listed = match listed {
            Ok(p) => p,
            Err(why) if why.starts_with("NoSuchBucket") => {
                done.gone_already = done.objects == 0;
                return Ok(done);
            }
            Err(why)
                if !v1
                    && [
                        "NotImplemented",
                        "HTTP 501",
                        "InvalidArgument",
                        "UnsupportedArgument",
                    ]
                    .iter()
                    .any(|c| why.starts_with(c)) =>
            {
                v1 = true;
                continue;
            }
            Err(why) => return Err(why),
        };
        let keys: Vec<ObjectIdentifier> = listed
            .iter()
            .filter_map(|(k, _)| ObjectIdentifier::builder().key(k).build().ok())
            .collect();
        if keys.is_empty() {
            break;
        }
        let ours = |k: &str| k != MARKER_KEY;
        let n = listed.iter().filter(|(k, _)| ours(k)).count() as u64;
        let size: u64 = listed.iter().filter(|(k, _)| ours(k)).map(|(_, s)| s).sum();
        let delete = Delete::builder()
            .set_objects(Some(keys))
            .quiet(true)
            .build()
            .map_err(|e| e.to_string())?;
        let out = with_retry(deadline, || {
            s3.delete_objects()
                .bucket(bucket)
                .delete(delete.clone())
                .send()
        })
        .await?;
        if let Some(e) = out.errors().first() {
            return Err(format!(
                "{}: {}",
                e.code().unwrap_or("DeleteObjects"),
                e.message().unwrap_or("an object could not be deleted")
            ));
        }
        done.objects += n;
        done.bytes += size;
    }
    match with_retry(deadline, || s3.delete_bucket().bucket(bucket).send()).await {
        Ok(_) => Ok(done),
        Err(why) if why.starts_with("NoSuchBucket") => {
            done.gone_already = done.objects == 0;
            Ok(done)
        }
        Err(why) => Err(why),
    }
}
