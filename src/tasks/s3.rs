//! S3 ops: buckets named `cs-<runid>-<n>` (per user, or one shared by the
//! run), objects put from a shared random payload in fixed, ranged or
//! weighted sizes, read back whole or by range (with time to first byte),
//! listed (V2, falling back to V1 where the server lacks it), deleted one by
//! one or in batches, and multipart uploads that abort when a step fails.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
    Delete, ObjectIdentifier,
};

use super::{MAX_REMEMBERED_OBJECTS, Obj, RunCtx, StepError, StepResult, User, sdk};
use crate::failure::Failure;
use crate::naming::MARKER_KEY;
use crate::ops::{
    ABORT_MULTIPART_UPLOAD, COMPLETE_MULTIPART_UPLOAD, CREATE_MULTIPART_UPLOAD, DELETE_RUN_MARKER,
    GET_OBJECT_TTFB, Op, PUT_RUN_MARKER, UPLOAD_PART,
};
use crate::profile::BucketMode;
use crate::resources::Kind;
use crate::stats::Bytes;

/// Creates a bucket with the run's prefix, tracked, and puts the run's
/// marker in it; returns its name.
pub(super) async fn create_bucket_named(ctx: &RunCtx) -> Result<String, StepError> {
    let region = ctx.clients.info.region.as_str();
    let send = |bucket: String| {
        let mut req = ctx.clients.s3.create_bucket().bucket(bucket);
        if region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        req.send()
    };
    let made = |_: &aws_sdk_s3::operation::create_bucket::CreateBucketOutput, name: &str| {
        vec![name.to_string()]
    };
    let reserve = ctx.caps.of(Kind::Bucket).map(|cap| (1, cap));
    let (_, mut names) = ctx
        .create(Op::CreateBucket, Kind::Bucket, reserve, send, made)
        .await?;
    let bucket = names.remove(0);
    // The marker proves the bucket is the run's when the journal is gone.
    // Should it fail, the bucket stays tracked (and is cleaned up) but is
    // not used.
    put_marker(ctx, &bucket).await?;
    Ok(bucket)
}

/// Puts the run's marker object into a bucket the run just made.
async fn put_marker(ctx: &RunCtx, bucket: &str) -> Result<(), StepError> {
    let body = bytes::Bytes::from(ctx.run_id.to_string());
    let sent = Bytes {
        sent: body.len() as u64,
        received: 0,
    };
    let t0 = Instant::now();
    let res = sdk(|| {
        ctx.clients
            .s3
            .put_object()
            .bucket(bucket)
            .key(MARKER_KEY)
            .body(ByteStream::from(body))
            .send()
    })
    .await;
    ctx.measure(PUT_RUN_MARKER, t0, res, sent)?;
    Ok(())
}

/// Codes with which a server says it does not know ListObjectsV2.
fn v2_unsupported(f: &Failure) -> bool {
    matches!(
        f.code.as_str(),
        "NotImplemented" | "HTTP 501" | "InvalidArgument" | "UnsupportedArgument"
    )
}

/// The run's shared bucket, made by the first user that needs it (one at
/// a time; after a failure the next user tries again).
async fn shared_bucket(ctx: &RunCtx) -> Result<Arc<str>, StepError> {
    let _one = ctx.shared_bucket_creation.lock().await;
    if let Some(b) = &*ctx.shared_bucket.load() {
        return Ok(Arc::clone(b));
    }
    let b: Arc<str> = create_bucket_named(ctx).await?.into();
    ctx.shared_bucket.store(Some(Arc::new(b.clone())));
    Ok(b)
}

impl User {
    pub(super) async fn create_bucket(&mut self, ctx: &RunCtx) -> Result<Arc<str>, StepError> {
        let b: Arc<str> = create_bucket_named(ctx).await?.into();
        self.buckets.push(b.clone());
        Ok(b)
    }

