//! EC2 compute and block storage ops: instances (run, stop, start, reboot,
//! terminate), volumes (create, attach, detach, delete), snapshots, all
//! created with the run's tag, and the provisioning waits, measured from the
//! call's answer to the state observed by our own polling loop (the SDK
//! waiters poll every 15 s at best).

use std::time::Instant;

use aws_sdk_ec2::types::{
    Filter, InstanceStateName, InstanceType, Placement, ResourceType, SnapshotState, Tag,
    TagSpecification, VolumeState, VolumeType,
};

use super::{Held, Op, RunCtx, StepError, StepResult, User, Want, errors::classify, sdk};
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

/// What one poll of a provisioning wait saw.
pub(super) enum Poll {
    Ready,
    Pending(String),
    Broken(String),
}

fn none(what: &str, op: &str) -> StepError {
    Failure::new(format!("no-{what}"), format!("{op} returned no {what}")).into()
}

impl User {
    pub(super) fn image(&self, ctx: &RunCtx) -> Result<String, Failure> {
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
        // Volumes go where the user's instances are, so they can attach.
        if let Some(z) = self.instances.iter().rev().find_map(|h| h.zone.clone()) {
            return Ok(z);
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
        let seq = ctx.intent(Kind::Instance, &label, name, n as u64).await?;
        let p = &self.params;
        let mut req = ctx
            .clients
            .ec2
            .run_instances()
            .image_id(image)
            .instance_type(InstanceType::from(p.instance_type.as_str()))
            .min_count(n)
            .max_count(n)
            .tag_specifications(run_tags(ctx, ResourceType::Instance, &label))
            .tag_specifications(run_tags(ctx, ResourceType::Volume, &label));
        if p.availability_zone != "auto" {
            req = req.placement(
                Placement::builder()
                    .availability_zone(&p.availability_zone)
                    .build(),
            );
        }
        if let Some(k) = &p.key_name {
            req = req.key_name(k);
        }
        if let Some(g) = &p.security_group {
            req = if g.starts_with("sg-") {
                req.security_group_ids(g)
            } else {
                req.security_groups(g)
            };
        }
        if let Some(u) = &p.user_data {
            use base64::Engine as _;
            req = req.user_data(base64::engine::general_purpose::STANDARD.encode(u));
        }
        let t0 = Instant::now();
        let res = sdk(|| req.send()).await;
        match ctx.measure(name, t0, res, Bytes::default()) {
            Ok(out) => {
                let mut made = 0;
                for i in out.instances() {
                    let Some(id) = i.instance_id() else { continue };
                    made += 1;
                    ctx.tracker.created(seq, Kind::Instance, id).await;
                    let mut h = Held::new(id, Want::Running);
                    h.zone = i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .map(str::to_string);
                    h.ready = i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running);
                    self.instances.push_back(h);
                }
                if made < n {
                    ctx.tracker
                        .failed(seq, Kind::Instance, (n - made) as u64)
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
        let res = sdk(|| req.send()).await;
        ctx.measure(Op::DescribeInstances.name(), t0, res, Bytes::default())?;
        Ok(())
    }

    /// Index of the user's newest instance heading for `want`, making one if needed.
    async fn ensure_instance(&mut self, ctx: &RunCtx, want: Want) -> Result<usize, StepError> {
        if let Some(i) = self.instances.iter().rposition(|h| h.want == want) {
            return Ok(i);
        }
        match want {
            // Boxed: stopping itself ensures a running instance first.
            Want::Stopped => Box::pin(self.stop_instance(ctx)).await?,
            _ => self.run_instances(ctx).await?,
        }
        self.instances
            .iter()
            .rposition(|h| h.want == want)
            .ok_or_else(|| none("instance", "RunInstances"))
    }

    /// A running instance to attach or associate to: waits for it if needed.
    pub(super) async fn ensure_running_instance(
        &mut self,
        ctx: &RunCtx,
    ) -> Result<String, StepError> {
        let i = self.ensure_instance(ctx, Want::Running).await?;
        if !self.instances[i].ready {
            self.wait_instance(ctx, Want::Running).await?;
        }
        let i = self
            .instances
            .iter()
            .rposition(|h| h.want == Want::Running)
            .ok_or_else(|| none("instance", "RunInstances"))?;
        Ok(self.instances[i].id.clone())
    }

    pub(super) async fn terminate_instance(&mut self, ctx: &RunCtx) -> StepResult {
        if self.instances.is_empty() {
            self.run_instances(ctx).await?;
        }
        let held = self
            .instances
            .pop_front()
            .ok_or_else(|| none("instance", "RunInstances"))?;
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .ec2
                .terminate_instances()
                .instance_ids(&held.id)
                .send()
        })
        .await;
        match ctx.measure(Op::TerminateInstances.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::Instance, &held.id).await;
                // Its volumes detach as it goes.
                for v in self.volumes.iter_mut() {
                    if v.attached_to.as_deref() == Some(held.id.as_str()) {
                        v.attached_to = None;
                        v.head_for(Want::Available);
                    }
                }
                for a in self.addresses.iter_mut() {
                    if a.instance.as_deref() == Some(held.id.as_str()) {
                        a.instance = None;
                        a.association_id = None;
                    }
                }
                let mut h = held;
                h.head_for(Want::Completed);
                self.terminating.push_back(h);
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

    pub(super) async fn stop_instance(&mut self, ctx: &RunCtx) -> StepResult {
        let i = self.ensure_instance(ctx, Want::Running).await?;
        if !self.instances[i].ready {
            self.wait_instance(ctx, Want::Running).await?;
        }
        let id = self.instances[i].id.clone();
        let t0 = Instant::now();
        let res = sdk(|| ctx.clients.ec2.stop_instances().instance_ids(&id).send()).await;
        ctx.measure(Op::StopInstances.name(), t0, res, Bytes::default())?;
        if let Some(h) = self.instances.iter_mut().find(|h| h.id == id) {
            h.head_for(Want::Stopped);
        }
        Ok(())
    }

    pub(super) async fn start_instance(&mut self, ctx: &RunCtx) -> StepResult {
        let i = self.ensure_instance(ctx, Want::Stopped).await?;
        if !self.instances[i].ready {
            self.wait_instance(ctx, Want::Stopped).await?;
        }
        let id = self.instances[i].id.clone();
        let t0 = Instant::now();
        let res = sdk(|| ctx.clients.ec2.start_instances().instance_ids(&id).send()).await;
        ctx.measure(Op::StartInstances.name(), t0, res, Bytes::default())?;
        if let Some(h) = self.instances.iter_mut().find(|h| h.id == id) {
            h.head_for(Want::Running);
        }
        Ok(())
    }

    pub(super) async fn reboot_instance(&mut self, ctx: &RunCtx) -> StepResult {
        let id = self.ensure_running_instance(ctx).await?;
        let t0 = Instant::now();
        let res = sdk(|| ctx.clients.ec2.reboot_instances().instance_ids(&id).send()).await;
        ctx.measure(Op::RebootInstances.name(), t0, res, Bytes::default())?;
        Ok(())
    }

    async fn poll_instance(
        &self,
        ctx: &RunCtx,
        id: &str,
        want: InstanceStateName,
    ) -> Result<Poll, Failure> {
        let res = sdk(|| ctx.clients.ec2.describe_instances().instance_ids(id).send()).await;
        let res = match res {
            Ok(r) => r,
            // Eventual consistency: a new id may not be known yet; a gone one is terminated.
            Err(e) if classify(&e).code.ends_with(".NotFound") => {
                return Ok(if want == InstanceStateName::Terminated {
                    Poll::Ready
                } else {
                    Poll::Pending("not found yet".into())
                });
            }
            Err(e) => return Err(classify(&e)),
        };
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
                if want != InstanceStateName::Terminated
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
    pub(super) async fn wait_for<F, Fut>(
        &self,
        ctx: &RunCtx,
        name: &'static str,
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
                // A throttled or timed-out poll is retried until the deadline.
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

    /// Measures the newest not-yet-measured move of one of `list` to `want`;
    /// `make` creates a subject when there is none.
    fn pick_unwaited(list: &std::collections::VecDeque<Held>, want: Want) -> Option<usize> {
        list.iter().rposition(|h| h.want == want && !h.waited)
    }

    pub(super) async fn wait_instance(&mut self, ctx: &RunCtx, want: Want) -> StepResult {
        let (name, state) = match want {
            Want::Stopped => (Op::InstanceStopped.name(), InstanceStateName::Stopped),
            _ => (Op::InstanceRunning.name(), InstanceStateName::Running),
        };
        if Self::pick_unwaited(&self.instances, want).is_none() {
            match want {
                Want::Stopped => Box::pin(self.stop_instance(ctx)).await?,
                _ => self.run_instances(ctx).await?,
            }
        }
        let idx = Self::pick_unwaited(&self.instances, want)
            .ok_or_else(|| none("instance", "RunInstances"))?;
        self.instances[idx].waited = true;
        let held = self.instances[idx].clone();
        if !held.ready {
            let what = format!("instance {}", held.id);
            self.wait_for(ctx, name, &what, held.since, || {
                self.poll_instance(ctx, &held.id, state.clone())
            })
            .await?;
        } else {
            ctx.stats
                .record(name, held.since.elapsed(), Bytes::default(), None);
        }
        if let Some(h) = self.instances.iter_mut().find(|h| h.id == held.id) {
            h.ready = true;
        }
        Ok(())
    }

    pub(super) async fn wait_instance_terminated(&mut self, ctx: &RunCtx) -> StepResult {
        if !self.terminating.iter().any(|h| !h.waited) {
            self.terminate_instance(ctx).await?;
        }
        let idx = self
            .terminating
            .iter()
            .rposition(|h| !h.waited)
            .ok_or_else(|| none("instance", "TerminateInstances"))?;
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
        let seq = ctx.intent(Kind::Volume, &label, name, 1).await?;
        let mut req = ctx
            .clients
            .ec2
            .create_volume()
            .availability_zone(&zone)
            .size(self.params.volume_size_gib)
            .tag_specifications(run_tags(ctx, ResourceType::Volume, &label));
        if let Some(t) = &self.params.volume_type {
            req = req.volume_type(VolumeType::from(t.as_str()));
        }
        let t0 = Instant::now();
        let res = sdk(|| req.send()).await;
        match ctx.measure(name, t0, res, Bytes::default()) {
            Ok(out) => {
                let Some(id) = out.volume_id() else {
                    ctx.tracker.failed(seq, Kind::Volume, 1).await;
                    return Err(none("volume", "CreateVolume"));
                };
                ctx.tracker.created(seq, Kind::Volume, id).await;
                let mut h = Held::new(id, Want::Available);
                h.ready = out.state() == Some(&VolumeState::Available);
                h.zone = out.availability_zone().map(str::to_string).or(Some(zone));
                self.volumes.push_back(h);
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
        let res = sdk(|| req.send()).await;
        ctx.measure(Op::DescribeVolumes.name(), t0, res, Bytes::default())?;
        Ok(())
    }

    async fn poll_volume(&self, ctx: &RunCtx, id: &str, want: Want) -> Result<Poll, Failure> {
        let res = sdk(|| ctx.clients.ec2.describe_volumes().volume_ids(id).send()).await;
        let res = match res {
            Ok(r) => r,
            Err(e) if classify(&e).code.ends_with(".NotFound") => {
                return Ok(Poll::Pending("not found yet".into()));
            }
            Err(e) => return Err(classify(&e)),
        };
        let state = res
            .volumes()
            .iter()
            .find(|v| v.volume_id() == Some(id))
            .and_then(|v| v.state())
            .cloned();
        let target = if want == Want::InUse {
            VolumeState::InUse
        } else {
            VolumeState::Available
        };
        Ok(match state {
            Some(s) if s == target => Poll::Ready,
            Some(s @ (VolumeState::Error | VolumeState::Deleted | VolumeState::Deleting)) => {
                Poll::Broken(s.as_str().to_string())
            }
            Some(s) => Poll::Pending(s.as_str().to_string()),
            None => Poll::Pending("not listed".into()),
        })
    }

    pub(super) async fn wait_volume(&mut self, ctx: &RunCtx, want: Want) -> StepResult {
        let name = if want == Want::InUse {
            Op::VolumeInUse.name()
        } else {
            Op::VolumeAvailable.name()
        };
        if Self::pick_unwaited(&self.volumes, want).is_none() {
            if want == Want::InUse {
                Box::pin(self.attach_volume(ctx)).await?;
            } else {
                self.create_volume(ctx).await?;
            }
        }
        let idx = Self::pick_unwaited(&self.volumes, want)
            .ok_or_else(|| none("volume", "CreateVolume"))?;
        self.volumes[idx].waited = true;
        let held = self.volumes[idx].clone();
        if held.ready {
            // The call's answer already showed the state: the wait took no time.
            ctx.stats
                .record(name, Default::default(), Bytes::default(), None);
        } else {
            let what = format!("volume {}", held.id);
            self.wait_for(ctx, name, &what, held.since, || {
                self.poll_volume(ctx, &held.id, want)
            })
            .await?;
        }
        if let Some(h) = self.volumes.iter_mut().find(|h| h.id == held.id) {
            h.ready = true;
        }
        Ok(())
    }

    /// An unattached volume ready to attach, created and awaited if needed.
    async fn ensure_free_volume(&mut self, ctx: &RunCtx) -> Result<usize, StepError> {
        if !self.volumes.iter().any(|h| h.attached_to.is_none()) {
            self.create_volume(ctx).await?;
        }
        let i = self
            .volumes
            .iter()
            .rposition(|h| h.attached_to.is_none())
            .ok_or_else(|| none("volume", "CreateVolume"))?;
        if !self.volumes[i].ready {
            if !self.volumes[i].waited {
                self.wait_volume(ctx, Want::Available).await?;
            } else {
                let id = self.volumes[i].id.clone();
                let since = self.volumes[i].since;
                self.wait_for(
                    ctx,
                    Op::VolumeAvailable.name(),
                    &format!("volume {id}"),
                    since,
                    || self.poll_volume(ctx, &id, Want::Available),
                )
                .await?;
            }
        }
        Ok(i)
    }

    pub(super) async fn attach_volume(&mut self, ctx: &RunCtx) -> StepResult {
        let instance = self.ensure_running_instance(ctx).await?;
        let vi = self.ensure_free_volume(ctx).await?;
        let volume = self.volumes[vi].id.clone();
        let ii = self
            .instances
            .iter()
            .position(|h| h.id == instance)
            .ok_or_else(|| none("instance", "RunInstances"))?;
        let dev_no = self.instances[ii].devices;
        self.instances[ii].devices = dev_no.wrapping_add(1);
        let device = format!("/dev/sd{}", (b'f' + dev_no % 11) as char);
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .ec2
                .attach_volume()
                .volume_id(&volume)
                .instance_id(&instance)
                .device(&device)
                .send()
        })
        .await;
        ctx.measure(Op::AttachVolume.name(), t0, res, Bytes::default())?;
        if let Some(h) = self.volumes.iter_mut().find(|h| h.id == volume) {
            h.attached_to = Some(instance);
            h.device = Some(device);
            h.head_for(Want::InUse);
        }
        Ok(())
    }

    pub(super) async fn detach_volume(&mut self, ctx: &RunCtx) -> StepResult {
        if !self.volumes.iter().any(|h| h.attached_to.is_some()) {
            self.attach_volume(ctx).await?;
        }
        let i = self
            .volumes
            .iter()
            .rposition(|h| h.attached_to.is_some())
            .ok_or_else(|| none("volume", "AttachVolume"))?;
        if self.volumes[i].want == Want::InUse && !self.volumes[i].ready {
            self.wait_volume(ctx, Want::InUse).await?;
        }
        let id = self.volumes[i].id.clone();
        let mut req = ctx.clients.ec2.detach_volume().volume_id(&id);
        // Naming the instance and device too, as older EC2 implementations expect.
        if let Some(inst) = &self.volumes[i].attached_to {
            req = req.instance_id(inst);
        }
        if let Some(dev) = &self.volumes[i].device {
            req = req.device(dev);
        }
        let t0 = Instant::now();
        let res = sdk(|| req.send()).await;
        ctx.measure(Op::DetachVolume.name(), t0, res, Bytes::default())?;
        if let Some(h) = self.volumes.iter_mut().find(|h| h.id == id) {
            h.attached_to = None;
            h.device = None;
            h.head_for(Want::Available);
        }
        Ok(())
    }

    pub(super) async fn delete_volume(&mut self, ctx: &RunCtx) -> StepResult {
        if !self.volumes.iter().any(|h| h.attached_to.is_none()) {
            self.create_volume(ctx).await?;
        }
        let i = self
            .volumes
            .iter()
            .position(|h| h.attached_to.is_none())
            .ok_or_else(|| none("volume", "CreateVolume"))?;
        let held = self.volumes.remove(i).expect("index is valid");
        let t0 = Instant::now();
        let res = sdk(|| ctx.clients.ec2.delete_volume().volume_id(&held.id).send()).await;
        match ctx.measure(Op::DeleteVolume.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::Volume, &held.id).await;
                Ok(())
            }
            Err(f) => {
                self.volumes.insert(i, held);
                Err(f.into())
            }
        }
    }

    pub(super) async fn create_snapshot(&mut self, ctx: &RunCtx) -> StepResult {
        if self.volumes.is_empty() {
            self.create_volume(ctx).await?;
        }
        let volume = self
            .volumes
            .back()
            .map(|h| h.id.clone())
            .ok_or_else(|| none("volume", "CreateVolume"))?;
        if !ctx.tracker.reserve(Kind::Snapshot, 1, ctx.caps.max_volumes) {
            return Err(StepError::Capped);
        }
        let label = ctx.new_name();
        let seq = ctx
            .intent(Kind::Snapshot, &label, Op::CreateSnapshot.name(), 1)
            .await?;
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .ec2
                .create_snapshot()
                .volume_id(volume)
                .description(&label)
                .tag_specifications(run_tags(ctx, ResourceType::Snapshot, &label))
                .send()
        })
        .await;
        match ctx.measure(Op::CreateSnapshot.name(), t0, res, Bytes::default()) {
            Ok(out) => {
                let Some(id) = out.snapshot_id() else {
                    ctx.tracker.failed(seq, Kind::Snapshot, 1).await;
                    return Err(none("snapshot", "CreateSnapshot"));
                };
                ctx.tracker.created(seq, Kind::Snapshot, id).await;
                let mut h = Held::new(id, Want::Completed);
                h.ready = out.state() == Some(&SnapshotState::Completed);
                self.snapshots.push_back(h);
                Ok(())
            }
            Err(f) => {
                ctx.tracker.failed(seq, Kind::Snapshot, 1).await;
                Err(f.into())
            }
        }
    }

