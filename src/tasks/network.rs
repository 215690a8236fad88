//! EC2 access and networking ops: Elastic IPs (VPC allocation ids or
//! classic public IPs), key pairs, security groups and their ingress rules.

use std::time::Instant;

use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType};

use super::ctx::none;
use super::{Address, Op, RunCtx, StepResult, User, sdk};
use crate::resources::Kind;
use crate::stats::Bytes;

impl User {
    pub(super) async fn allocate_address(&mut self, ctx: &RunCtx) -> StepResult {
        let send = |label: String| {
            ctx.clients
                .ec2
                .allocate_address()
                .tag_specifications(ctx.run_id.tags(ResourceType::ElasticIp, &label))
                .send()
        };
        let made = |out: &aws_sdk_ec2::operation::allocate_address::AllocateAddressOutput,
                    _: &str| {
            let key = out.allocation_id().or(out.public_ip());
            key.map(str::to_string).into_iter().collect()
        };
        let (out, _) = ctx
            .create(Op::AllocateAddress, Kind::Address, None, send, made)
            .await?;
        self.addresses.push_back(Address {
            allocation_id: out.allocation_id().map(str::to_string),
            public_ip: out.public_ip().map(str::to_string),
            association_id: None,
            instance: None,
        });
        Ok(())
    }

    pub(super) async fn associate_address(&mut self, ctx: &RunCtx) -> StepResult {
        if !self.addresses.iter().any(|a| a.instance.is_none()) {
            self.allocate_address(ctx).await?;
        }
        let instance = self.ensure_running_instance(ctx).await?;
        let i = self
            .addresses
            .iter()
            .rposition(|a| a.instance.is_none())
            .ok_or_else(|| none("address", "AllocateAddress"))?;
        let a = self.addresses[i].clone();
        let mut req = ctx.clients.ec2.associate_address().instance_id(&instance);
        req = match (&a.allocation_id, &a.public_ip) {
            (Some(id), _) => req.allocation_id(id),
            (None, Some(ip)) => req.public_ip(ip),
            (None, None) => return Err(none("address", "AllocateAddress")),
        };
        let t0 = Instant::now();
        let res = sdk(|| req.send()).await;
        let out = ctx.measure(Op::AssociateAddress.name(), t0, res, Bytes::default())?;
        let a = &mut self.addresses[i];
        a.instance = Some(instance);
        a.association_id = out.association_id().map(str::to_string);
        Ok(())
    }

    pub(super) async fn disassociate_address(&mut self, ctx: &RunCtx) -> StepResult {
        if !self.addresses.iter().any(|a| a.instance.is_some()) {
            self.associate_address(ctx).await?;
        }
        let i = self
            .addresses
            .iter()
            .rposition(|a| a.instance.is_some())
            .ok_or_else(|| none("association", "AssociateAddress"))?;
        self.disassociate_at(ctx, i).await
    }

    async fn disassociate_at(&mut self, ctx: &RunCtx, i: usize) -> StepResult {
        let a = self.addresses[i].clone();
        let mut req = ctx.clients.ec2.disassociate_address();
        req = match (&a.association_id, &a.public_ip) {
            (Some(id), _) => req.association_id(id),
            (None, Some(ip)) => req.public_ip(ip),
            (None, None) => return Err(none("association", "AssociateAddress")),
        };
        let t0 = Instant::now();
        let res = sdk(|| req.send()).await;
        ctx.measure(Op::DisassociateAddress.name(), t0, res, Bytes::default())?;
        let a = &mut self.addresses[i];
        a.instance = None;
        a.association_id = None;
        Ok(())
    }

