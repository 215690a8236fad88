//! One run's life, shared by the headless run and the dashboard: load the
//! profile, preflight the target, pick the image, open the journal, build the
//! engine; later stop it and clean up what it made.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use aws_sdk_ec2::types::Filter;
use clap::Args;

use crate::cleanup;
use crate::engine::{Engine, RunState};
use crate::error::config_err;
use crate::naming::{NAME_RANGE, RunId, RunMeta, Services};
use crate::ops::{Op, Service};
use crate::profile::Profile;
use crate::resources::Caps;
use crate::resources::{Kind, Tracker};
use crate::stats::Stats;
use crate::target::{self, Clients};
use crate::tasks::RunCtx;

/// Limits and places shared by `run` and `serve`: stop and clean-up
/// timeouts, the state directory, budget caps, ops in flight.
#[derive(Args, Debug, Clone)]
pub struct Limits {
    /// How long users may take to finish their current task when the run stops
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub stop_timeout: Duration,
    /// How long clean-up may take before giving up on what is left
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub cleanup_timeout: Duration,
    /// Where runs are kept: their journals and reports (default: the user's state directory)
    #[arg(long, env = "CLOUDSWARM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Most instances alive at once
    #[arg(long, default_value_t = 20)]
    pub max_instances: u64,
    /// Most volumes alive at once
    #[arg(long, default_value_t = 20)]
    pub max_volumes: u64,
    /// Most buckets alive at once
    #[arg(long, default_value_t = 100)]
    pub max_buckets: u64,
    /// Most bytes of objects stored at once (e.g. 5GiB)
    #[arg(long, default_value = "5GiB", value_parser = crate::units::parse_size)]
    pub max_bytes: u64,
    /// Most ops in flight at once; users beyond it wait for a slot (the status line says so)
    #[arg(long, default_value_t = crate::engine::DEFAULT_MAX_INFLIGHT as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_inflight: u64,
}

impl Limits {
    pub fn caps(&self) -> Caps {
        Caps {
            max_instances: self.max_instances,
            max_volumes: self.max_volumes,
            max_buckets: self.max_buckets,
            max_bytes: self.max_bytes,
        }
    }
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(crate::naming::default_state_dir)
    }
}

/// What a run needs besides its profile.
pub struct Spec<'a> {
    pub profile_path: &'a Path,
    pub clients: Clients,
    pub state_dir: PathBuf,
    pub caps: Caps,
    pub max_inflight: usize,
    /// The run to work under (a worker under cloudswarm's master); None: a new one.
    pub run_id: Option<RunId>,
    /// Where the run's resource names start counting: workers sharing a
    /// run id each get their own range, so their names never collide.
    pub name_base: u64,
    /// Other workers share the run id: the clean-up claims by tag or marker
    /// only what is named from this run's range (`name_base` + 1 to
    /// `name_base` + [`NAME_RANGE`]), and whatever the journal names.
    pub own_names_only: bool,
}

/// A prepared run: the engine and what it writes into.
pub struct Session {
    pub run_id: RunId,
    pub profile_path: PathBuf,
    pub engine: Arc<Engine>,
    pub ctx: Arc<RunCtx>,
    pub tracker: Tracker,
    /// Unix seconds when the run began.
    pub started_at: f64,
    pub t0: Instant,
    /// The services the profile uses.
    pub services: Services,
}

/// What clean-up did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CleanupOutcome {
    /// Deleted, per kind.
    pub deleted: Vec<(String, u64)>,
    /// (kind, id, why) of what could not be deleted.
    pub failed: Vec<(String, String, String)>,
    /// What a listing of the cloud still found of the run (None: could not list).
    pub leaked: Option<u64>,
    /// Per kind, ids still in the cloud.
    pub left: Vec<(String, Vec<String>)>,
    /// Why the cloud could not be listed.
    pub list_error: Option<String>,
}

fn uses(p: &Profile, f: impl Fn(Op) -> bool) -> bool {
    p.users
        .iter()
        .flat_map(|u| u.tasks.iter())
        .flat_map(|t| t.steps.iter())
        .any(|&o| f(o))
}

