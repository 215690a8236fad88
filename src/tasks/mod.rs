//! Tasks: the cloud ops a simulated user runs (`ec2:RunInstances`,
//! `s3:PutObject`, provisioning waits such as `ec2:instance-running`), each
//! measured and recorded into the stats. An op that needs a subject the user
//! does not have yet (terminate with no instance, get with no object) first
//! creates one, measured under its own name.

pub mod cleanup;
mod ec2;
mod ec2_net;
pub mod errors;
mod s3;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::profile::Params;
use crate::resources::Tracker;
use crate::stats::{Bytes, Failure, Stats};
use crate::target::Clients;

/// `size` random bytes, cut from one buffer per power-of-two size class (4
/// KiB and up) that lives as long as the process: taking a slice locks
/// nothing and counts no reference, which matters when every user on every
/// core uploads at once. The buffers take at most twice the largest size
/// asked for.
fn payload(size: usize) -> bytes::Bytes {
    static CLASSES: [std::sync::OnceLock<&'static [u8]>; 64] =
        [const { std::sync::OnceLock::new() }; 64];
    let class = size.max(4096).next_power_of_two();
    let buf = CLASSES[class.trailing_zeros() as usize].get_or_init(|| {
        let mut v = vec![0u8; class];
        rand::Rng::fill(&mut rand::rng(), &mut v[..]);
        Vec::leak(v)
    });
    bytes::Bytes::from_static(&buf[..size])
}

/// `sdk(|| request.send())`: builds an SDK call's future outside the
/// caller and puts it on the heap. That future is large (9.6 KB for a
/// PutObject). Held inline it would make every op's future, and with it
/// every user's, as large as the largest op's. Built inline and then boxed,
/// it would still sit in the calling op's stack frame, and every poll of
/// the op (several per request) and of `User::run`, which inlines all ops,
/// would set up and probe a frame of over 20 KB. Built here, in a function
/// of its own that is never inlined, it costs that frame once per call, and
/// the ops' futures and poll frames stay small (a unit test holds the
/// futures' size).
#[inline(never)]
fn sdk<F: std::future::Future>(send: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::pin(send())
}

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
    StopInstances => "ec2:StopInstances", Ec2;
    StartInstances => "ec2:StartInstances", Ec2;
    RebootInstances => "ec2:RebootInstances", Ec2;
    InstanceRunning => "ec2:instance-running", Ec2;
    InstanceStopped => "ec2:instance-stopped", Ec2;
    InstanceTerminated => "ec2:instance-terminated", Ec2;
    CreateVolume => "ec2:CreateVolume", Ec2;
    AttachVolume => "ec2:AttachVolume", Ec2;
    DetachVolume => "ec2:DetachVolume", Ec2;
    DescribeVolumes => "ec2:DescribeVolumes", Ec2;
    DeleteVolume => "ec2:DeleteVolume", Ec2;
    VolumeAvailable => "ec2:volume-available", Ec2;
    VolumeInUse => "ec2:volume-in-use", Ec2;
    CreateSnapshot => "ec2:CreateSnapshot", Ec2;
    DeleteSnapshot => "ec2:DeleteSnapshot", Ec2;
    SnapshotCompleted => "ec2:snapshot-completed", Ec2;
    AllocateAddress => "ec2:AllocateAddress", Ec2;
    AssociateAddress => "ec2:AssociateAddress", Ec2;
    DisassociateAddress => "ec2:DisassociateAddress", Ec2;
    ReleaseAddress => "ec2:ReleaseAddress", Ec2;
    CreateKeyPair => "ec2:CreateKeyPair", Ec2;
    DeleteKeyPair => "ec2:DeleteKeyPair", Ec2;
    CreateSecurityGroup => "ec2:CreateSecurityGroup", Ec2;
    AuthorizeSecurityGroupIngress => "ec2:AuthorizeSecurityGroupIngress", Ec2;
    DeleteSecurityGroup => "ec2:DeleteSecurityGroup", Ec2;
    DescribeImages => "ec2:DescribeImages", Ec2;
    DescribeAvailabilityZones => "ec2:DescribeAvailabilityZones", Ec2;
    CreateBucket => "s3:CreateBucket", S3;
    DeleteBucket => "s3:DeleteBucket", S3;
    ListBuckets => "s3:ListBuckets", S3;
    HeadBucket => "s3:HeadBucket", S3;
    PutObject => "s3:PutObject", S3;
    GetObject => "s3:GetObject", S3;
    HeadObject => "s3:HeadObject", S3;
    ListObjects => "s3:ListObjects", S3;
    DeleteObject => "s3:DeleteObject", S3;
    DeleteObjects => "s3:DeleteObjects", S3;
    MultipartUpload => "s3:MultipartUpload", S3;
}

