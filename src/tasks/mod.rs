//! Tasks: the cloud ops a simulated user runs (`ec2:RunInstances`,
//! `s3:PutObject`, provisioning waits such as `ec2:instance-running`), each
//! measured and recorded into the stats. An op that needs a subject the user
//! does not have yet (terminate with no instance, get with no object) first
//! creates one, measured under its own name.

pub mod cleanup;
mod ec2;
pub mod errors;
mod s3;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::profile::Params;
use crate::resources::Tracker;
use crate::stats::{Bytes, Failure, Stats};
use crate::target::Clients;

/// The services ops belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ec2,
    S3,
}

macro_rules! ops {
    ($($variant:ident => $name:literal, $svc:ident;)*) => {
        /// Every op a profile can name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op { $($variant),* }
        impl Op {
            /// All ops, in the order `check` lists them.
            pub fn all() -> &'static [Op] { &[$(Op::$variant),*] }
            /// The name profiles and reports use.
            pub fn name(self) -> &'static str { match self { $(Op::$variant => $name),* } }
            pub fn service(self) -> Service { match self { $(Op::$variant => Service::$svc),* } }
            pub fn from_name(s: &str) -> Option<Op> {
                match s { $($name => Some(Op::$variant),)* _ => None }
            }
        }
    };
}

ops! {
    RunInstances => "ec2:RunInstances", Ec2;
    DescribeInstances => "ec2:DescribeInstances", Ec2;
    TerminateInstances => "ec2:TerminateInstances", Ec2;
    InstanceRunning => "ec2:instance-running", Ec2;
    InstanceTerminated => "ec2:instance-terminated", Ec2;
    CreateVolume => "ec2:CreateVolume", Ec2;
    DescribeVolumes => "ec2:DescribeVolumes", Ec2;
    DeleteVolume => "ec2:DeleteVolume", Ec2;
    VolumeAvailable => "ec2:volume-available", Ec2;
    CreateBucket => "s3:CreateBucket", S3;
    PutObject => "s3:PutObject", S3;
    GetObject => "s3:GetObject", S3;
    DeleteObject => "s3:DeleteObject", S3;
    DeleteBucket => "s3:DeleteBucket", S3;
}

/// Budget caps: the most resources of a kind a run keeps alive at once.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Caps {
    pub max_instances: u64,
    pub max_volumes: u64,
    pub max_buckets: u64,
}

/// What every user of a run shares.
pub struct RunCtx {
    pub run_id: String,
    pub clients: Clients,
    pub stats: Stats,
    pub tracker: Tracker,
    pub caps: Caps,
    /// First availability zone of the region, for `availability_zone = "auto"`.
    pub default_az: Option<String>,
    /// The image `image_id = "auto"` stands for.
    pub auto_image: Option<String>,
    shared_bucket: tokio::sync::Mutex<Option<String>>,
    payloads: std::sync::Mutex<HashMap<u64, bytes::Bytes>>,
    names: AtomicU64,
}

impl RunCtx {
    pub fn new(
        run_id: String,
        clients: Clients,
        stats: Stats,
        tracker: Tracker,
        caps: Caps,
    ) -> RunCtx {
        RunCtx {
            run_id,
            clients,
            stats,
            tracker,
            caps,
            default_az: None,
            auto_image: None,
            shared_bucket: tokio::sync::Mutex::new(None),
            payloads: Default::default(),
            names: AtomicU64::new(0),
        }
    }

    /// A fresh name with the run's prefix: `cs-<runid>-<n>`.
    pub fn new_name(&self) -> String {
        let n = self.names.fetch_add(1, Ordering::Relaxed) + 1;
        format!("cs-{}-{n}", self.run_id)
    }

    /// A payload of `size` random bytes, shared between requests.
    fn payload(&self, size: u64) -> bytes::Bytes {
        let mut g = self.payloads.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(size)
            .or_insert_with(|| {
                let mut v = vec![0u8; size as usize];
                rand::Rng::fill(&mut rand::rng(), &mut v[..]);
                bytes::Bytes::from(v)
            })
            .clone()
    }

