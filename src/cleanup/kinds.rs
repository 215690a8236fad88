//! The per-kind table of clean-up: for each kind of resource, which service
//! holds it, how the cloud lists what proves to be a run's (the run tag,
//! checked on each answer and not only by the filter, in case a cloud
//! ignores filters; an id or name the journal holds; a bucket's marker),
//! and how one is deleted (with what the cloud answers for one that is
//! already gone).

use std::future::Future;
use std::time::Instant;

use aws_sdk_ec2::types::{Filter, Tag, VolumeState};
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::Proof;
use super::retry::with_retry;
use crate::naming::{MARKER_KEY, is_run_name, name_tag_of, run_tag_of};
use crate::resources::{Kind, Tracker};
use crate::target::Clients;

/// The service that holds a kind (objects go with their buckets: none).
pub enum Service {
    Ec2,
    S3,
}

pub fn service_of(kind: Kind) -> Option<Service> {
    match kind {
        Kind::Object => None,
        Kind::Bucket => Some(Service::S3),
        _ => Some(Service::Ec2),
    }
}

/// What the progress line says is being done to a kind.
pub fn verb(kind: Kind) -> &'static str {
    match kind {
        Kind::Address => "releasing",
        Kind::Instance => "terminating",
        Kind::Bucket => "emptying and deleting",
        _ => "deleting",
    }
}

/// How deleting one resource ended.
pub enum Outcome {
    /// Deleted now (a bucket: with this many of its objects and bytes).
    Deleted {
        objects: u64,
        bytes: u64,
    },
    /// The cloud no longer had it.
    Gone,
    Failed(String),
}

/// The error codes with which the cloud says a resource of `kind` is gone.
fn gone(kind: Kind, why: &str) -> bool {
    let codes: &[&str] = match kind {
        // InvalidAllocationID.NotFound, InvalidAddress.NotFound...
        Kind::Address => return why.contains("NotFound"),
        // Not InvalidInstanceID.Malformed: that is a refusal, not a gone instance.
        Kind::Instance => &["InvalidInstanceID.NotFound"],
        Kind::Volume => &["InvalidVolume.NotFound"],
        Kind::Snapshot => &["InvalidSnapshot.NotFound"],
        Kind::SecurityGroup => &["InvalidGroup.NotFound"],
        Kind::Bucket => &["NoSuchBucket"],
        // DeleteKeyPair succeeds for a missing key too.
        Kind::KeyPair | Kind::Object => &[],
    };
    codes.iter().any(|c| why.starts_with(c))
}

fn outcome(kind: Kind, res: Result<(), String>) -> Outcome {
    match res {
        Ok(()) => Outcome::Deleted {
            objects: 0,
            bytes: 0,
        },
        Err(why) if gone(kind, &why) => Outcome::Gone,
        Err(why) => Outcome::Failed(why),
    }
}

/// Deletes `ids` of `kind`, each retried until `deadline`.
pub async fn delete(
    c: &Clients,
    kind: Kind,
    ids: Vec<String>,
    deadline: Instant,
) -> Vec<(String, Outcome)> {
    if kind == Kind::Instance {
        return terminate(c, ids, deadline).await;
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let res = match kind {
            Kind::Address => release_address(c, &id, deadline).await,
            Kind::Volume => {
                // Attached to an instance that is going: detaches with it; retried meanwhile.
                let del = || c.ec2.delete_volume().volume_id(&id).send();
                with_retry(deadline, del).await.map(drop)
            }
            Kind::Snapshot => {
                let del = || c.ec2.delete_snapshot().snapshot_id(&id).send();
                with_retry(deadline, del).await.map(drop)
            }
            Kind::KeyPair => {
                let del = || c.ec2.delete_key_pair().key_name(&id).send();
                with_retry(deadline, del).await.map(drop)
            }
            Kind::SecurityGroup => {
                // DependencyViolation while terminated instances still hold it: retried.
                let del = || c.ec2.delete_security_group().group_id(&id).send();
                with_retry(deadline, del).await.map(drop)
            }
            Kind::Bucket => {
                let o = match delete_bucket(c, &id, deadline).await {
                    Ok(e) if e.gone_already => Outcome::Gone,
                    Ok(e) => Outcome::Deleted {
                        objects: e.objects,
                        bytes: e.bytes,
                    },
                    Err(why) => Outcome::Failed(why),
                };
                out.push((id, o));
                continue;
            }
            Kind::Instance | Kind::Object => continue,
        };
        out.push((id.clone(), outcome(kind, res)));
    }
    out
}