/// Entries recorded that are not ops of their own: parts of an op.
pub const SUB_ENTRIES: [&str; 7] = [
    "s3:GetObject:ttfb",
    "s3:CreateMultipartUpload",
    "s3:UploadPart",
    "s3:CompleteMultipartUpload",
    "s3:AbortMultipartUpload",
    PUT_RUN_MARKER,
    DELETE_RUN_MARKER,
];

/// The PutObject of a bucket's marker (see [`cleanup::MARKER_KEY`]), right
/// after s3:CreateBucket.
pub const PUT_RUN_MARKER: &str = "s3:PutRunMarker";
/// The DeleteObject of a bucket's marker, right before s3:DeleteBucket.
pub const DELETE_RUN_MARKER: &str = "s3:DeleteRunMarker";

/// True for a name reports can carry (an op or a sub-entry).
pub fn is_known_entry(name: &str) -> bool {
    Op::from_name(name).is_some() || SUB_ENTRIES.contains(&name)
}

/// Budget caps: the most resources of a kind a run keeps alive at once.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Caps {
    pub max_instances: u64,
    pub max_volumes: u64,
    pub max_buckets: u64,
    /// Bytes of objects held at once.
    pub max_bytes: u64,
}

/// Ops in flight at once per engine, unless told otherwise.
pub const DEFAULT_MAX_INFLIGHT: usize = 4096;

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
    /// The run's one bucket for `bucket = "shared"`, created on first need
    /// (again if the cloud loses it).
    shared_bucket: arc_swap::ArcSwapOption<Arc<str>>,
    /// One creator of the shared bucket at a time.
    shared_bucket_creation: tokio::sync::Mutex<()>,
    names: AtomicU64,
    /// The S3 endpoint answered ListObjectsV2 as unsupported: use V1.
    list_v1: AtomicBool,
    /// Slots for ops in flight: bounds the engine's memory and connections
    /// when users outrun what the machine can send.
    pub inflight: tokio::sync::Semaphore,
    /// Times a user had to wait for a slot since the last status line took
    /// the count (the engine is saturated).
    pub saturated: AtomicU64,
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
            shared_bucket: arc_swap::ArcSwapOption::empty(),
            shared_bucket_creation: tokio::sync::Mutex::new(()),
            names: AtomicU64::new(0),
            list_v1: AtomicBool::new(false),
            inflight: tokio::sync::Semaphore::new(DEFAULT_MAX_INFLIGHT),
            saturated: AtomicU64::new(0),
        }
    }

    /// A fresh name with the run's prefix: `cs-<runid>-<n>`.
    pub fn new_name(&self) -> String {
        let n = self.names.fetch_add(1, Ordering::Relaxed) + 1;
        format!("cs-{}-{n}", self.run_id)
    }

    /// A payload of `size` random bytes: a slice of a buffer shared by the
    /// whole process (see [`payload`]).
    fn payload(&self, size: u64) -> bytes::Bytes {
        payload(size as usize)
    }

    /// Records a finished SDK call; returns the value on success.
    fn measure<T, E>(
        &self,
        name: &'static str,
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

    /// Journals the intent to create (durably, before the call is sent). If
    /// the journal cannot be written the create is not sent: the op fails as
    /// `journal` and gives back the `reserved` room under the caps.
    async fn intent(
        &self,
        kind: crate::resources::Kind,
        name: &str,
        op: &'static str,
        reserved: u64,
    ) -> Result<u64, StepError> {
        match self.tracker.intent(kind, Some(name)).await {
            Ok(seq) => Ok(seq),
            Err(msg) => {
                self.tracker.release(kind, reserved);
                Err(self
                    .fail(op, Duration::ZERO, Failure::new("journal", msg))
                    .into())
            }
        }
    }

    /// Records a failure that is not an SDK error (a wait that timed out).
    fn fail(&self, name: &'static str, took: Duration, f: Failure) -> Failure {
        self.stats.record(name, took, Bytes::default(), Some(&f));
        f
    }
}

