//! EC2 ops: instances and volumes, created with the run's tag, and the
//! provisioning waits, measured from the create call's answer to the state
//! observed by our own polling loop (the SDK waiters poll every 15 s at best).

use std::time::Instant;

use aws_sdk_ec2::types::{
    Filter, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification, VolumeState,
    VolumeType,
};

use super::{Held, Op, RunCtx, StepError, StepResult, User};
use crate::resources::{Kind, RUN_TAG};
use crate::stats::{Bytes, Failure};

/// The tag specification every created resource of a kind carries.
pub(super) fn run_tags(ctx: &RunCtx, rt: ResourceType, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(rt)
        .tags(Tag::builder().key(RUN_TAG).value(&ctx.run_id).build())
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
}

/// The filter that matches exactly the run's tagged resources.
pub(super) fn run_filter(run_id: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{RUN_TAG}"))
        .values(run_id)
        .build()
}

enum Poll {
    Ready,
    Pending(String),
    Broken(String),
}

impl User {
    fn image(&self, ctx: &RunCtx) -> Result<String, Failure> {
        if self.params.image_id != "auto" {
            return Ok(self.params.image_id.clone());
        }
        ctx.auto_image
            .clone()
            .ok_or_else(|| Failure::new("no-image", "image_id = \"auto\" found no available image"))
    }

    fn zone(&self, ctx: &RunCtx) -> Result<String, Failure> {
        if self.params.availability_zone != "auto" {
            return Ok(self.params.availability_zone.clone());
        }
        ctx.default_az.clone().ok_or_else(|| {
            Failure::new(
                "no-zone",
                "availability_zone = \"auto\" found no availability zone",
            )
        })
    }