/// Terminates instances 50 to a call; one by one when a batch names one
/// that is gone already.
async fn terminate(c: &Clients, ids: Vec<String>, deadline: Instant) -> Vec<(String, Outcome)> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(50) {
        let req = c
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(chunk.to_vec()));
        match with_retry(deadline, || req.clone().send()).await {
            Ok(_) => out.extend(
                chunk
                    .iter()
                    .map(|id| (id.clone(), outcome(Kind::Instance, Ok(())))),
            ),
            Err(why) if chunk.len() > 1 && gone(Kind::Instance, &why) => {
                for id in chunk {
                    let one = || c.ec2.terminate_instances().instance_ids(id).send();
                    let res = with_retry(deadline, one).await.map(drop);
                    out.push((id.clone(), outcome(Kind::Instance, res)));
                }
            }
            Err(why) => out.extend(
                chunk
                    .iter()
                    .map(|id| (id.clone(), outcome(Kind::Instance, Err(why.clone())))),
            ),
        }
    }
    out
}

/// Releases an address (a VPC allocation id or a classic public IP),
/// disassociating it first where it is associated (a release would fail).
async fn release_address(c: &Clients, id: &str, deadline: Instant) -> Result<(), String> {
    let is_alloc = id.starts_with("eipalloc-");
    let desc = if is_alloc {
        c.ec2.describe_addresses().allocation_ids(id).send().await
    } else {
        c.ec2.describe_addresses().public_ips(id).send().await
    };
    if let Ok(d) = desc {
        for a in d.addresses() {
            let r = match (a.association_id(), a.public_ip()) {
                (Some(assoc), _) => {
                    let d = c.ec2.disassociate_address().association_id(assoc);
                    d.send().await
                }
                (None, Some(ip)) if a.instance_id().is_some() && !is_alloc => {
                    c.ec2.disassociate_address().public_ip(ip).send().await
                }
                _ => continue,
            };
            if let Err(e) = r {
                let f = crate::failure::classify(&e);
                tracing::debug!("disassociate {id}: {}: {}", f.code, f.message);
            }
        }
    }
    let release = || {
        let req = c.ec2.release_address();
        let req = if is_alloc {
            req.allocation_id(id)
        } else {
            req.public_ip(id)
        };
        req.send()
    };
    with_retry(deadline, release).await.map(drop)
}

/// Why a listed EC2 resource is the run's: the journal (by any of `ids`),
/// else its tag, if its name (`name`, else its `Name` tag) is in the
/// tracker's scope; None when neither says so.
fn proof(
    tracker: &Tracker,
    kind: Kind,
    tags: &[Tag],
    ids: &[&str],
    name: Option<&str>,
) -> Option<Proof> {
    let tagged = run_tag_of(tags) == Some(tracker.run_id().as_str());
    if tagged && tracker.in_scope(name.or(name_tag_of(tags))) {
        Some(Proof::Tag)
    } else if ids.iter().any(|i| tracker.knows(kind, i)) {
        Some(Proof::Journal)
    } else {
        None
    }
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

/// Every page of a listing: `page(token)` answers one page's finds and
/// the next token.
async fn paged<Fut>(
    mut page: impl FnMut(Option<String>) -> Fut,
) -> Result<Vec<(String, Proof)>, String>
where
    Fut: Future<Output = Result<(Vec<(String, Proof)>, Option<String>), String>>,
{
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let (found, next) = page(token).await?;
        all.extend(found);
        token = next.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(all);
        }
    }
}