/// The state a held resource is heading for, which the matching wait op measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Running,
    Stopped,
    Available,
    InUse,
    Completed,
}

/// A resource the user holds.
#[derive(Debug, Clone)]
struct Held {
    id: String,
    /// When the call that set `want` answered: waits are timed from here.
    since: Instant,
    want: Want,
    /// Already seen in the wanted state (the call's own answer said so).
    ready: bool,
    /// A wait op has measured the move to `want` already.
    waited: bool,
    /// Availability zone, where known.
    zone: Option<String>,
    /// Volumes: the instance it is attached to. Instances: devices used so far.
    attached_to: Option<String>,
    /// Volumes: the device it is attached as.
    device: Option<String>,
    devices: u8,
}

impl Held {
    fn new(id: impl Into<String>, want: Want) -> Held {
        Held {
            id: id.into(),
            since: Instant::now(),
            want,
            ready: false,
            waited: false,
            zone: None,
            attached_to: None,
            device: None,
            devices: 0,
        }
    }

    /// Heads for a new state: the next wait measures from now.
    fn head_for(&mut self, want: Want) {
        self.want = want;
        self.since = Instant::now();
        self.ready = false;
        self.waited = false;
    }
}

/// An Elastic IP: by allocation id in a VPC, by public IP on classic clouds.
#[derive(Debug, Clone)]
struct Address {
    allocation_id: Option<String>,
    public_ip: Option<String>,
    association_id: Option<String>,
    instance: Option<String>,
}

impl Address {
    /// The id the tracker and the journal use.
    fn key(&self) -> String {
        self.allocation_id
            .clone()
            .or_else(|| self.public_ip.clone())
            .unwrap_or_default()
    }
}

/// Most objects a user remembers for get/delete; older ones stay in their
/// bucket and go with it at clean-up.
const MAX_REMEMBERED_OBJECTS: usize = 1000;

/// An object a user put: 32 bytes, nothing on the heap of its own (the
/// bucket name is shared), so a user remembering a thousand stays small.
#[derive(Debug, Clone)]
struct Obj {
    bucket: Arc<str>,
    /// The key is `u<user id>/o<n>` (see [`User::key`]).
    n: u64,
    size: u64,
}