    pub(super) async fn run_instances(&mut self, ctx: &RunCtx) -> StepResult {
        let n = self.params.instance_count;
        let name = Op::RunInstances.name();
        let image = match self.image(ctx) {
            Ok(i) => i,
            Err(f) => return Err(ctx.fail(name, Default::default(), f).into()),
        };
        if !ctx
            .tracker
            .reserve(Kind::Instance, n as u64, ctx.caps.max_instances)
        {
            return Err(StepError::Capped);
        }
        let label = ctx.new_name();
        let seq = ctx.tracker.intent(Kind::Instance, Some(&label)).await;
        let t0 = Instant::now();
        let res = ctx
            .clients
            .ec2
            .run_instances()
            .image_id(image)
            .instance_type(InstanceType::from(self.params.instance_type.as_str()))
            .min_count(n)
            .max_count(n)
            .tag_specifications(run_tags(ctx, ResourceType::Instance, &label))
            .tag_specifications(run_tags(ctx, ResourceType::Volume, &label))
            .send()
            .await;
        match ctx.measure(name, t0, res, Bytes::default()) {
            Ok(out) => {
                let since = Instant::now();
                let ids: Vec<String> = out
                    .instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_string))
                    .collect();
                for id in &ids {
                    ctx.tracker.created(seq, Kind::Instance, id).await;
                    self.instances.push_back(Held {
                        id: id.clone(),
                        since,
                        ready: false,
                        waited: false,
                    });
                }
                if (ids.len() as i32) < n {
                    ctx.tracker
                        .failed(seq, Kind::Instance, (n as usize - ids.len()) as u64)
                        .await;
                }
                Ok(())
            }
            Err(f) => {
                ctx.tracker.failed(seq, Kind::Instance, n as u64).await;
                Err(f.into())
            }
        }
    }

    pub(super) async fn describe_instances(&mut self, ctx: &RunCtx) -> StepResult {
        let mut req = ctx.clients.ec2.describe_instances();
        if self.instances.is_empty() {
            req = req.filters(run_filter(&ctx.run_id));
        } else {
            for h in self.instances.iter().take(100) {
                req = req.instance_ids(&h.id);
            }
        }
        let t0 = Instant::now();
        let res = req.send().await;
        ctx.measure(Op::DescribeInstances.name(), t0, res, Bytes::default())?;
        Ok(())
    }

    /// Makes sure the user holds an instance.
    async fn ensure_instance(&mut self, ctx: &RunCtx) -> StepResult {
        if self.instances.is_empty() {
            self.run_instances(ctx).await?;
        }
        if self.instances.is_empty() {
            return Err(Failure::new("no-instance", "RunInstances returned no instance").into());
        }
        Ok(())
    }

    pub(super) async fn terminate_instance(&mut self, ctx: &RunCtx) -> StepResult {
        self.ensure_instance(ctx).await?;
        let held = self.instances.pop_front().expect("ensured");
        let t0 = Instant::now();
        let res = ctx
            .clients
            .ec2
            .terminate_instances()
            .instance_ids(&held.id)
            .send()
            .await;
        match ctx.measure(Op::TerminateInstances.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::Instance, &held.id).await;
                self.terminating.push_back(Held {
                    since: Instant::now(),
                    ready: false,
                    waited: false,
                    ..held
                });
                if self.terminating.len() > 100 {
                    self.terminating.pop_front();
                }
                Ok(())
            }
            Err(f) => {
                self.instances.push_front(held);
                Err(f.into())
            }
        }
    }

    async fn poll_instance(
        &self,
        ctx: &RunCtx,
        id: &str,
        want: InstanceStateName,
    ) -> Result<Poll, Failure> {
        let res = ctx
            .clients
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| super::errors::classify(&e))?;
        let state = res
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id))
            .and_then(|i| i.state())
            .and_then(|s| s.name())
            .cloned();
        Ok(match state {
            Some(s) if s == want => Poll::Ready,
            Some(s)
                if want == InstanceStateName::Running
                    && matches!(
                        s,
                        InstanceStateName::Terminated | InstanceStateName::ShuttingDown
                    ) =>
            {
                Poll::Broken(s.as_str().to_string())
            }
            Some(s) => Poll::Pending(s.as_str().to_string()),
            None if want == InstanceStateName::Terminated => Poll::Ready,
            None => Poll::Pending("not listed".into()),
        })
    }

    /// Polls until `check` says ready; records the wait under `name`.
    async fn wait_for<F, Fut>(
        &self,
        ctx: &RunCtx,
        name: &str,
        what: &str,
        since: Instant,
        mut check: F,
    ) -> StepResult
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Poll, Failure>>,
    {
        let deadline = since + self.params.wait_timeout;
        let mut last: String;
        loop {
            match check().await {
                Ok(Poll::Ready) => {
                    ctx.stats
                        .record(name, since.elapsed(), Bytes::default(), None);
                    return Ok(());
                }
                Ok(Poll::Broken(state)) => {
                    let f = Failure::new(
                        format!("state-{state}"),
                        format!("{what} went to `{state}` while waiting"),
                    );
                    return Err(ctx.fail(name, since.elapsed(), f).into());
                }
                Ok(Poll::Pending(state)) => last = state,
                // A throttled or failed poll is retried until the deadline.
                Err(f) if f.throttled || f.code == "timeout" => last = f.code,
                Err(f) => return Err(ctx.fail(name, since.elapsed(), f).into()),
            }
            if Instant::now() + self.params.poll_interval > deadline {
                let f = Failure::new(
                    "wait-timeout",
                    format!(
                        "{what} not ready after {:?} (last state: {last})",
                        self.params.wait_timeout
                    ),
                );
                return Err(ctx.fail(name, since.elapsed(), f).into());
            }
            tokio::time::sleep(self.params.poll_interval).await;
        }
    }

    pub(super) async fn wait_instance_running(&mut self, ctx: &RunCtx) -> StepResult {
        if !self.instances.iter().any(|h| !h.waited) {
            self.run_instances(ctx).await?;
        }
        let Some(idx) = self.instances.iter().rposition(|h| !h.waited) else {
            return Err(Failure::new("no-instance", "RunInstances returned no instance").into());
        };
        self.instances[idx].waited = true;
        let held = self.instances[idx].clone();
        let what = format!("instance {}", held.id);
        self.wait_for(ctx, Op::InstanceRunning.name(), &what, held.since, || {
            self.poll_instance(ctx, &held.id, InstanceStateName::Running)
        })
        .await?;
        if let Some(h) = self.instances.iter_mut().find(|h| h.id == held.id) {
            h.ready = true;
        }
        Ok(())
    }

    pub(super) async fn wait_instance_terminated(&mut self, ctx: &RunCtx) -> StepResult {
        if !self.terminating.iter().any(|h| !h.waited) {
            self.terminate_instance(ctx).await?;
        }
        let Some(idx) = self.terminating.iter().rposition(|h| !h.waited) else {
            return Ok(());
        };
        self.terminating[idx].waited = true;
        let held = self.terminating[idx].clone();
        let what = format!("instance {}", held.id);
        self.wait_for(
            ctx,
            Op::InstanceTerminated.name(),
            &what,
            held.since,
            || self.poll_instance(ctx, &held.id, InstanceStateName::Terminated),
        )
        .await?;
        self.terminating.retain(|h| h.id != held.id);
        Ok(())
    }

    pub(super) async fn create_volume(&mut self, ctx: &RunCtx) -> StepResult {
        let name = Op::CreateVolume.name();
        let zone = match self.zone(ctx) {
            Ok(z) => z,
            Err(f) => return Err(ctx.fail(name, Default::default(), f).into()),
        };
        if !ctx.tracker.reserve(Kind::Volume, 1, ctx.caps.max_volumes) {
            return Err(StepError::Capped);
        }
        let label = ctx.new_name();
        let seq = ctx.tracker.intent(Kind::Volume, Some(&label)).await;
        let mut req = ctx
            .clients
            .ec2
            .create_volume()
            .availability_zone(zone)
            .size(self.params.volume_size_gib)
            .tag_specifications(run_tags(ctx, ResourceType::Volume, &label));
        if let Some(t) = &self.params.volume_type {
            req = req.volume_type(VolumeType::from(t.as_str()));
        }
        let t0 = Instant::now();
        let res = req.send().await;
        match ctx.measure(name, t0, res, Bytes::default()) {
            Ok(out) => {
                let Some(id) = out.volume_id() else {
                    ctx.tracker.failed(seq, Kind::Volume, 1).await;
                    return Err(Failure::new("no-volume", "CreateVolume returned no id").into());
                };
                ctx.tracker.created(seq, Kind::Volume, id).await;
                self.volumes.push_back(Held {
                    id: id.to_string(),
                    since: Instant::now(),
                    ready: out.state() == Some(&VolumeState::Available),
                    waited: false,
                });
                Ok(())
            }
            Err(f) => {
                ctx.tracker.failed(seq, Kind::Volume, 1).await;
                Err(f.into())
            }
        }
    }

    pub(super) async fn describe_volumes(&mut self, ctx: &RunCtx) -> StepResult {
        let mut req = ctx.clients.ec2.describe_volumes();
        if self.volumes.is_empty() {
            req = req.filters(run_filter(&ctx.run_id));
        } else {
            for h in self.volumes.iter().take(100) {
                req = req.volume_ids(&h.id);
            }
        }
        let t0 = Instant::now();
        let res = req.send().await;
        ctx.measure(Op::DescribeVolumes.name(), t0, res, Bytes::default())?;
        Ok(())
    }

    pub(super) async fn wait_volume_available(&mut self, ctx: &RunCtx) -> StepResult {
        if !self.volumes.iter().any(|h| !h.waited) {
            self.create_volume(ctx).await?;
        }
        let Some(idx) = self.volumes.iter().rposition(|h| !h.waited) else {
            return Err(Failure::new("no-volume", "CreateVolume returned no volume").into());
        };
        self.volumes[idx].waited = true;
        if self.volumes[idx].ready {
            // CreateVolume answered `available` at once: the wait took no time.
            ctx.stats.record(
                Op::VolumeAvailable.name(),
                Default::default(),
                Bytes::default(),
                None,
            );
            return Ok(());
        }
        let held = self.volumes[idx].clone();
        let what = format!("volume {}", held.id);
        let id = held.id.clone();
        let poll = || async {
            let res = ctx
                .clients
                .ec2
                .describe_volumes()
                .volume_ids(&id)
                .send()
                .await
                .map_err(|e| super::errors::classify(&e))?;
            let state = res
                .volumes()
                .iter()
                .find(|v| v.volume_id() == Some(id.as_str()))
                .and_then(|v| v.state())
                .cloned();
            Ok(match state {
                Some(VolumeState::Available) => Poll::Ready,
                Some(s @ (VolumeState::Error | VolumeState::Deleted | VolumeState::Deleting)) => {
                    Poll::Broken(s.as_str().to_string())
                }
                Some(s) => Poll::Pending(s.as_str().to_string()),
                None => Poll::Pending("not listed".into()),
            })
        };
        self.wait_for(ctx, Op::VolumeAvailable.name(), &what, held.since, poll)
            .await?;
        if let Some(h) = self.volumes.iter_mut().find(|h| h.id == held.id) {
            h.ready = true;
        }
        Ok(())
    }

    pub(super) async fn delete_volume(&mut self, ctx: &RunCtx) -> StepResult {
        if self.volumes.is_empty() {
            self.create_volume(ctx).await?;
        }
        let Some(held) = self.volumes.pop_front() else {
            return Err(Failure::new("no-volume", "CreateVolume returned no volume").into());
        };
        let t0 = Instant::now();
        let res = ctx
            .clients
            .ec2
            .delete_volume()
            .volume_id(&held.id)
            .send()
            .await;
        match ctx.measure(Op::DeleteVolume.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::Volume, &held.id).await;
                Ok(())
            }
            Err(f) => {
                self.volumes.push_front(held);
                Err(f.into())
            }
        }
    }
}