/// What of the tracker's run the cloud lists for `kind`, with proofs.
pub async fn list(
    c: &Clients,
    tracker: &Tracker,
    kind: Kind,
    deadline: Instant,
) -> Result<Vec<(String, Proof)>, String> {
    match kind {
        Kind::Instance => instances(c, tracker, deadline).await,
        Kind::Volume => volumes(c, tracker, deadline).await,
        Kind::Snapshot => snapshots(c, tracker, deadline).await,
        Kind::Address => addresses(c, tracker, deadline).await,
        Kind::KeyPair => key_pairs(c, tracker, deadline).await,
        Kind::SecurityGroup => groups(c, tracker, deadline).await,
        Kind::Bucket => buckets(c, tracker, deadline).await,
        Kind::Object => Ok(vec![]),
    }
}

/// Filters for a kind's listing: by the run tag, then by the ids the
/// journal holds (a cloud that dropped the tags).
fn by_tag_and_journal(tracker: &Tracker, kind: Kind, id_name: &str) -> Vec<Filter> {
    [
        Some(tracker.run_id().tag_filter()),
        id_filter(id_name, &tracker.alive(kind)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Live instances (pending to stopped) of the run.
async fn instances(
    c: &Clients,
    tracker: &Tracker,
    deadline: Instant,
) -> Result<Vec<(String, Proof)>, String> {
    let kind = Kind::Instance;
    let ec2 = &c.ec2;
    let mut out = Vec::new();
    let live = Filter::builder()
        .name("instance-state-name")
        .set_values(Some(
            ["pending", "running", "stopping", "stopped"]
                .map(String::from)
                .to_vec(),
        ))
        .build();
    for f in by_tag_and_journal(tracker, kind, "instance-id") {
        out.extend(
            paged(|token| {
                let req = ec2
                    .describe_instances()
                    .filters(f.clone())
                    .filters(live.clone())
                    .set_next_token(token);
                async move {
                    let p = with_retry(deadline, || req.clone().send())
                        .await
                        .map_err(|e| format!("DescribeInstances: {e}"))?;
                    let found = p
                        .reservations()
                        .iter()
                        .flat_map(|r| r.instances())
                        .filter_map(|i| {
                            let id = i.instance_id()?;
                            Some((id.to_string(), proof(tracker, kind, i.tags(), &[id], None)?))
                        })
                        .collect();
                    Ok((found, p.next_token().map(str::to_string)))
                }
            })
            .await?,
        );
    }
    Ok(out)
}

/// Volumes of the run that are not being deleted.
async fn volumes(
    c: &Clients,
    tracker: &Tracker,
    deadline: Instant,
) -> Result<Vec<(String, Proof)>, String> {
    let kind = Kind::Volume;
    let ec2 = &c.ec2;
    let mut out = Vec::new();
    for f in by_tag_and_journal(tracker, kind, "volume-id") {
        out.extend(
            paged(|token| {
                let req = ec2
                    .describe_volumes()
                    .filters(f.clone())
                    .set_next_token(token);
                async move {
                    let p = with_retry(deadline, || req.clone().send())
                        .await
                        .map_err(|e| format!("DescribeVolumes: {e}"))?;
                    let found = p
                        .volumes()
                        .iter()
                        .filter(|v| {
                            !matches!(
                                v.state(),
                                Some(VolumeState::Deleting | VolumeState::Deleted)
                            )
                        })
                        .filter_map(|v| {
                            let id = v.volume_id()?;
                            Some((id.to_string(), proof(tracker, kind, v.tags(), &[id], None)?))
                        })
                        .collect();
                    Ok((found, p.next_token().map(str::to_string)))
                }
            })
            .await?,
        );
    }
    Ok(out)
}

/// The run's snapshots.
async fn snapshots(
    c: &Clients,
    tracker: &Tracker,
    deadline: Instant,
) -> Result<Vec<(String, Proof)>, String> {
    let kind = Kind::Snapshot;
    let ec2 = &c.ec2;
    let mut out = Vec::new();
    for f in by_tag_and_journal(tracker, kind, "snapshot-id") {
        out.extend(
            paged(|token| {
                let req = ec2
                    .describe_snapshots()
                    .owner_ids("self")
                    .filters(f.clone())
                    .set_next_token(token);
                async move {
                    let p = with_retry(deadline, || req.clone().send())
                        .await
                        .map_err(|e| format!("DescribeSnapshots: {e}"))?;
                    let found = p
                        .snapshots()
                        .iter()
                        .filter_map(|s| {
                            let id = s.snapshot_id()?;
                            Some((id.to_string(), proof(tracker, kind, s.tags(), &[id], None)?))
                        })
                        .collect();
                    Ok((found, p.next_token().map(str::to_string)))
                }
            })
            .await?,
        );
    }
    Ok(out)
}

/// The run's addresses: by tag; the journal's among all of them (their
/// key is an allocation id or, on classic clouds, a public IP).
async fn addresses(
    c: &Clients,
    tracker: &Tracker,
    deadline: Instant,
) -> Result<Vec<(String, Proof)>, String> {
    let kind = Kind::Address;
    let run = tracker.run_id();
    let ec2 = &c.ec2;
    let mut out = Vec::new();
    // By tag; the journal's are looked for among all of them (their
    // key is an allocation id or, on classic clouds, a public IP).
    let mut filters = vec![Some(run.tag_filter())];
    if !tracker.alive(kind).is_empty() {
        filters.push(None);
    }
    for f in filters {
        let req = ec2.describe_addresses().set_filters(f.map(|f| vec![f]));
        let p = with_retry(deadline, || req.clone().send())
            .await
            .map_err(|e| format!("DescribeAddresses: {e}"))?;
        out.extend(p.addresses().iter().filter_map(|a| {
            let ids: Vec<&str> = [a.allocation_id(), a.public_ip()]
                .into_iter()
                .flatten()
                .collect();
            Some((
                ids.first()?.to_string(),
                proof(tracker, kind, a.tags(), &ids, None)?,
            ))
        }));
    }
    Ok(out)
}

/// The run's key pairs: the name narrows the listing, the tag or the
/// journal proves.
async fn key_pairs(
    c: &Clients,
    tracker: &Tracker,
    deadline: Instant,
) -> Result<Vec<(String, Proof)>, String> {
    let kind = Kind::KeyPair;
    let run = tracker.run_id();
    let ec2 = &c.ec2;
    let mut out = Vec::new();
    let named = Filter::builder()
        .name("key-name")
        .values(format!("cs-{run}-*"))
        .build();
    let req = ec2.describe_key_pairs().filters(named);
    let p = with_retry(deadline, || req.clone().send())
        .await
        .map_err(|e| format!("DescribeKeyPairs: {e}"))?;
    out.extend(p.key_pairs().iter().filter_map(|k| {
        let n = k.key_name()?;
        Some((
            n.to_string(),
            proof(tracker, kind, k.tags(), &[n], Some(n))?,
        ))
    }));
    Ok(out)
}

/// The run's security groups: the name narrows the listing, the tag or
/// the journal proves.
async fn groups(
    c: &Clients,
    tracker: &Tracker,
    deadline: Instant,
) -> Result<Vec<(String, Proof)>, String> {
    let kind = Kind::SecurityGroup;
    let run = tracker.run_id();
    let ec2 = &c.ec2;
    let named = Filter::builder()
        .name("group-name")
        .values(format!("cs-{run}-*"))
        .build();
    let out = paged(|token| {
        let req = ec2
            .describe_security_groups()
            .filters(named.clone())
            .set_next_token(token);
        async move {
            let p = with_retry(deadline, || req.clone().send())
                .await
                .map_err(|e| format!("DescribeSecurityGroups: {e}"))?;
            let found = p
                .security_groups()
                .iter()
                .filter_map(|g| {
                    let ids: Vec<&str> = [g.group_id(), g.group_name()]
                        .into_iter()
                        .flatten()
                        .collect();
                    let id = g.group_id()?;
                    Some((
                        id.to_string(),
                        proof(tracker, kind, g.tags(), &ids, g.group_name())?,
                    ))
                })
                .collect();
            Ok((found, p.next_token().map(str::to_string)))
        }
    })
    .await?;
    Ok(out)
}

/// The run's buckets: named like the run's, and the journal names them or
/// their marker holds the run id.
async fn buckets(
    c: &Clients,
    tracker: &Tracker,
    deadline: Instant,
) -> Result<Vec<(String, Proof)>, String> {
    let kind = Kind::Bucket;
    let run = tracker.run_id();
    let mut out = Vec::new();
    for name in list_bucket_names(c, deadline).await? {
        if !is_run_name(&name, run) {
            continue;
        }
        if tracker.knows(kind, &name) {
            out.push((name, Proof::Journal));
        } else if tracker.in_scope(Some(&name))
            && marker_of(c, &name, deadline).await?.as_deref() == Some(run.as_str())
        {
            out.push((name, Proof::Marker));
        }
    }
    Ok(out)
}

/// Every bucket's name (following continuation tokens where the server
/// gives them), retried through throttling until `deadline`.
pub async fn list_bucket_names(c: &Clients, deadline: Instant) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = c.s3.list_buckets().set_continuation_token(token.clone());
        let page = with_retry(deadline, || req.clone().send())
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

/// Reads a bucket's marker: Some(run id) when it holds one, None when it
/// does not (or is gone, or is not ours to read); an error when the cloud
/// would not say (throttled past the deadline, down).
pub async fn marker_of(
    c: &Clients,
    bucket: &str,
    deadline: Instant,
) -> Result<Option<String>, String> {
    let get = || c.s3.get_object().bucket(bucket).key(MARKER_KEY).send();
    match with_retry(deadline, get).await {
        Ok(o) => {
            let body = o
                .body
                .collect()
                .await
                .map_err(|e| format!("GetObject {bucket}/{MARKER_KEY}: {e}"))?;
            Ok(Some(
                String::from_utf8_lossy(&body.into_bytes())
                    .trim()
                    .to_string(),
            ))
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

/// What emptying and deleting a bucket did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Emptied {
    /// Objects deleted (the marker not counted: it is not a user's object).
    pub objects: u64,
    pub bytes: u64,
    /// The cloud no longer had the bucket: nothing was deleted now.
    pub gone_already: bool,
}

/// One page of a bucket's objects as (key, size); ListObjects V1 where V2
/// is not known.
async fn list_page(
    c: &Clients,
    bucket: &str,
    v1: bool,
    deadline: Instant,
) -> Result<Vec<(String, u64)>, String> {
    let pair =
        |k: Option<&str>, s: Option<i64>| Some((k?.to_string(), s.unwrap_or(0).max(0) as u64));
    if v1 {
        let p = with_retry(deadline, || c.s3.list_objects().bucket(bucket).send()).await?;
        Ok(p.contents()
            .iter()
            .filter_map(|o| pair(o.key(), o.size()))
            .collect())
    } else {
        let p = with_retry(deadline, || c.s3.list_objects_v2().bucket(bucket).send()).await?;
        Ok(p.contents()
            .iter()
            .filter_map(|o| pair(o.key(), o.size()))
            .collect())
    }
}

/// Aborts the uploads, deletes every object of one of the run's buckets
/// (its marker with the rest), then the bucket.
pub async fn delete_bucket(
    c: &Clients,
    bucket: &str,
    deadline: Instant,
) -> Result<Emptied, String> {
    let s3 = &c.s3;
    let gone = Emptied {
        gone_already: true,
        ..Emptied::default()
    };
    match with_retry(deadline, || {
        s3.list_multipart_uploads().bucket(bucket).send()
    })
    .await
    {
        Ok(ups) => {
            for u in ups.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    let abort = s3
                        .abort_multipart_upload()
                        .bucket(bucket)
                        .key(k)
                        .upload_id(id);
                    let _ = abort.send().await;
                }
            }
        }
        Err(why) if why.starts_with("NoSuchBucket") => return Ok(gone),
        Err(why) => tracing::debug!("list uploads of {bucket}: {why}"),
    }
    let mut done = Emptied::default();
    let mut v1 = false;
    loop {
        // A server that answers every DeleteObjects but keeps listing the
        // keys would hold this loop: the deadline ends it.
        if Instant::now() > deadline {
            return Err(format!(
                "timeout: {bucket} still lists objects after they were deleted"
            ));
        }
        let listed = match list_page(c, bucket, v1, deadline).await {
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
        if listed.is_empty() {
            break;
        }
        let keys: Vec<ObjectIdentifier> = listed
            .iter()
            .filter_map(|(k, _)| ObjectIdentifier::builder().key(k).build().ok())
            .collect();
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
        for (_, size) in listed.iter().filter(|(k, _)| k != MARKER_KEY) {
            done.objects += 1;
            done.bytes += size;
        }
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