/// One simulated user's state.
pub struct User {
    pub id: u64,
    pub params: Arc<Params>,
    rng: SmallRng,
    instances: VecDeque<Held>,
    terminating: VecDeque<Held>,
    volumes: VecDeque<Held>,
    snapshots: VecDeque<Held>,
    addresses: VecDeque<Address>,
    key_pairs: VecDeque<String>,
    /// Security group ids, with how many rules each got.
    security_groups: VecDeque<(String, u16)>,
    buckets: Vec<Arc<str>>,
    objects: VecDeque<Obj>,
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
            snapshots: VecDeque::new(),
            addresses: VecDeque::new(),
            key_pairs: VecDeque::new(),
            security_groups: VecDeque::new(),
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
            Op::StopInstances => self.stop_instance(ctx).await,
            Op::StartInstances => self.start_instance(ctx).await,
            Op::RebootInstances => self.reboot_instance(ctx).await,
            Op::InstanceRunning => self.wait_instance(ctx, Want::Running).await,
            Op::InstanceStopped => self.wait_instance(ctx, Want::Stopped).await,
            Op::InstanceTerminated => self.wait_instance_terminated(ctx).await,
            Op::CreateVolume => self.create_volume(ctx).await,
            Op::AttachVolume => self.attach_volume(ctx).await,
            Op::DetachVolume => self.detach_volume(ctx).await,
            Op::DescribeVolumes => self.describe_volumes(ctx).await,
            Op::DeleteVolume => self.delete_volume(ctx).await,
            Op::VolumeAvailable => self.wait_volume(ctx, Want::Available).await,
            Op::VolumeInUse => self.wait_volume(ctx, Want::InUse).await,
            Op::CreateSnapshot => self.create_snapshot(ctx).await,
            Op::DeleteSnapshot => self.delete_snapshot(ctx).await,
            Op::SnapshotCompleted => self.wait_snapshot(ctx).await,
            Op::AllocateAddress => self.allocate_address(ctx).await,
            Op::AssociateAddress => self.associate_address(ctx).await,
            Op::DisassociateAddress => self.disassociate_address(ctx).await,
            Op::ReleaseAddress => self.release_address(ctx).await,
            Op::CreateKeyPair => self.create_key_pair(ctx).await,
            Op::DeleteKeyPair => self.delete_key_pair(ctx).await,
            Op::CreateSecurityGroup => self.create_security_group(ctx).await,
            Op::AuthorizeSecurityGroupIngress => self.authorize_ingress(ctx).await,
            Op::DeleteSecurityGroup => self.delete_security_group(ctx).await,
            Op::DescribeImages => self.describe_images(ctx).await,
            Op::DescribeAvailabilityZones => self.describe_zones(ctx).await,
            Op::CreateBucket => self.create_bucket(ctx).await.map(|_| ()),
            Op::DeleteBucket => self.delete_bucket(ctx).await,
            Op::ListBuckets => self.list_buckets(ctx).await,
            Op::HeadBucket => self.head_bucket(ctx).await,
            Op::PutObject => self.put_object(ctx).await,
            Op::GetObject => self.get_object(ctx).await,
            Op::HeadObject => self.head_object(ctx).await,
            Op::ListObjects => self.list_objects(ctx).await,
            Op::DeleteObject => self.delete_object(ctx).await,
            Op::DeleteObjects => self.delete_objects(ctx).await,
            Op::MultipartUpload => self.multipart_upload(ctx).await,
        };
        if let Err(StepError::Capped) = &r {
            ctx.stats.lock().count_capped(op.name());
            crate::metrics::capped(op.name());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No op holds an SDK request's future inline (see [`sdk`]): the ops'
    /// future is smaller than one PutObject send future (3 KB against 9.6 KB
    /// in a release build; 20.7 KB before the boxing). Building the clients
    /// sends nothing.
    #[tokio::test]
    async fn no_op_future_holds_an_sdk_future_inline() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            target: crate::target::TargetArgs,
        }
        let cli = <Cli as clap::Parser>::parse_from([
            "t",
            "--ec2-endpoint",
            "http://127.0.0.1:9/",
            "--s3-endpoint",
            "http://127.0.0.1:9/",
            "--region",
            "us-east-1",
        ]);
        let clients = cli.target.clients().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::create(dir.path(), "sizes", &serde_json::json!({})).unwrap();
        let caps = Caps {
            max_instances: 1,
            max_volumes: 1,
            max_buckets: 1,
            max_bytes: 1,
        };
        let ctx = RunCtx::new("sizes".into(), clients, Stats::new(), tracker, caps);
        let send = std::mem::size_of_val(&ctx.clients.s3.put_object().send());
        let mut user = User::new(1, Arc::new(Params::default()));
        // One type for every op: as large as the largest op's future.
        let op_future = std::mem::size_of_val(&user.run(&ctx, Op::PutObject));
        assert!(
            op_future < send,
            "an op's future is {op_future} bytes, a PutObject send future {send}: \
             some op awaits an SDK call outside `sdk(|| ...)`"
        );
    }

    #[test]
    fn payloads_are_slices_of_one_buffer_per_size_class() {
        for n in [0, 1, 1000, 4096, 4097, 1 << 20] {
            assert_eq!(payload(n).len(), n);
        }
        // Same class, same bytes: 1 KiB and 4 KiB come from the 4 KiB buffer.
        let (a, b) = (payload(1024), payload(4096));
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(a[..], b[..1024]);
        // Random, not zeros.
        assert!(b.iter().any(|&x| x != 0));
        // The next class is another buffer.
        assert_ne!(payload(4097).as_ptr(), b.as_ptr());
    }
}
