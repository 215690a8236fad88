//! Tasks: the cloud ops a simulated user runs (`ec2:RunInstances`,
//! `s3:PutObject`, provisioning waits such as `ec2:instance-running`), each
//! measured and recorded into the stats. An op that needs a subject the user
//! does not have yet (terminate with no instance, get with no object) first
//! creates one, measured under its own name.

mod ctx;
mod instances;
mod network;
mod poller;
mod s3;
mod volumes;

pub use ctx::RunCtx;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::failure::Failure;
use crate::ops::Op;
use crate::profile::Params;
use crate::stats::Bytes;

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

/// The state a held resource is heading for, which the matching wait op measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Running,
    Stopped,
    Available,
    InUse,
    Completed,
    /// An instance on its way out (the terminating list).
    Terminated,
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

/// The lists of held resources a provisioning wait can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Instances,
    Volumes,
    Snapshots,
}

impl Pool {
    fn what(self) -> &'static str {
        match self {
            Pool::Instances => "instance",
            Pool::Volumes => "volume",
            Pool::Snapshots => "snapshot",
        }
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

    fn pool(&mut self, pool: Pool) -> &mut VecDeque<Held> {
        match pool {
            Pool::Instances => &mut self.instances,
            Pool::Volumes => &mut self.volumes,
            Pool::Snapshots => &mut self.snapshots,
        }
    }

    /// Makes a resource heading for `want`, for a wait that has none.
    async fn make_for_wait(&mut self, ctx: &RunCtx, pool: Pool, want: Want) -> StepResult {
        // Boxed: these reach back into waits (stopping first waits for running).
        match (pool, want) {
            (Pool::Instances, Want::Stopped) => Box::pin(self.stop_instance(ctx)).await,
            (Pool::Instances, _) => self.run_instances(ctx).await,
            (Pool::Volumes, Want::InUse) => Box::pin(self.attach_volume(ctx)).await,
            (Pool::Volumes, _) => self.create_volume(ctx).await,
            (Pool::Snapshots, _) => self.create_snapshot(ctx).await,
        }
    }

    /// The wait protocol for what the user holds: measures the newest move
    /// of one of `pool`'s resources to `want` that no wait has measured yet
    /// (making one first if there is none), recorded under `name`. A
    /// resource whose call's answer already showed the state is recorded as
    /// a wait of zero, whatever its kind: the state was there at the answer.
    async fn wait_held(
        &mut self,
        ctx: &RunCtx,
        pool: Pool,
        want: Want,
        name: &'static str,
    ) -> StepResult {
        let unwaited = |l: &VecDeque<Held>| l.iter().rposition(|h| h.want == want && !h.waited);
        if unwaited(self.pool(pool)).is_none() {
            self.make_for_wait(ctx, pool, want).await?;
        }
        let list = self.pool(pool);
        let idx = unwaited(list).ok_or_else(|| ctx::none(pool.what(), "the create call"))?;
        list[idx].waited = true;
        let held = list[idx].clone();
        if held.ready {
            ctx.record(name, std::time::Duration::ZERO, Bytes::default(), None);
        } else {
            ctx.wait_for(&self.params, name, (pool, &held.id, want), held.since)
                .await?;
        }
        if let Some(h) = self.pool(pool).iter_mut().find(|h| h.id == held.id) {
            h.ready = true;
        }
        Ok(())
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
            ctx.record_capped(op);
        }
        r
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A run context whose clients point at `url` (signing with test keys,
    /// from a eucarc in `dir`). Building them sends nothing.
    pub(crate) async fn ctx_at(dir: &std::path::Path, url: &str) -> RunCtx {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            target: crate::target::TargetArgs,
        }
        let eucarc = dir.join("eucarc");
        let keys = format!(
            "EC2_URL={url}\nS3_URL={url}\nEC2_ACCESS_KEY=testing\nEC2_SECRET_KEY=testing\n"
        );
        std::fs::write(&eucarc, keys).unwrap();
        let cli = <Cli as clap::Parser>::parse_from([
            "t",
            "--ec2-endpoint",
            url,
            "--s3-endpoint",
            url,
            "--region",
            "us-east-1",
            "--eucarc",
            eucarc.to_str().unwrap(),
        ]);
        let clients = cli.target.clients().await.unwrap();
        let run = crate::naming::RunId::parse("sizes").unwrap();
        let meta = crate::naming::RunMeta::new(
            &run,
            std::path::Path::new("p.toml"),
            0.0,
            serde_json::json!({}),
            crate::naming::Services::ALL,
        );
        let tracker = crate::resources::Tracker::create(dir, &run, &meta).unwrap();
        let caps = crate::resources::Caps {
            max_instances: 1,
            max_volumes: 1,
            max_buckets: 1,
            max_bytes: 1,
        };
        RunCtx::new(run, clients, crate::stats::Stats::new(), tracker, caps)
    }

    /// A run context whose clients point at a closed port.
    pub(super) async fn offline_ctx(dir: &std::path::Path) -> RunCtx {
        ctx_at(dir, "http://127.0.0.1:9/").await
    }

    /// A moto server on a free loopback port (`MOTO_SERVER`, else the
    /// repository's `.venv`), for as long as this value lives.
    pub(crate) struct Moto {
        child: std::process::Child,
        pub url: String,
    }

    impl Moto {
        pub(crate) fn start() -> Moto {
            let bin = std::env::var_os("MOTO_SERVER").map_or_else(
                || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"),
                std::path::PathBuf::from,
            );
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let child = std::process::Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let deadline = Instant::now() + std::time::Duration::from_secs(60);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "moto did not start");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Moto {
                child,
                url: format!("http://127.0.0.1:{port}"),
            }
        }
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// No op holds an SDK request's future inline (see [`sdk`]): the ops'
    /// future is smaller than one PutObject send future (3 KB against 9.6 KB
    /// in a release build; 20.7 KB before the boxing).
    #[tokio::test]
    async fn no_op_future_holds_an_sdk_future_inline() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = offline_ctx(dir.path()).await;
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

    /// A wait on a resource whose create call's answer already showed the
    /// wanted state records the same for every kind: a wait of zero (the
    /// state was there at the answer), not the time the user spent since.
    #[tokio::test]
    async fn a_wait_on_what_is_already_ready_records_zero_for_every_kind() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = offline_ctx(dir.path()).await;
        let mut user = User::new(1, Arc::new(Params::default()));
        let long_ago = Instant::now() - std::time::Duration::from_secs(3);
        let ready = |want| {
            let mut h = Held::new("r-1", want);
            h.since = long_ago;
            h.ready = true;
            h
        };
        user.instances.push_back(ready(Want::Running));
        user.volumes.push_back(ready(Want::Available));
        user.snapshots.push_back(ready(Want::Completed));
        for op in [
            Op::InstanceRunning,
            Op::VolumeAvailable,
            Op::SnapshotCompleted,
        ] {
            assert!(user.run(&ctx, op).await.is_ok(), "{op:?}");
        }
        let snap = ctx.stats.snapshot();
        for name in [
            "ec2:instance-running",
            "ec2:volume-available",
            "ec2:snapshot-completed",
        ] {
            let e = snap.entries.iter().find(|e| e.name == name).expect(name);
            assert_eq!((e.num_requests, e.num_failures), (1, 0), "{name}");
            assert!(e.max_ms < 1.0, "{name} recorded {} ms", e.max_ms);
        }
        // Each is measured once: a second wait has a new resource to make.
        assert!(user.instances.iter().all(|h| h.waited && h.ready));
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