/// Picks the image `image_id = "auto"` stands for: one of ours, else any available machine image.
async fn auto_image(ec2: &aws_sdk_ec2::Client) -> Result<String> {
    let filters = || {
        vec![
            Filter::builder().name("state").values("available").build(),
            Filter::builder()
                .name("image-type")
                .values("machine")
                .build(),
        ]
    };
    for owners in [Some("self"), None] {
        let mut req = ec2.describe_images().set_filters(Some(filters()));
        if let Some(o) = owners {
            req = req.owners(o);
        }
        let out = req.send().await.map_err(|e| {
            let f = crate::failure::classify(&e);
            config_err(format!(
                "image_id = \"auto\": DescribeImages failed ({}: {})",
                f.code, f.message
            ))
        })?;
        let mut ids: Vec<&str> = out.images().iter().filter_map(|i| i.image_id()).collect();
        ids.sort();
        if let Some(id) = ids.first() {
            return Ok(id.to_string());
        }
    }
    bail!(config_err(
        "image_id = \"auto\" found no available machine image: set image_id in the profile"
    ))
}

impl Session {
    /// Preflights the target, resolves `auto` parameters and opens the run's
    /// journal. Errors are [`crate::error::ConfigError`]s with a message for the user.
    pub async fn prepare(profile: Profile, spec: Spec<'_>) -> Result<Session> {
        let need_ec2 = uses(&profile, |o| o.service() == Service::Ec2);
        let need_s3 = uses(&profile, |o| o.service() == Service::S3);
        let az = target::preflight(&spec.clients, need_ec2, need_s3)
            .await
            .map_err(|e| config_err(e.to_string()))?;
        let needs_image = uses(&profile, |o| {
            matches!(
                o,
                Op::RunInstances
                    | Op::InstanceRunning
                    | Op::TerminateInstances
                    | Op::InstanceTerminated
            )
        }) && profile.users.iter().any(|u| u.params.image_id == "auto");
        let image = if needs_image {
            Some(auto_image(&spec.clients.ec2).await?)
        } else {
            None
        };

        let run_id = spec.run_id.clone().unwrap_or_default();
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let services = Services {
            ec2: need_ec2,
            s3: need_s3,
        };
        let target = serde_json::to_value(&spec.clients.info).unwrap_or_default();
        let meta = RunMeta::new(&run_id, spec.profile_path, started_at, target, services);
        let mut tracker = Tracker::create(&spec.state_dir, &run_id, &meta)
            .map_err(|e| config_err(format!("{e:#}")))?;
        if spec.own_names_only {
            tracker = tracker.scoped(spec.name_base + 1..=spec.name_base + NAME_RANGE);
        }
        let mut ctx = RunCtx::new(
            run_id.clone(),
            spec.clients,
            Stats::new(),
            tracker.clone(),
            spec.caps,
        );
        ctx.default_az = az;
        ctx.set_name_base(spec.name_base);
        ctx.auto_image = image;
        let ctx = Arc::new(ctx);
        let engine = Engine::new(ctx.clone(), Arc::new(profile), spec.max_inflight);
        Ok(Session {
            run_id,
            profile_path: spec.profile_path.to_path_buf(),
            engine,
            ctx,
            tracker,
            started_at,
            t0: Instant::now(),
            services,
        })
    }

    /// A run whose users live on workers (the dashboard as a master): no
    /// preflight and no journal here (each worker has its own); the
    /// figures are `stats`, which the master fills from the workers'
    /// reports. Its engine never starts.
    pub fn for_master(
        profile: Profile,
        spec: Spec<'_>,
        run_id: RunId,
        stats: Stats,
    ) -> Result<Session> {
        let services = Services {
            ec2: uses(&profile, |o| o.service() == Service::Ec2),
            s3: uses(&profile, |o| o.service() == Service::S3),
        };
        let tracker = Tracker::open(&spec.state_dir, &run_id)?;
        let ctx = Arc::new(RunCtx::new(
            run_id.clone(),
            spec.clients,
            stats,
            tracker.clone(),
            spec.caps,
        ));
        let engine = Engine::new(ctx.clone(), Arc::new(profile), 1);
        Ok(Session {
            run_id,
            profile_path: spec.profile_path.to_path_buf(),
            engine,
            ctx,
            tracker,
            started_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            t0: Instant::now(),
            services,
        })
    }

