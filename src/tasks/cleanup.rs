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
use crate::resources::{Kind, RUN_TAG};
use crate::target::Clients;

/// What a clean-up did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CleanupReport {
    pub deleted: BTreeMap<Kind, u64>,
    /// (kind, id, why) of what is left.
    pub failed: Vec<(Kind, String, String)>,
}

/// True when `name` is one of run `run_id`'s names (`cs-<runid>-<n>`).
pub fn is_run_name(name: &str, run_id: &str) -> bool {
    !run_id.is_empty()
        && name
            .strip_prefix("cs-")
            .and_then(|r| r.strip_prefix(run_id))
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// The run a name such as `cs-k3x9q2ab-12` belongs to, if it has exactly
/// the shape cloudswarm gives names (a run id as `new_run_id` makes them:
/// 8 lowercase letters and digits, a letter first; then a number). Finding
/// runs by name is stricter than cleaning one up, so that a bucket such as
/// `cs-data-2024` is not taken for a run.
pub fn run_of_name(name: &str) -> Option<&str> {
    let (run_id, _) = name.strip_prefix("cs-")?.split_once('-')?;
    let shaped = run_id.len() == 8
        && run_id.starts_with(|c: char| c.is_ascii_lowercase())
        && run_id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (shaped && is_run_name(name, run_id)).then_some(run_id)
}

fn tag_filter(run_id: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{RUN_TAG}"))
        .values(run_id)
        .build()
}

fn err_text<E>(e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = classify(e);
    format!("{}: {}", f.code, f.message)
}

/// Lists what of run `run_id` the cloud still holds: tagged EC2 resources
/// that are not gone, and buckets with the run's name prefix. `ec2` / `s3`
/// say which services to look at. Errors name the listing that failed.
pub async fn list_run(
    c: &Clients,
    run_id: &str,
    ec2: bool,
    s3: bool,
) -> Result<BTreeMap<Kind, Vec<String>>, String> {
    assert!(!run_id.is_empty(), "a run id is needed to filter by");
    let mut out: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
    if ec2 {
        let live = Filter::builder()
            .name("instance-state-name")
            .values("pending")
            .values("running")
            .values("stopping")
            .values("stopped")
            .build();
        let mut pages = c
            .ec2
            .describe_instances()
            .filters(tag_filter(run_id))
            .filters(live)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| format!("DescribeInstances: {}", err_text(&e)))?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                if let Some(id) = i.instance_id() {
                    out.entry(Kind::Instance).or_default().push(id.to_string());
                }
            }
        }
        let vols = c
            .ec2
            .describe_volumes()
            .filters(tag_filter(run_id))
            .send()
            .await
            .map_err(|e| format!("DescribeVolumes: {}", err_text(&e)))?;
        for v in vols.volumes() {
            let going = matches!(
                v.state(),
                Some(
                    aws_sdk_ec2::types::VolumeState::Deleting
                        | aws_sdk_ec2::types::VolumeState::Deleted
                )
            );
            if let Some(id) = v.volume_id().filter(|_| !going) {
                out.entry(Kind::Volume).or_default().push(id.to_string());
            }
        }
        let snaps = c
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(tag_filter(run_id))
            .send()
            .await
            .map_err(|e| format!("DescribeSnapshots: {}", err_text(&e)))?;
        for s in snaps.snapshots() {
            if let Some(id) = s.snapshot_id() {
                out.entry(Kind::Snapshot).or_default().push(id.to_string());
            }
        }
        let addrs = c
            .ec2
            .describe_addresses()
            .filters(tag_filter(run_id))
            .send()
            .await
            .map_err(|e| format!("DescribeAddresses: {}", err_text(&e)))?;
        for a in addrs.addresses() {
            if let Some(id) = a.allocation_id().or(a.public_ip()) {
                out.entry(Kind::Address).or_default().push(id.to_string());
            }
        }
        let keys = c
            .ec2
            .describe_key_pairs()
            .filters(
                Filter::builder()
                    .name("key-name")
                    .values(format!("cs-{run_id}-*"))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| format!("DescribeKeyPairs: {}", err_text(&e)))?;
        for k in keys.key_pairs() {
            if let Some(n) = k.key_name().filter(|n| is_run_name(n, run_id)) {
                out.entry(Kind::KeyPair).or_default().push(n.to_string());
            }
        }
        let groups = c
            .ec2
            .describe_security_groups()
            .filters(
                Filter::builder()
                    .name("group-name")
                    .values(format!("cs-{run_id}-*"))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| format!("DescribeSecurityGroups: {}", err_text(&e)))?;
        for g in groups.security_groups() {
            if let (Some(id), Some(name)) = (g.group_id(), g.group_name())
                && is_run_name(name, run_id)
            {
                out.entry(Kind::SecurityGroup)
                    .or_default()
                    .push(id.to_string());
            }
        }
    }
    if s3 {
        let buckets =
            c.s3.list_buckets()
                .send()
                .await
                .map_err(|e| format!("ListBuckets: {}", err_text(&e)))?;
        for b in buckets.buckets() {
            if let Some(n) = b.name().filter(|n| is_run_name(n, run_id)) {
                out.entry(Kind::Bucket).or_default().push(n.to_string());
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    Ok(out)
}

/// Records one delete's outcome: gone (deleted now, or `already_gone` says
/// the cloud no longer has it) or failed with the reason.
async fn settle(
    tracker: &crate::resources::Tracker,
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
    tracker: &crate::resources::Tracker,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> CleanupReport {
    let deadline = Instant::now() + timeout;
    let mut report = CleanupReport::default();
    let done = |report: &mut CleanupReport, kind: Kind, n: u64| {
        *report.deleted.entry(kind).or_default() += n;
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
        let res = retry(deadline, || {
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
        match retry(deadline, || req.clone().send()).await {
            Ok(_) => {
                for id in chunk {
                    tracker.deleted(Kind::Instance, id).await;
                }
                done(&mut report, Kind::Instance, chunk.len() as u64);
            }
            Err(why) if chunk.len() > 1 && why.starts_with("InvalidInstanceID") => {
                // One id is gone already: go one by one.
                for id in chunk {
                    let res = retry(deadline, || {
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
        let res = retry(deadline, || c.ec2.delete_volume().volume_id(&id).send())
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
        let res = retry(deadline, || c.ec2.delete_snapshot().snapshot_id(&id).send())
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
        let res = retry(deadline, || c.ec2.delete_key_pair().key_name(&name).send())
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
        let res = retry(deadline, || {
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
            Ok((objects, bytes)) => {
                tracker.deleted(Kind::Bucket, &b).await;
                tracker.objects_gone(objects);
                tracker.release_bytes(bytes);
                done(&mut report, Kind::Bucket, 1);
                done(&mut report, Kind::Object, objects);
            }
            Err(why) => report.failed.push((Kind::Bucket, b, why)),
        }
    }
    report
}

/// What is left of a run after a sweep, by listing the cloud; the error
/// names the listing that failed.
pub type Leftovers = Result<BTreeMap<Kind, Vec<String>>, String>;

/// The whole clean-up of a run: deletes what the tracker holds, lists the
/// cloud for the run's tag and name prefix (resources whose id never reached
/// the tracker: a create cut short by the stop timeout or answered by a
/// timeout), deletes those too, and lists once more.
pub async fn sweep(
    c: &Clients,
    tracker: &crate::resources::Tracker,
    services: (bool, bool),
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> (CleanupReport, Leftovers) {
    let run_id = tracker.run_id().to_string();
    let deadline = Instant::now() + timeout;
    let mut report = delete_tracked(c, tracker, timeout, progress).await;
    let found = match list_run(c, &run_id, services.0, services.1).await {
        Ok(f) => f,
        Err(e) => return (report, Err(e)),
    };
    let extra: usize = found.values().map(Vec::len).sum();
    if extra > 0 {
        progress(&format!("{extra} more found in the cloud by tag and name"));
        for (kind, ids) in &found {
            for id in ids {
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
    let left = list_run(c, &run_id, services.0, services.1).await;
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
async fn retry<T, E, F, Fut>(deadline: Instant, mut send: F) -> Result<T, String>
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

/// Aborts the uploads, deletes every object of one of the run's buckets, then
/// the bucket; returns how many objects and bytes went.
pub(super) async fn delete_bucket(
    c: &Clients,
    bucket: &str,
    deadline: Instant,
) -> Result<(u64, u64), String> {
    let s3 = &c.s3;
    let (mut deleted, mut bytes) = (0u64, 0u64);
    match retry(deadline, || {
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
        Err(why) if why.starts_with("NoSuchBucket") => return Ok((0, 0)),
        Err(why) => tracing::debug!("list uploads of {bucket}: {why}"),
    }
    let mut v1 = false;
    loop {
        // (key, size) of the first page; ListObjects V1 where V2 is not known.
        let listed: Result<Vec<(String, u64)>, String> = if v1 {
            retry(deadline, || s3.list_objects().bucket(bucket).send())
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
            retry(deadline, || s3.list_objects_v2().bucket(bucket).send())
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
            Err(why) if why.starts_with("NoSuchBucket") => return Ok((deleted, bytes)),
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
        let n = keys.len() as u64;
        let size: u64 = listed.iter().map(|(_, s)| s).sum();
        let delete = Delete::builder()
            .set_objects(Some(keys))
            .quiet(true)
            .build()
            .map_err(|e| e.to_string())?;
        let out = retry(deadline, || {
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
        deleted += n;
        bytes += size;
    }
    match retry(deadline, || s3.delete_bucket().bucket(bucket).send()).await {
        Ok(_) => Ok((deleted, bytes)),
        Err(why) if why.starts_with("NoSuchBucket") => Ok((deleted, bytes)),
        Err(why) => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_match_exactly() {
        assert!(is_run_name("cs-abcd1234-1", "abcd1234"));
        assert!(is_run_name("cs-abcd1234-42", "abcd1234"));
        assert!(!is_run_name("cs-abcd1234-", "abcd1234"));
        assert!(!is_run_name("cs-abcd1234-x", "abcd1234"));
        assert!(!is_run_name("cs-abcd12345-1", "abcd1234"));
        assert!(!is_run_name("cs-abcd1234-1", ""));
        assert!(!is_run_name("operator-data", "abcd1234"));
    }

    #[test]
    fn runs_are_found_only_from_names_cloudswarm_gives() {
        assert_eq!(run_of_name("cs-abcd1234-1"), Some("abcd1234"));
        assert_eq!(run_of_name("cs-k3x9q2ab-120"), Some("k3x9q2ab"));
        for other in [
            "cs-data-2024",   // too short for a run id
            "cs-1bcd1234-1",  // a run id starts with a letter
            "cs-abcd1234-",   // no number
            "cs-abcd1234-1a", // not a number
            "cs-abcd1234",    // no number at all
            "cs-Abcd1234-1",  // upper case
            "cs-abcd12345-1", // too long
            "ops-abcd1234-1", // another prefix
            "cs--1",
        ] {
            assert_eq!(run_of_name(other), None, "{other}");
        }
    }
}
