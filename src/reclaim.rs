//! `cloudswarm cleanup`: deletes what runs left behind. For each run it
//! takes the ids its journal holds as alive and what the cloud proves to be
//! the run's (its tag, a bucket's marker, a name the journal's intents gave:
//! this finds resources whose id never reached the journal because of a
//! crash), deletes them, lists again, and reports what is left. Idempotent;
//! a name that merely looks like a run's is never enough, and nothing is
//! written to the state directory for a run that has no journal there.
//! `--dry-run` lists what would go and why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use aws_sdk_ec2::types::Filter;
use clap::Args;

use crate::cleanup::{Found, list_bucket_names, list_run, marker_of, sweep, with_retry};
use crate::error::ConfigError;
use crate::naming::default_state_dir;
use crate::naming::{RUN_TAG, RunId, RunMeta, run_of_name, run_tag_of, runs_on_disk};
use crate::resources::{self, Kind, Tracker};
use crate::target::{Clients, TargetArgs};

/// Flags of `cloudswarm cleanup`.
#[derive(Args, Debug, Clone)]
pub struct CleanupArgs {
    /// The run to clean up (its id is printed at start and names its journal directory)
    #[arg(
        long,
        required_unless_present = "all_runs",
        conflicts_with = "all_runs"
    )]
    pub run_id: Option<String>,
    /// Every run in the state directory, and every run whose tag the cloud shows
    #[arg(long)]
    pub all_runs: bool,
    /// Where run journals live (default: the user's state directory)
    #[arg(long, env = "CLOUDSWARM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long to keep retrying what the cloud is not ready to delete
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
    /// List what would be deleted and why (journal, tag or marker); delete nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// Run ids the cloud proves: the `cloudswarm:run-id` tags of instances,
/// volumes, snapshots, addresses, key pairs and security groups, and the
/// markers of buckets (a bucket named like a run's counts only if its
/// marker names that run). A name alone never finds a run. A run whose
/// journal is gone is still found by what it left. Each listing that fails
/// is named; the others still count.
async fn runs_in_cloud(c: &Clients) -> (BTreeSet<RunId>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let has_tag = || Filter::builder().name("tag-key").values(RUN_TAG).build();
    let named = |n: &str| Filter::builder().name(n).values("cs-*").build();
    let tag =
        |tags: &[aws_sdk_ec2::types::Tag]| run_tag_of(tags).and_then(|t| RunId::parse(t).ok());
    let mut ids = BTreeSet::new();
    let mut failed = Vec::new();
    let ec2 = &c.ec2;
    match with_retry(deadline, || {
        ec2.describe_instances().filters(has_tag()).send()
    })
    .await
    {
        Ok(r) => ids.extend(
            r.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| tag(i.tags())),
        ),
        Err(e) => failed.push(format!("DescribeInstances: {e}")),
    }
    match with_retry(deadline, || {
        ec2.describe_volumes().filters(has_tag()).send()
    })
    .await
    {
        Ok(r) => ids.extend(r.volumes().iter().filter_map(|v| tag(v.tags()))),
        Err(e) => failed.push(format!("DescribeVolumes: {e}")),
    }
    let snaps = || {
        ec2.describe_snapshots()
            .owner_ids("self")
            .filters(has_tag())
            .send()
    };
    match with_retry(deadline, snaps).await {
        Ok(r) => ids.extend(r.snapshots().iter().filter_map(|s| tag(s.tags()))),
        Err(e) => failed.push(format!("DescribeSnapshots: {e}")),
    }
    match with_retry(deadline, || {
        ec2.describe_addresses().filters(has_tag()).send()
    })
    .await
    {
        Ok(r) => ids.extend(r.addresses().iter().filter_map(|a| tag(a.tags()))),
        Err(e) => failed.push(format!("DescribeAddresses: {e}")),
    }
    match with_retry(deadline, || {
        ec2.describe_key_pairs().filters(named("key-name")).send()
    })
    .await
    {
        Ok(r) => ids.extend(r.key_pairs().iter().filter_map(|k| tag(k.tags()))),
        Err(e) => failed.push(format!("DescribeKeyPairs: {e}")),
    }
    let groups = || {
        ec2.describe_security_groups()
            .filters(named("group-name"))
            .send()
    };
    match with_retry(deadline, groups).await {
        Ok(r) => ids.extend(r.security_groups().iter().filter_map(|g| tag(g.tags()))),
        Err(e) => failed.push(format!("DescribeSecurityGroups: {e}")),
    }
    match list_bucket_names(c, deadline).await {
        Ok(names) => {
            for name in names {
                let Some(run) = run_of_name(&name) else {
                    continue;
                };
                match marker_of(c, &name, deadline).await {
                    Ok(Some(m)) if m == run.as_str() => {
                        ids.insert(run);
                    }
                    Ok(_) => {}
                    Err(e) => failed.push(e),
                }
            }
        }
        Err(e) => failed.push(e),
    }
    (ids, failed)
}

