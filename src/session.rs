//! One run's life, shared by the headless run and the dashboard: load the
//! profile, preflight the target, pick the image, open the journal, build the
//! engine; later stop it and clean up what it made.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use aws_sdk_ec2::types::Filter;

use crate::cleanup;
use crate::engine::Engine;
use crate::naming::{RunId, RunMeta, Services};
use crate::profile::Profile;
use crate::resources::{Kind, Tracker};
use crate::run::ConfigError;
use crate::stats::Stats;
use crate::target::{self, Clients};
use crate::tasks::{Caps, Op, RunCtx, Service};

fn config_err(msg: impl Into<String>) -> anyhow::Error {
    ConfigError(msg.into()).into()
}

/// What a run needs besides its profile.
pub struct Spec<'a> {
    pub profile_path: &'a Path,
    pub clients: Clients,
    pub state_dir: PathBuf,
    pub caps: Caps,
    pub max_inflight: usize,
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
            let f = crate::tasks::errors::classify(&e);
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
    /// journal. Errors are [`ConfigError`]s with a message for the user.
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

        let run_id = RunId::new();
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
        let tracker = Tracker::create(&spec.state_dir, &run_id, &meta)
            .map_err(|e| config_err(format!("{e:#}")))?;
        let mut ctx = RunCtx::new(
            run_id.clone(),
            spec.clients,
            Stats::new(),
            tracker.clone(),
            spec.caps,
        );
        ctx.inflight = tokio::sync::Semaphore::new(spec.max_inflight);
        ctx.default_az = az;
        ctx.auto_image = image;
        let ctx = Arc::new(ctx);
        let engine = Engine::new(ctx.clone(), Arc::new(profile));
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

    /// Deletes what the run holds, then what the cloud still shows to be the
    /// run's (tag, marker, journal); `progress` hears each step.
    pub async fn clean_up(
        &self,
        timeout: std::time::Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> CleanupOutcome {
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
