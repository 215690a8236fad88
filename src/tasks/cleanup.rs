//! Clean-up: deletes every resource the run still tracks as alive
//! (instances, volumes, buckets with their objects), retrying what the cloud
//! is not ready to delete yet, and reports what it could not delete.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::RunCtx;
use super::errors::classify;
use crate::resources::Kind;

/// What a clean-up did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CleanupReport {
    pub deleted: BTreeMap<Kind, u64>,
    /// (kind, id, why) of what is left.
    pub failed: Vec<(Kind, String, String)>,
}

/// Deletes everything the run's tracker holds; gives up on a resource at `deadline`.
pub async fn delete_tracked(
    ctx: &RunCtx,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> CleanupReport {
    let deadline = Instant::now() + timeout;
    let mut report = CleanupReport::default();

    let instances = ctx.tracker.alive(Kind::Instance);
    if !instances.is_empty() {
        progress(&format!("terminating {} instance(s)", instances.len()));
    }
    for chunk in instances.chunks(50) {
        let mut req = ctx.clients.ec2.terminate_instances();
        for id in chunk {
            req = req.instance_ids(id);
        }
        match retry(deadline, || req.clone().send()).await {
            Ok(_) => {
                for id in chunk {
                    ctx.tracker.deleted(Kind::Instance, id).await;
                }
                *report.deleted.entry(Kind::Instance).or_default() += chunk.len() as u64;
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

    let volumes = ctx.tracker.alive(Kind::Volume);
    if !volumes.is_empty() {
        progress(&format!("deleting {} volume(s)", volumes.len()));
    }
    for id in volumes {
        let res = retry(deadline, || {
            ctx.clients.ec2.delete_volume().volume_id(&id).send()
        })
        .await;
        match res {
            Ok(_) => {
                ctx.tracker.deleted(Kind::Volume, &id).await;
                *report.deleted.entry(Kind::Volume).or_default() += 1;
            }
            Err(why) if why.starts_with("InvalidVolume.NotFound") => {
                ctx.tracker.deleted(Kind::Volume, &id).await;
            }
            Err(why) => report.failed.push((Kind::Volume, id, why)),
        }
    }

    let buckets = ctx.tracker.alive(Kind::Bucket);
    if !buckets.is_empty() {
        progress(&format!(
            "emptying and deleting {} bucket(s)",
            buckets.len()
        ));
    }
    for b in buckets {
        match delete_bucket(ctx, &b, deadline).await {
            Ok(objects) => {
                ctx.tracker.deleted(Kind::Bucket, &b).await;
                ctx.tracker.objects_gone(objects);
                *report.deleted.entry(Kind::Bucket).or_default() += 1;
                *report.deleted.entry(Kind::Object).or_default() += objects;
            }
            Err(why) => report.failed.push((Kind::Bucket, b, why)),
        }
    }
    report
}

/// Codes worth another try during clean-up (the resource is busy, or we are throttled).
fn transient(code: &str) -> bool {
    crate::stats::is_throttle_code(code)
        || matches!(
            code,
            "IncorrectState"
                | "VolumeInUse"
                | "DependencyViolation"
                | "timeout"
                | "reset"
                | "refused"
                | "HTTP 500"
                | "InternalError"
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
        match send().await {
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

/// Deletes every object of one of the run's buckets, then the bucket; returns
/// how many objects went.
async fn delete_bucket(ctx: &RunCtx, bucket: &str, deadline: Instant) -> Result<u64, String> {
    let s3 = &ctx.clients.s3;
    let mut deleted = 0u64;
    loop {
        let page = retry(deadline, || s3.list_objects_v2().bucket(bucket).send()).await;
        let page = match page {
            Ok(p) => p,
            Err(why) if why.starts_with("NoSuchBucket") => return Ok(deleted),
            Err(why) => return Err(why),
        };
        let keys: Vec<ObjectIdentifier> = page
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
            .collect();
        if keys.is_empty() {
            break;
        }
        let n = keys.len() as u64;
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
    }
    match retry(deadline, || s3.delete_bucket().bucket(bucket).send()).await {
        Ok(_) => Ok(deleted),
        Err(why) if why.starts_with("NoSuchBucket") => Ok(deleted),
        Err(why) => Err(why),
    }
}