    /// The bucket this user's objects go to, created on first need.
    async fn object_bucket(&mut self, ctx: &RunCtx) -> Result<Arc<str>, StepError> {
        // Creating is rare: its future goes in a box of its own, so the ops
        // that ask for a bucket on every call stay small.
        if self.params.bucket == BucketMode::Shared {
            if let Some(b) = &*ctx.shared_bucket.load() {
                return Ok(Arc::clone(b));
            }
            return Box::pin(shared_bucket(ctx)).await;
        }
        match self.buckets.last() {
            Some(b) => Ok(b.clone()),
            None => Box::pin(self.create_bucket(ctx)).await,
        }
    }

    /// After `f`, an op's failure on `bucket`: when the cloud says the
    /// bucket is gone (lost, or deleted behind the run's back), the user
    /// forgets it and its objects, so the next op makes a new one instead of
    /// failing for ever.
    async fn check_lost(&mut self, ctx: &RunCtx, bucket: &Arc<str>, f: Failure) -> StepError {
        if f.code == "NoSuchBucket" {
            self.forget_bucket(ctx, bucket).await;
        }
        f.into()
    }

    /// Forgets a bucket the cloud no longer has, with its objects.
    async fn forget_bucket(&mut self, ctx: &RunCtx, bucket: &Arc<str>) {
        {
            tracing::warn!("bucket {bucket} is gone from the cloud: the user makes a new one");
            ctx.shared_bucket.rcu(|cur| match cur {
                Some(b) if **b == *bucket => None,
                other => other.clone(),
            });
            self.buckets.retain(|b| b != bucket);
            let before = self.objects.len();
            let mut bytes = 0;
            self.objects.retain(|o| {
                let keep = o.bucket != *bucket;
                if !keep {
                    bytes += o.size;
                }
                keep
            });
            ctx.tracker
                .objects_gone((before - self.objects.len()) as u64);
            ctx.tracker.release_bytes(bytes);
            ctx.tracker.deleted(Kind::Bucket, bucket).await;
        }
    }

    /// The number of the user's next object.
    fn next_object(&mut self) -> u64 {
        self.object_seq += 1;
        self.object_seq
    }

    /// The key of the user's object number `n`.
    fn key(&self, n: u64) -> String {
        format!("u{}/o{n}", self.id)
    }

    fn remember(&mut self, bucket: Arc<str>, n: u64, size: u64) {
        self.objects.push_back(Obj { bucket, n, size });
        if self.objects.len() > MAX_REMEMBERED_OBJECTS {
            self.objects.pop_front();
        }
    }