    // A run's life: ready → hatching/running (the engine) → stopping →
    // cleaning up → stopped. The drivers (run.rs, web/) call these; only
    // the session writes the run's state.

    /// Starts hatching towards `users` at `rate` users per second.
    pub fn start(&self, users: u64, rate: f64) -> Result<(), String> {
        self.engine.set_target(users, rate)?;
        self.engine.start();
        Ok(())
    }

    /// Starts hatching towards absolute per-class targets (profile order)
    /// at `rate` users per second: what a master's spawn order asks.
    pub fn start_classes(&self, targets: Vec<u64>, rate: f64) -> Result<(), String> {
        self.engine.set_class_targets(targets, rate)?;
        self.engine.start();
        Ok(())
    }

    /// Says `stopping` now (before [`Session::stop`] gets to run).
    pub fn mark_stopping(&self) {
        self.engine.set_state(RunState::Stopping);
    }

    /// Stops the run: no more hatching; users finish their current task
    /// within `stop_timeout`, then are abandoned. Resources stay tracked.
    pub async fn stop(&self, stop_timeout: Duration) {
        self.engine.stop(stop_timeout).await;
    }

    /// Abandons the users' current tasks at once (a second Ctrl-C).
    pub fn abandon_users(&self) {
        self.engine.abort_all();
    }

    /// Says `cleaning up` now (before [`Session::clean_up`] gets to run).
    pub fn mark_cleaning_up(&self) {
        self.engine.set_state(RunState::CleaningUp);
    }

    /// The run is over (resources kept, or a clean-up that was cut short).
    pub fn mark_stopped(&self) {
        self.engine.set_state(RunState::Stopped);
    }

    /// Deletes what the run holds, then what the cloud still shows to be the
    /// run's (tag, marker, journal); `progress` hears each step. The state
    /// is `cleaning up` meanwhile, `stopped` after.
    pub async fn clean_up(
        &self,
        timeout: Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> CleanupOutcome {
        self.mark_cleaning_up();
        let out = self.sweep(timeout, progress).await;
        self.mark_stopped();
        out
    }

    async fn sweep(&self, timeout: Duration, progress: &(dyn Fn(&str) + Sync)) -> CleanupOutcome {
        let (r, left) = cleanup::sweep(
            &self.ctx.clients,
            &self.tracker,
            self.services,
            timeout,
            progress,
        )
        .await;
        let mut out = CleanupOutcome {
            deleted: r
                .deleted
                .iter()
                .map(|(k, n)| (k.as_str().to_string(), *n))
                .collect(),
            failed: r
                .failed
                .iter()
                .map(|(k, id, why)| (k.as_str().to_string(), id.clone(), why.clone()))
                .collect(),
            ..Default::default()
        };
        match left {
            Ok(left) => {
                out.leaked = Some(left.values().map(Vec::len).sum::<usize>() as u64);
                out.left = left
                    .into_iter()
                    .filter(|(_, ids)| !ids.is_empty())
                    .map(|(k, ids)| {
                        let ids = ids.into_iter().map(|(id, _)| id).collect();
                        (k.as_str().to_string(), ids)
                    })
                    .collect();
            }
            Err(e) => out.list_error = Some(e.to_string()),
        }
        out
    }

    /// Tracked resources still alive (objects not counted: their bucket is).
    pub fn live_resources(&self) -> Vec<(Kind, u64)> {
        self.tracker
            .counts()
            .into_iter()
            .filter(|(k, c)| c.alive > 0 && *k != Kind::Object)
            .map(|(k, c)| (k, c.alive))
            .collect()
    }
}
