//! EC2 block storage ops: volumes (create, attach, detach, delete) and
//! snapshots, created with the run's tag, and their provisioning waits
//! (`ec2:volume-available`, `ec2:volume-in-use`, `ec2:snapshot-completed`;
//! polled by the run's shared poller, see `poller.rs`).

use std::time::Instant;

use aws_sdk_ec2::types::{ResourceType, SnapshotState, VolumeState, VolumeType};

use super::ctx::none;
use super::{Held, Pool, RunCtx, StepError, StepResult, User, Want, sdk};
use crate::ops::Op;
use crate::resources::Kind;
use crate::stats::Bytes;

impl User {
    pub(super) async fn create_volume(&mut self, ctx: &RunCtx) -> StepResult {
        let zone = match self.zone(ctx) {
            Ok(z) => z,
            Err(f) => {
                return Err(ctx
                    .fail(Op::CreateVolume.name(), Default::default(), f)
                    .into());
            }
        };
        let send = |label: String| {
            let mut req = ctx
                .clients
                .ec2
                .create_volume()
                .availability_zone(&zone)
                .size(self.params.volume_size_gib)
                .tag_specifications(ctx.run_id.tags(ResourceType::Volume, &label));
            if let Some(t) = &self.params.volume_type {
                req = req.volume_type(VolumeType::from(t.as_str()));
            }
            req.send()
        };
        let made = |out: &aws_sdk_ec2::operation::create_volume::CreateVolumeOutput, _: &str| {
            out.volume_id().map(str::to_string).into_iter().collect()
        };
        let reserve = ctx.caps.of(Kind::Volume).map(|cap| (1, cap));
        let (out, ids) = ctx
            .create(Op::CreateVolume, Kind::Volume, reserve, send, made)
            .await?;
        let mut h = Held::new(&ids[0], Want::Available);
        h.ready = out.state() == Some(&VolumeState::Available);
        h.zone = out.availability_zone().map(str::to_string).or(Some(zone));
        self.volumes.push_back(h);
        Ok(())
    }

    pub(super) async fn describe_volumes(&mut self, ctx: &RunCtx) -> StepResult {
        let mut req = ctx.clients.ec2.describe_volumes();
        if self.volumes.is_empty() {
            req = req.filters(ctx.run_id.tag_filter());
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

    pub(super) async fn wait_volume(&mut self, ctx: &RunCtx, want: Want) -> StepResult {
        let name = if want == Want::InUse {
            Op::VolumeInUse.name()
        } else {
            Op::VolumeAvailable.name()
        };
        self.wait_held(ctx, Pool::Volumes, want, name).await
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
                let subject = (Pool::Volumes, id.as_str(), Want::Available);
                ctx.wait_for(&self.params, Op::VolumeAvailable.name(), subject, since)
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
        let send = |label: String| {
            ctx.clients
                .ec2
                .create_snapshot()
                .volume_id(volume)
                .description(&label)
                .tag_specifications(ctx.run_id.tags(ResourceType::Snapshot, &label))
                .send()
        };
        let made = |out: &aws_sdk_ec2::operation::create_snapshot::CreateSnapshotOutput,
                    _: &str| {
            out.snapshot_id().map(str::to_string).into_iter().collect()
        };
        // Snapshots share the volumes' cap (--max-volumes).
        let reserve = ctx.caps.of(Kind::Snapshot).map(|cap| (1, cap));
        let (out, ids) = ctx
            .create(Op::CreateSnapshot, Kind::Snapshot, reserve, send, made)
            .await?;
        let mut h = Held::new(&ids[0], Want::Completed);
        h.ready = out.state() == Some(&SnapshotState::Completed);
        self.snapshots.push_back(h);
        Ok(())
    }

    pub(super) async fn wait_snapshot(&mut self, ctx: &RunCtx) -> StepResult {
        let name = Op::SnapshotCompleted.name();
        self.wait_held(ctx, Pool::Snapshots, Want::Completed, name)
            .await
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