    pub(super) async fn release_address(&mut self, ctx: &RunCtx) -> StepResult {
        if self.addresses.is_empty() {
            self.allocate_address(ctx).await?;
        }
        if self.addresses.front().is_some_and(|a| a.instance.is_some()) {
            self.disassociate_at(ctx, 0).await?;
        }
        let a = self
            .addresses
            .pop_front()
            .ok_or_else(|| none("address", "AllocateAddress"))?;
        let mut req = ctx.clients.ec2.release_address();
        req = match (&a.allocation_id, &a.public_ip) {
            (Some(id), _) => req.allocation_id(id),
            (None, Some(ip)) => req.public_ip(ip),
            (None, None) => return Err(none("address", "AllocateAddress")),
        };
        let t0 = Instant::now();
        let res = sdk(|| req.send()).await;
        match ctx.measure(Op::ReleaseAddress.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::Address, &a.key()).await;
                Ok(())
            }
            Err(f) => {
                self.addresses.push_front(a);
                Err(f.into())
            }
        }
    }

    pub(super) async fn create_key_pair(&mut self, ctx: &RunCtx) -> StepResult {
        let send = |name: String| {
            ctx.clients
                .ec2
                .create_key_pair()
                .tag_specifications(ctx.run_id.tags(ResourceType::KeyPair, &name))
                .key_name(name)
                .send()
        };
        // The private key in the answer is dropped here, never stored or logged.
        let made = |_: &aws_sdk_ec2::operation::create_key_pair::CreateKeyPairOutput,
                    name: &str| vec![name.to_string()];
        let (_, names) = ctx
            .create(Op::CreateKeyPair, Kind::KeyPair, None, send, made)
            .await?;
        self.key_pairs.extend(names);
        Ok(())
    }

    pub(super) async fn delete_key_pair(&mut self, ctx: &RunCtx) -> StepResult {
        if self.key_pairs.is_empty() {
            self.create_key_pair(ctx).await?;
        }
        let name = self
            .key_pairs
            .pop_front()
            .ok_or_else(|| none("key-pair", "CreateKeyPair"))?;
        let t0 = Instant::now();
        let res = sdk(|| ctx.clients.ec2.delete_key_pair().key_name(&name).send()).await;
        match ctx.measure(Op::DeleteKeyPair.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::KeyPair, &name).await;
                Ok(())
            }
            Err(f) => {
                self.key_pairs.push_front(name);
                Err(f.into())
            }
        }
    }

    pub(super) async fn create_security_group(&mut self, ctx: &RunCtx) -> StepResult {
        let send = |name: String| {
            ctx.clients
                .ec2
                .create_security_group()
                .description(format!("cloudswarm run {}", ctx.run_id))
                .tag_specifications(ctx.run_id.tags(ResourceType::SecurityGroup, &name))
                .group_name(name)
                .send()
        };
        let made =
            |out: &aws_sdk_ec2::operation::create_security_group::CreateSecurityGroupOutput,
             _: &str| { out.group_id().map(str::to_string).into_iter().collect() };
        let (_, ids) = ctx
            .create(
                Op::CreateSecurityGroup,
                Kind::SecurityGroup,
                None,
                send,
                made,
            )
            .await?;
        self.security_groups
            .extend(ids.into_iter().map(|id| (id, 0)));
        Ok(())
    }

    pub(super) async fn authorize_ingress(&mut self, ctx: &RunCtx) -> StepResult {
        if self.security_groups.is_empty() {
            self.create_security_group(ctx).await?;
        }
        let (id, rules) = self
            .security_groups
            .back()
            .cloned()
            .ok_or_else(|| none("security-group", "CreateSecurityGroup"))?;
        // A new port each time: the same rule twice is a duplicate error.
        let port = 10_000 + (rules as i32 % 50_000);
        let perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(port)
            .to_port(port)
            .ip_ranges(
                IpRange::builder()
                    .cidr_ip(&self.params.ingress_cidr)
                    .build(),
            )
            .build();
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .ec2
                .authorize_security_group_ingress()
                .group_id(&id)
                .ip_permissions(perm)
                .send()
        })
        .await;
        ctx.measure(
            Op::AuthorizeSecurityGroupIngress.name(),
            t0,
            res,
            Bytes::default(),
        )?;
        if let Some(g) = self.security_groups.back_mut() {
            g.1 = g.1.wrapping_add(1);
        }
        Ok(())
    }

    pub(super) async fn delete_security_group(&mut self, ctx: &RunCtx) -> StepResult {
        if self.security_groups.is_empty() {
            self.create_security_group(ctx).await?;
        }
        let g = self
            .security_groups
            .pop_front()
            .ok_or_else(|| none("security-group", "CreateSecurityGroup"))?;
        let t0 = Instant::now();
        let res = sdk(|| {
            ctx.clients
                .ec2
                .delete_security_group()
                .group_id(&g.0)
                .send()
        })
        .await;
        match ctx.measure(Op::DeleteSecurityGroup.name(), t0, res, Bytes::default()) {
            Ok(_) => {
                ctx.tracker.deleted(Kind::SecurityGroup, &g.0).await;
                Ok(())
            }
            Err(f) => {
                self.security_groups.push_front(g);
                Err(f.into())
            }
        }
    }
}