    pub(super) async fn put_object(&mut self, ctx: &RunCtx) -> StepResult {
        let bucket = self.object_bucket(ctx).await?;
        let size = self.params.object_size.sample(&mut self.rng);
        if !ctx.tracker.reserve_bytes(size, ctx.caps.max_bytes) {
            return Err(StepError::Capped);
        }
        let n = self.next_object();
        let body = ctx.payload(size);
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .s3
                .put_object()
                .bucket(&*bucket)
                .key(self.key(n))
                // Content-Length comes from the body: the SDK sets it itself.
                .body(ByteStream::from(body))
                .send()
        })
        .await;
        let sent = Bytes {
            sent: size,
            received: 0,
        };
        if let Err(f) = ctx.measure(Op::PutObject.name(), t0, res, sent) {
            ctx.tracker.release_bytes(size);
            return Err(self.check_lost(ctx, &bucket, f).await);
        }
        ctx.tracker.count_objects(1);
        self.remember(bucket, n, size);
        Ok(())
    }

    /// One of the user's objects (a random one) as (bucket, key), put first
    /// if it has none.
    async fn some_object(&mut self, ctx: &RunCtx) -> Result<(Arc<str>, String), StepError> {
        if self.objects.is_empty() {
            self.put_object(ctx).await?;
        }
        let n = self.objects.len();
        if n == 0 {
            return Err(Failure::new("no-object", "PutObject stored nothing").into());
        }
        let i = rand::Rng::random_range(self.rng(), 0..n);
        let o = &self.objects[i];
        Ok((o.bucket.clone(), self.key(o.n)))
    }

    pub(super) async fn get_object(&mut self, ctx: &RunCtx) -> StepResult {
        let (bucket, key) = self.some_object(ctx).await?;
        let mut req = ctx.clients.s3.get_object().bucket(&*bucket).key(key);
        if let Some(r) = &self.params.get_range {
            req = req.range(format!("bytes={r}"));
        }
        let name = Op::GetObject.name();
        let t0 = Instant::now();
        let res = sdk(|| req.send()).await;
        // The answer's headers are in: that is the time to first byte.
        let ttfb = t0.elapsed();
        let out = match res {
            Ok(o) => o,
            Err(e) => {
                let f = ctx.fail(name, ttfb, crate::failure::classify(&e));
                return Err(self.check_lost(ctx, &bucket, f).await);
            }
        };
        ctx.record(GET_OBJECT_TTFB, ttfb, Bytes::default(), None);
        match out.body.collect().await {
            Ok(data) => {
                let n = bytes::Buf::remaining(&data) as u64;
                let got = Bytes {
                    sent: 0,
                    received: n,
                };
                ctx.record(name, t0.elapsed(), got, None);
                Ok(())
            }
            Err(e) => {
                let f = Failure::new("body", crate::failure::chain(&e));
                Err(ctx.fail(name, t0.elapsed(), f).into())
            }
        }
    }

    pub(super) async fn head_object(&mut self, ctx: &RunCtx) -> StepResult {
        let (bucket, key) = self.some_object(ctx).await?;
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .s3
                .head_object()
                .bucket(&*bucket)
                .key(key)
                .send()
        })
        .await;
        match ctx.measure(Op::HeadObject.name(), t0, res, Bytes::default()) {
            Ok(_) => Ok(()),
            // HEAD answers carry no error code: a gone bucket is a bare 404,
            // like a gone key, so only the other ops notice a lost bucket.
            Err(f) => Err(f.into()),
        }
    }

    pub(super) async fn list_buckets(&mut self, ctx: &RunCtx) -> StepResult {
        let t0 = Instant::now();
        let res = sdk(|| ctx.clients.s3.list_buckets().send()).await;
        ctx.measure(Op::ListBuckets.name(), t0, res, Bytes::default())?;
        Ok(())
    }

    pub(super) async fn head_bucket(&mut self, ctx: &RunCtx) -> StepResult {
        let bucket = self.object_bucket(ctx).await?;
        let t0 = Instant::now();
        let res = sdk(|| ctx.clients.s3.head_bucket().bucket(&*bucket).send()).await;
        match ctx.measure(Op::HeadBucket.name(), t0, res, Bytes::default()) {
            Ok(_) => Ok(()),
            // A HEAD on a gone bucket is a bare 404 (no error code to read).
            Err(f) if ["HTTP 404", "NotFound", "NoSuchBucket"].contains(&f.code.as_str()) => {
                self.forget_bucket(ctx, &bucket).await;
                Err(f.into())
            }
            Err(f) => Err(f.into()),
        }
    }

    pub(super) async fn list_objects(&mut self, ctx: &RunCtx) -> StepResult {
        let bucket = self.object_bucket(ctx).await?;
        let prefix = format!("u{}/", self.id);
        let name = Op::ListObjects.name();
        if !ctx.list_v1.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            let res = sdk(|| {
                ctx.clients
                    .s3
                    .list_objects_v2()
                    .bucket(&*bucket)
                    .prefix(&prefix)
                    .max_keys(1000)
                    .send()
            })
            .await;
            match res {
                Ok(_) => {
                    ctx.record(name, t0.elapsed(), Bytes::default(), None);
                    return Ok(());
                }
                Err(e) => {
                    let f = crate::failure::classify(&e);
                    if !v2_unsupported(&f) {
                        let f = ctx.fail(name, t0.elapsed(), f);
                        return Err(self.check_lost(ctx, &bucket, f).await);
                    }
                    if !ctx.list_v1.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "the S3 endpoint does not support ListObjectsV2 ({}): using ListObjects (V1)",
                            f.code
                        );
                    }
                }
            }
        }
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .s3
                .list_objects()
                .bucket(&*bucket)
                .prefix(&prefix)
                .max_keys(1000)
                .send()
        })
        .await;
        match ctx.measure(name, t0, res, Bytes::default()) {
            Ok(_) => Ok(()),
            Err(f) => Err(self.check_lost(ctx, &bucket, f).await),
        }
    }

    pub(super) async fn delete_object(&mut self, ctx: &RunCtx) -> StepResult {
        if self.objects.is_empty() {
            self.put_object(ctx).await?;
        }
        let Some(obj) = self.objects.pop_front() else {
            return Err(Failure::new("no-object", "PutObject stored nothing").into());
        };
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .s3
                .delete_object()
                .bucket(&*obj.bucket)
                .key(self.key(obj.n))
                .send()
        })
        .await;
        match ctx.measure(Op::DeleteObject.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.count_objects(-1);
                ctx.tracker.release_bytes(obj.size);
                Ok(())
            }
            Err(f) => {
                let bucket = obj.bucket.clone();
                self.objects.push_front(obj);
                Err(self.check_lost(ctx, &bucket, f).await)
            }
        }
    }

    pub(super) async fn delete_objects(&mut self, ctx: &RunCtx) -> StepResult {
        if self.objects.is_empty() {
            self.put_object(ctx).await?;
        }
        let Some(bucket) = self.objects.front().map(|o| o.bucket.clone()) else {
            return Err(Failure::new("no-object", "PutObject stored nothing").into());
        };
        let mut batch = Vec::new();
        while batch.len() < self.params.delete_batch {
            match self.objects.iter().position(|o| o.bucket == bucket) {
                Some(i) => batch.push(self.objects.remove(i).expect("index is valid")),
                None => break,
            }
        }
        let keys: Vec<String> = batch.iter().map(|o| self.key(o.n)).collect();
        let ids: Vec<ObjectIdentifier> = keys
            .iter()
            .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
            .collect();
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| Failure::new("request-error", e.to_string()))?;
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .s3
                .delete_objects()
                .bucket(&*bucket)
                .delete(delete)
                .send()
        })
        .await;
        match ctx.measure(Op::DeleteObjects.name(), t0, res, Bytes::default()) {
            Ok(out) => {
                let failed: Vec<&str> = out.errors().iter().filter_map(|e| e.key()).collect();
                for (o, key) in batch.into_iter().zip(&keys) {
                    if failed.contains(&key.as_str()) {
                        self.objects.push_front(o);
                    } else {
                        ctx.tracker.count_objects(-1);
                        ctx.tracker.release_bytes(o.size);
                    }
                }
                Ok(())
            }
            Err(f) => {
                for o in batch.into_iter().rev() {
                    self.objects.push_front(o);
                }
                Err(self.check_lost(ctx, &bucket, f).await)
            }
        }
    }

    /// `s3:MultipartUpload`: create, the parts, complete; on any failure the
    /// upload is aborted so no parts stay behind. Long on purpose: the
    /// protocol's steps in their order, each measured under its own entry.
    pub(super) async fn multipart_upload(&mut self, ctx: &RunCtx) -> StepResult {
        let bucket = self.object_bucket(ctx).await?;
        let total = self.params.multipart_size;
        let part = self.params.part_size.max(1);
        if !ctx.tracker.reserve_bytes(total, ctx.caps.max_bytes) {
            return Err(StepError::Capped);
        }
        let n = self.next_object();
        let key = self.key(n);
        let s3 = &ctx.clients.s3;
        let t0 = Instant::now();
        let res = sdk(|| {
            s3.create_multipart_upload()
                .bucket(&*bucket)
                .key(&key)
                .send()
        })
        .await;
        let created = match ctx.measure(CREATE_MULTIPART_UPLOAD, t0, res, Bytes::default()) {
            Ok(c) => c,
            Err(f) => {
                ctx.tracker.release_bytes(total);
                return Err(self.check_lost(ctx, &bucket, f).await);
            }
        };
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            ctx.tracker.release_bytes(total);
            return Err(
                Failure::new("no-upload-id", "CreateMultipartUpload returned no id").into(),
            );
        };
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1;
        let mut failure = None;
        while offset < total || number == 1 {
            let len = part.min(total - offset);
            let t0 = Instant::now();
            let res = sdk(|| {
                s3.upload_part()
                    .bucket(&*bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(len as i64)
                    .body(ByteStream::from(ctx.payload(len)))
                    .send()
            })
            .await;
            let sent = Bytes {
                sent: len,
                received: 0,
            };
            match ctx.measure(UPLOAD_PART, t0, res, sent) {
                Ok(out) => parts.push(
                    CompletedPart::builder()
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .part_number(number)
                        .build(),
                ),
                Err(f) => {
                    failure = Some(f);
                    break;
                }
            }
            offset += len;
            number += 1;
            if len == 0 {
                break;
            }
        }
        if failure.is_none() {
            let t0 = Instant::now();
            let res = sdk(|| {
                s3.complete_multipart_upload()
                    .bucket(&*bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
            })
            .await;
            match ctx.measure(COMPLETE_MULTIPART_UPLOAD, t0, res, Bytes::default()) {
                Ok(_) => {
                    ctx.tracker.count_objects(1);
                    self.remember(bucket, n, total);
                    return Ok(());
                }
                Err(f) => failure = Some(f),
            }
        }
        // A step failed: abort, so no parts are left behind.
        ctx.tracker.release_bytes(total);
        let t0 = Instant::now();
        let res = sdk(|| {
            s3.abort_multipart_upload()
                .bucket(&*bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
        })
        .await;
        let _ = ctx.measure(ABORT_MULTIPART_UPLOAD, t0, res, Bytes::default());
        Err(failure.expect("a step failed").into())
    }

    pub(super) async fn delete_bucket(&mut self, ctx: &RunCtx) -> StepResult {
        if self.buckets.is_empty() {
            self.create_bucket(ctx).await?;
        }
        let bucket = self.buckets.remove(0);
        // Empty it first: the user's own objects, each a measured DeleteObject.
        while let Some(pos) = self.objects.iter().position(|o| o.bucket == bucket) {
            let obj = self.objects.remove(pos).expect("found");
            self.objects.push_front(obj);
            if let Err(e) = self.delete_object(ctx).await {
                self.buckets.insert(0, bucket);
                return Err(e);
            }
        }
        // The marker goes last but one: until then the bucket is provably
        // the run's (and after, its journal entry still says so).
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .s3
                .delete_object()
                .bucket(&*bucket)
                .key(MARKER_KEY)
                .send()
        })
        .await;
        if let Err(f) = ctx.measure(DELETE_RUN_MARKER, t0, res, Bytes::default()) {
            if f.code == "NoSuchBucket" {
                self.buckets.insert(0, bucket.clone());
                return Err(self.check_lost(ctx, &bucket, f).await);
            }
            self.buckets.insert(0, bucket);
            return Err(f.into());
        }
        let t0 = Instant::now();
        let res = sdk(|| ctx.clients.s3.delete_bucket().bucket(&*bucket).send()).await;
        match ctx.measure(Op::DeleteBucket.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::Bucket, &bucket).await;
                Ok(())
            }
            Err(f) if f.code == "NoSuchBucket" => {
                self.buckets.insert(0, bucket.clone());
                Err(self.check_lost(ctx, &bucket, f).await)
            }
            Err(f) if f.code == "BucketNotEmpty" => {
                // Objects the user no longer remembers: empty it the clean-up way
                // (not measured) so the bucket does not stay behind for ever.
                let deadline = Instant::now() + std::time::Duration::from_secs(120);
                if let Ok(gone) =
                    crate::cleanup::delete_bucket(&ctx.clients, &bucket, deadline).await
                {
                    ctx.tracker.deleted(Kind::Bucket, &bucket).await;
                    ctx.tracker.objects_gone(gone.objects);
                    ctx.tracker.release_bytes(gone.bytes);
                    self.objects.retain(|o| o.bucket != bucket);
                } else {
                    self.buckets.insert(0, bucket);
                }
                Err(f.into())
            }
            Err(f) => {
                self.buckets.insert(0, bucket);
                Err(f.into())
            }
        }
    }
}