    /// Records a finished SDK call; returns the value on success.
    fn measure<T, E>(
        &self,
        name: &str,
        t0: Instant,
        res: Result<T, SdkError<E, HttpResponse>>,
        bytes: Bytes,
    ) -> Result<T, Failure>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let took = t0.elapsed();
        match res {
            Ok(v) => {
                self.stats.record(name, took, bytes, None);
                Ok(v)
            }
            Err(e) => {
                let f = errors::classify(&e);
                self.stats.record(
                    name,
                    took,
                    Bytes {
                        sent: bytes.sent,
                        received: 0,
                    },
                    Some(&f),
                );
                Err(f)
            }
        }
    }

    /// Records a failure that is not an SDK error (a wait that timed out).
    fn fail(&self, name: &str, took: Duration, f: Failure) -> Failure {
        self.stats.record(name, took, Bytes::default(), Some(&f));
        f
    }
}

/// A resource the user holds, with when its create call answered.
#[derive(Debug, Clone)]
struct Held {
    id: String,
    since: Instant,
    /// In the state the next wait looks for (running, available).
    ready: bool,
    /// A wait op has measured this one already.
    waited: bool,
}

/// Most objects a user remembers for get/delete; older ones stay in their
/// bucket and go with it at clean-up.
const MAX_REMEMBERED_OBJECTS: usize = 1000;

/// One simulated user's state.
pub struct User {
    pub id: u64,
    pub params: Arc<Params>,
    rng: SmallRng,
    instances: VecDeque<Held>,
    terminating: VecDeque<Held>,
    volumes: VecDeque<Held>,
    buckets: Vec<String>,
    objects: VecDeque<(String, String, u64)>,
    object_seq: u64,
}

/// Why a step did not complete: the sequence it belongs to stops there.
#[derive(Debug)]
pub enum StepError {
    Failed(Failure),
    /// A budget cap kept the op from creating.
    Capped,
}

impl From<Failure> for StepError {
    fn from(f: Failure) -> Self {
        StepError::Failed(f)
    }
}

pub type StepResult = Result<(), StepError>;

impl User {
    pub fn new(id: u64, params: Arc<Params>) -> User {
        User {
            id,
            params,
            rng: SmallRng::from_rng(&mut rand::rng()),
            instances: VecDeque::new(),
            terminating: VecDeque::new(),
            volumes: VecDeque::new(),
            buckets: Vec::new(),
            objects: VecDeque::new(),
            object_seq: 0,
        }
    }

    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// Runs one op, recording every request it makes.
    pub async fn run(&mut self, ctx: &RunCtx, op: Op) -> StepResult {
        let r = match op {
            Op::RunInstances => self.run_instances(ctx).await,
            Op::DescribeInstances => self.describe_instances(ctx).await,
            Op::TerminateInstances => self.terminate_instance(ctx).await,
            Op::InstanceRunning => self.wait_instance_running(ctx).await,
            Op::InstanceTerminated => self.wait_instance_terminated(ctx).await,
            Op::CreateVolume => self.create_volume(ctx).await,
            Op::DescribeVolumes => self.describe_volumes(ctx).await,
            Op::DeleteVolume => self.delete_volume(ctx).await,
            Op::VolumeAvailable => self.wait_volume_available(ctx).await,
            Op::CreateBucket => self.create_bucket(ctx).await.map(|_| ()),
            Op::PutObject => self.put_object(ctx).await,
            Op::GetObject => self.get_object(ctx).await,
            Op::DeleteObject => self.delete_object(ctx).await,
            Op::DeleteBucket => self.delete_bucket(ctx).await,
        };
        if let Err(StepError::Capped) = &r {
            ctx.stats.lock().count_capped(op.name());
        }
        r
    }
}