    pub(super) async fn wait_snapshot(&mut self, ctx: &RunCtx) -> StepResult {
        let name = Op::SnapshotCompleted.name();
        if Self::pick_unwaited(&self.snapshots, Want::Completed).is_none() {
            self.create_snapshot(ctx).await?;
        }
        let idx = Self::pick_unwaited(&self.snapshots, Want::Completed)
            .ok_or_else(|| none("snapshot", "CreateSnapshot"))?;
        self.snapshots[idx].waited = true;
        let held = self.snapshots[idx].clone();
        if held.ready {
            ctx.stats
                .record(name, Default::default(), Bytes::default(), None);
            return Ok(());
        }
        let id = held.id.clone();
        let poll = || async {
            let res = sdk(|| {
                ctx.clients
                    .ec2
                    .describe_snapshots()
                    .snapshot_ids(&id)
                    .send()
            })
            .await
            .map_err(|e| classify(&e))?;
            let state = res
                .snapshots()
                .iter()
                .find(|s| s.snapshot_id() == Some(id.as_str()))
                .and_then(|s| s.state())
                .cloned();
            Ok(match state {
                Some(SnapshotState::Completed) => Poll::Ready,
                Some(SnapshotState::Error) => Poll::Broken("error".into()),
                Some(s) => Poll::Pending(s.as_str().to_string()),
                None => Poll::Pending("not listed".into()),
            })
        };
        self.wait_for(ctx, name, &format!("snapshot {id}"), held.since, poll)
            .await?;
        if let Some(h) = self.snapshots.iter_mut().find(|h| h.id == held.id) {
            h.ready = true;
        }
        Ok(())
    }

    pub(super) async fn delete_snapshot(&mut self, ctx: &RunCtx) -> StepResult {
        if self.snapshots.is_empty() {
            self.create_snapshot(ctx).await?;
        }
        let held = self
            .snapshots
            .pop_front()
            .ok_or_else(|| none("snapshot", "CreateSnapshot"))?;
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .ec2
                .delete_snapshot()
                .snapshot_id(&held.id)
                .send()
        })
        .await;
        match ctx.measure(Op::DeleteSnapshot.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::Snapshot, &held.id).await;
                Ok(())
            }
            Err(f) => {
                self.snapshots.push_front(held);
                Err(f.into())
            }
        }
    }
}
