//! EC2 compute ops: instances (run, stop, start, reboot, terminate),
//! created with the run's tag, their provisioning waits
//! (`ec2:instance-running`...: measured from the call's answer to the state
//! observed by our own shared poller, see `poller.rs`, since the SDK waiters
//! poll every 15 s at best), and the listings instances are made from
//! (images, zones).

use std::time::Instant;

use aws_sdk_ec2::types::{InstanceStateName, InstanceType, Placement, ResourceType};

use super::ctx::none;
use super::{Held, Pool, RunCtx, StepError, StepResult, User, Want, sdk};
use crate::failure::Failure;
use crate::ops::Op;
use crate::resources::Kind;
use crate::stats::Bytes;

impl User {
    pub(super) fn image(&self, ctx: &RunCtx) -> Result<String, Failure> {
        if self.params.image_id != "auto" {
            return Ok(self.params.image_id.clone());
        }
        ctx.auto_image
            .clone()
            .ok_or_else(|| Failure::new("no-image", "image_id = \"auto\" found no available image"))
    }

    pub(super) fn zone(&self, ctx: &RunCtx) -> Result<String, Failure> {
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
        let p = &self.params;
        let send = |label: String| {
            let mut req = ctx
                .clients
                .ec2
                .run_instances()
                .image_id(image)
                .instance_type(InstanceType::from(p.instance_type.as_str()))
                .min_count(n)
                .max_count(n)
                .tag_specifications(ctx.run_id.tags(ResourceType::Instance, &label))
                .tag_specifications(ctx.run_id.tags(ResourceType::Volume, &label));
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
            req.send()
        };
        let made = |out: &aws_sdk_ec2::operation::run_instances::RunInstancesOutput, _: &str| {
            out.instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect()
        };
        let reserve = ctx.caps.of(Kind::Instance).map(|cap| (n as u64, cap));
        let (out, _) = ctx
            .create(Op::RunInstances, Kind::Instance, reserve, send, made)
            .await?;
        for i in out.instances() {
            let Some(id) = i.instance_id() else { continue };
            let mut h = Held::new(id, Want::Running);
            h.zone = i
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_string);
            h.ready = i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running);
            self.instances.push_back(h);
        }
        Ok(())
    }

    pub(super) async fn describe_instances(&mut self, ctx: &RunCtx) -> StepResult {
        let mut req = ctx.clients.ec2.describe_instances();
        if self.instances.is_empty() {
            req = req.filters(ctx.run_id.tag_filter());
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
                h.head_for(Want::Terminated);
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

    pub(super) async fn wait_instance(&mut self, ctx: &RunCtx, want: Want) -> StepResult {
        let name = match want {
            Want::Stopped => Op::InstanceStopped.name(),
            _ => Op::InstanceRunning.name(),
        };
        self.wait_held(ctx, Pool::Instances, want, name).await
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
        let subject = (Pool::Instances, held.id.as_str(), Want::Terminated);
        let name = Op::InstanceTerminated.name();
        ctx.wait_for(&self.params, name, subject, held.since)
            .await?;
        self.terminating.retain(|h| h.id != held.id);
        Ok(())
    }

    pub(super) async fn describe_images(&mut self, ctx: &RunCtx) -> StepResult {
        let mut req = ctx.clients.ec2.describe_images();
        req = match self.image(ctx) {
            Ok(img) => req.image_ids(img),
            Err(_) => req.owners("self"),
        };
        let t0 = Instant::now();
        let res = sdk(|| req.send()).await;
        ctx.measure(Op::DescribeImages.name(), t0, res, Bytes::default())?;
        Ok(())
    }

    pub(super) async fn describe_zones(&mut self, ctx: &RunCtx) -> StepResult {
        let t0 = Instant::now();
        let res = sdk(|| ctx.clients.ec2.describe_availability_zones().send()).await;
        ctx.measure(
            Op::DescribeAvailabilityZones.name(),
            t0,
            res,
            Bytes::default(),
        )?;
        Ok(())
    }
}
