//! S3 ops: buckets named `cs-<runid>-<n>` (per user, or one shared by the
//! run), objects put from a shared random payload, read back whole, deleted.

use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};

use super::{MAX_REMEMBERED_OBJECTS, Op, RunCtx, StepError, StepResult, User};
use crate::profile::BucketMode;
use crate::resources::Kind;
use crate::stats::{Bytes, Failure};

/// Creates a bucket with the run's prefix, tracked; returns its name.
pub(super) async fn create_bucket_named(ctx: &RunCtx) -> Result<String, StepError> {
    if !ctx.tracker.reserve(Kind::Bucket, 1, ctx.caps.max_buckets) {
        return Err(StepError::Capped);
    }
    let bucket = ctx.new_name();
    let seq = ctx.tracker.intent(Kind::Bucket, Some(&bucket)).await;
    let mut req = ctx.clients.s3.create_bucket().bucket(&bucket);
    let region = ctx.clients.info.region.as_str();
    if region != "us-east-1" {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    let t0 = Instant::now();
    let res = req.send().await;
    match ctx.measure(Op::CreateBucket.name(), t0, res, Bytes::default()) {
        Ok(_) => {
            ctx.tracker.created(seq, Kind::Bucket, &bucket).await;
            Ok(bucket)
        }
        Err(f) => {
            ctx.tracker.failed(seq, Kind::Bucket, 1).await;
            Err(f.into())
        }
    }
}

impl User {
    pub(super) async fn create_bucket(&mut self, ctx: &RunCtx) -> Result<String, StepError> {
        let b = create_bucket_named(ctx).await?;
        self.buckets.push(b.clone());
        Ok(b)
    }

    /// The bucket this user's objects go to, created on first need.
    async fn object_bucket(&mut self, ctx: &RunCtx) -> Result<String, StepError> {
        if self.params.bucket == BucketMode::Shared {
            let mut g = ctx.shared_bucket.lock().await;
            if let Some(b) = g.as_ref() {
                return Ok(b.clone());
            }
            let b = create_bucket_named(ctx).await?;
            *g = Some(b.clone());
            return Ok(b);
        }
        match self.buckets.last() {
            Some(b) => Ok(b.clone()),
            None => self.create_bucket(ctx).await,
        }
    }

    pub(super) async fn put_object(&mut self, ctx: &RunCtx) -> StepResult {
        let bucket = self.object_bucket(ctx).await?;
        self.object_seq += 1;
        let key = format!("u{}/o{}", self.id, self.object_seq);
        let size = self.params.object_size;
        let body = ctx.payload(size);
        let t0 = Instant::now();
        let res = ctx
            .clients
            .s3
            .put_object()
            .bucket(&bucket)
            .key(&key)
            .content_length(size as i64)
            .body(ByteStream::from(body))
            .send()
            .await;
        let sent = Bytes {
            sent: size,
            received: 0,
        };
        ctx.measure(Op::PutObject.name(), t0, res, sent)?;
        ctx.tracker.count_objects(1);
        self.objects.push_back((bucket, key, size));
        if self.objects.len() > MAX_REMEMBERED_OBJECTS {
            self.objects.pop_front();
        }
        Ok(())
    }

    pub(super) async fn get_object(&mut self, ctx: &RunCtx) -> StepResult {
        if self.objects.is_empty() {
            self.put_object(ctx).await?;
        }
        let n = self.objects.len();
        let i = rand::Rng::random_range(self.rng(), 0..n);
        let (bucket, key, _) = self.objects[i].clone();
        let t0 = Instant::now();
        let res = ctx
            .clients
            .s3
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await;
        let name = Op::GetObject.name();
        let out = match res {
            Ok(o) => o,
            Err(e) => {
                ctx.measure::<(), _>(name, t0, Err(e), Bytes::default())?;
                unreachable!("measure returns the error")
            }
        };
        match out.body.collect().await {
            Ok(data) => {
                let n = bytes::Buf::remaining(&data) as u64;
                ctx.stats.record(
                    name,
                    t0.elapsed(),
                    Bytes {
                        sent: 0,
                        received: n,
                    },
                    None,
                );
                Ok(())
            }
            Err(e) => {
                let f = Failure::new("body", super::errors::chain(&e));
                Err(ctx.fail(name, t0.elapsed(), f).into())
            }
        }
    }

    pub(super) async fn delete_object(&mut self, ctx: &RunCtx) -> StepResult {
        if self.objects.is_empty() {
            self.put_object(ctx).await?;
        }
        let (bucket, key, size) = self.objects.pop_front().expect("ensured");
        let t0 = Instant::now();
        let res = ctx
            .clients
            .s3
            .delete_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await;
        match ctx.measure(Op::DeleteObject.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.count_objects(-1);
                Ok(())
            }
            Err(f) => {
                self.objects.push_front((bucket, key, size));
                Err(f.into())
            }
        }
    }

    pub(super) async fn delete_bucket(&mut self, ctx: &RunCtx) -> StepResult {
        if self.buckets.is_empty() {
            self.create_bucket(ctx).await?;
        }
        let bucket = self.buckets.remove(0);
        // Empty it first: the user's own objects, each a measured DeleteObject.
        while let Some(pos) = self.objects.iter().position(|o| o.0 == bucket) {
            let obj = self.objects.remove(pos).expect("found");
            self.objects.push_front(obj);
            if let Err(e) = self.delete_object(ctx).await {
                self.buckets.insert(0, bucket);
                return Err(e);
            }
        }
        let t0 = Instant::now();
        let res = ctx.clients.s3.delete_bucket().bucket(&bucket).send().await;
        match ctx.measure(Op::DeleteBucket.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::Bucket, &bucket).await;
                Ok(())
            }
            Err(f) => {
                self.buckets.insert(0, bucket);
                Err(f.into())
            }
        }
    }
}