fn summary(m: &BTreeMap<Kind, u64>) -> String {
    if m.is_empty() {
        return "nothing".into();
    }
    m.iter()
        .map(|(k, n)| format!("{n} {}", k.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a run's journal into the tracker, reporting lines it cannot read
/// (they are skipped: the sweep by tag, marker and journal still runs).
fn load_journal(tracker: &Tracker, run_id: &RunId) {
    let journal = tracker.journal_path();
    if !journal.exists() {
        return;
    }
    match resources::replay(&journal) {
        Ok(r) => {
            for (kind, ids) in r.alive {
                for id in ids {
                    tracker.adopt(kind, &id);
                }
            }
            for (kind, name) in &r.named {
                tracker.adopt_name(*kind, name);
            }
            if !r.unreadable.is_empty() {
                let lines: Vec<String> = r.unreadable.iter().map(|n| n.to_string()).collect();
                println!(
                    "run {run_id}: journal {}: skipped {} unreadable line(s) ({}); looking for the rest by tag and marker",
                    journal.display(),
                    lines.len(),
                    lines.join(", ")
                );
            }
            if r.unanswered > 0 {
                println!(
                    "run {run_id}: {} create call(s) never answered in the journal; looking for them by tag, marker and name",
                    r.unanswered
                );
            }
        }
        Err(e) => println!("run {run_id}: {e:#}; looking for its resources by tag and marker"),
    }
}

/// Prints what a clean-up of the run would delete and why, deleting nothing.
async fn dry_run(c: &Clients, state: &Path, run_id: &RunId) -> Result<usize> {
    let tracker = Tracker::open(state, run_id)?;
    load_journal(&tracker, run_id);
    let services = RunMeta::services_of(state, run_id);
    let found: Found = list_run(c, &tracker, services, Instant::now())
        .await
        .map_err(|e| anyhow::anyhow!("run {run_id}: cannot list the cloud: {e}"))?;
    let mut n = 0;
    for (kind, ids) in &found {
        for (id, proof) in ids {
            println!(
                "run {run_id}: would delete {} {id} ({})",
                kind.as_str(),
                proof.as_str()
            );
            n += 1;
        }
    }
    if n == 0 {
        println!("run {run_id}: nothing of the run in the cloud");
    }
    Ok(n)
}

/// Cleans up one run; returns how many resources remain.
async fn cleanup_run(
    c: &Clients,
    state: &Path,
    run_id: &RunId,
    timeout: Duration,
) -> Result<usize> {
    let tracker = Tracker::open(state, run_id)?;
    load_journal(&tracker, run_id);
    let progress = |m: &str| println!("run {run_id}: {m}");
    let services = RunMeta::services_of(state, run_id);
    let (report, left) = sweep(c, &tracker, services, timeout, &progress).await;
    println!("run {run_id}: deleted {}", summary(&report.deleted));
    for (kind, id, why) in &report.failed {
        println!(
            "run {run_id}: could not delete {} {id}: {why}",
            kind.as_str()
        );
    }
    let left = left.map_err(|e| {
        anyhow::anyhow!("run {run_id}: cannot list the cloud, so what is left is unknown: {e}")
    })?;
    let n: usize = left.values().map(Vec::len).sum();
    if n > 0 {
        for (kind, ids) in &left {
            let ids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
            println!(
                "run {run_id}: still there: {} {}",
                kind.as_str(),
                ids.join(" ")
            );
        }
    } else {
        println!("run {run_id}: nothing left in the cloud");
    }
    Ok(n)
}

/// Runs `cloudswarm cleanup`; exit 0 when nothing remains, 1 otherwise.
pub async fn cleanup(args: CleanupArgs) -> Result<i32> {
    let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let c = args
        .target
        .clients()
        .await
        .map_err(|e| ConfigError(e.to_string()))?;
    let runs: Vec<RunId> = match &args.run_id {
        Some(id) => vec![RunId::parse(id).map_err(ConfigError)?],
        None => {
            let mut all: BTreeSet<RunId> = runs_on_disk(&state).into_iter().collect();
            let (ids, failed) = runs_in_cloud(&c).await;
            all.extend(ids);
            for e in failed {
                eprintln!("warning: cannot look for runs in the cloud: {e}");
            }
            all.into_iter().collect()
        }
    };
    if runs.is_empty() {
        println!("no runs found in {} or in the cloud", state.display());
        return Ok(0);
    }
    let mut left = 0;
    let mut failed = false;
    for r in &runs {
        let outcome = if args.dry_run {
            dry_run(&c, &state, r).await
        } else {
            cleanup_run(&c, &state, r, args.timeout).await
        };
        match outcome {
            Ok(n) => left += n,
            Err(e) => {
                eprintln!("error: {e:#}");
                failed = true;
            }
        }
    }
    if args.dry_run {
        println!("dry run: {left} resource(s) would be deleted; nothing was");
        Ok(if failed { 1 } else { 0 })
    } else if failed {
        println!(
            "what is left is unknown ({left} resource(s) seen); run cleanup again once the cloud can be listed"
        );
        Ok(1)
    } else if left > 0 {
        println!("{left} resource(s) remain; run cleanup again once the cloud allows it");
        Ok(1)
    } else {
        Ok(0)
    }
}
