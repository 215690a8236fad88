//! `cloudswarm cleanup`: deletes what runs left behind. For each run it
//! takes the ids its journal holds as alive and what the cloud lists under
//! the run's tag and name prefix (which finds resources whose id never
//! reached the journal because of a crash), deletes them, lists again, and
//! reports what is left. Idempotent; never touches anything without the
//! run's tag or prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use aws_sdk_ec2::types::Filter;
use clap::Args;

use crate::resources::{self, Kind, RUN_TAG, Tracker};
use crate::run::{ConfigError, default_state_dir};
use crate::target::{Clients, TargetArgs};
use crate::tasks::cleanup::{run_of_name, sweep};
use crate::tasks::errors;

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
    #[arg(long, default_value = "10m", value_parser = crate::profile::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub target: TargetArgs,
}

fn valid_run_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Run ids with a journal in the state directory.
fn runs_on_disk(state: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(state.join("runs")) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| valid_run_id(n))
        .collect()
}

/// Run ids the cloud shows: the `cloudswarm:run-id` tags of instances,
/// volumes, snapshots and addresses (a filter on the tag key: never empty),
/// and the `cs-<runid>-<n>` names of key pairs, security groups and buckets.
/// A run whose journal is gone is still found by what it left. Each listing
/// that fails is named; the others still count.
async fn runs_in_cloud(c: &Clients) -> (BTreeSet<String>, Vec<String>) {
    let has_tag = || Filter::builder().name("tag-key").values(RUN_TAG).build();
    let tag_value = |tags: &[aws_sdk_ec2::types::Tag]| {
        tags.iter()
            .find(|t| t.key() == Some(RUN_TAG))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    let why = |op: &str, f: crate::stats::Failure| format!("{op}: {}", f.message);
    let mut ids = BTreeSet::new();
    let mut names: Vec<String> = Vec::new();
    let mut failed = Vec::new();
    match c.ec2.describe_instances().filters(has_tag()).send().await {
        Ok(r) => ids.extend(
            r.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| tag_value(i.tags())),
        ),
        Err(e) => failed.push(why("DescribeInstances", errors::classify(&e))),
    }
    match c.ec2.describe_volumes().filters(has_tag()).send().await {
        Ok(r) => ids.extend(r.volumes().iter().filter_map(|v| tag_value(v.tags()))),
        Err(e) => failed.push(why("DescribeVolumes", errors::classify(&e))),
    }
    let snaps = c
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(has_tag());
    match snaps.send().await {
        Ok(r) => ids.extend(r.snapshots().iter().filter_map(|s| tag_value(s.tags()))),
        Err(e) => failed.push(why("DescribeSnapshots", errors::classify(&e))),
    }
    match c.ec2.describe_addresses().filters(has_tag()).send().await {
        Ok(r) => ids.extend(r.addresses().iter().filter_map(|a| tag_value(a.tags()))),
        Err(e) => failed.push(why("DescribeAddresses", errors::classify(&e))),
    }
    let prefixed = |n: &str| Filter::builder().name(n).values("cs-*").build();
    match c
        .ec2
        .describe_key_pairs()
        .filters(prefixed("key-name"))
        .send()
        .await
    {
        Ok(r) => names.extend(
            r.key_pairs()
                .iter()
                .filter_map(|k| k.key_name().map(str::to_string)),
        ),
        Err(e) => failed.push(why("DescribeKeyPairs", errors::classify(&e))),
    }
    let groups = c
        .ec2
        .describe_security_groups()
        .filters(prefixed("group-name"));
    match groups.send().await {
        Ok(r) => names.extend(
            r.security_groups()
                .iter()
                .filter_map(|g| g.group_name().map(str::to_string)),
        ),
        Err(e) => failed.push(why("DescribeSecurityGroups", errors::classify(&e))),
    }
    match c.s3.list_buckets().send().await {
        Ok(r) => names.extend(
            r.buckets()
                .iter()
                .filter_map(|b| b.name().map(str::to_string)),
        ),
        Err(e) => failed.push(why("ListBuckets", errors::classify(&e))),
    }
    ids.extend(
        names
            .iter()
            .filter_map(|n| run_of_name(n))
            .map(str::to_string),
    );
    ids.retain(|i| valid_run_id(i));
    (ids, failed)
}

/// Which services a run used, from its run.json (both when unknown).
fn services(state: &Path, run_id: &str) -> (bool, bool) {
    let meta = std::fs::read_to_string(state.join("runs").join(run_id).join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    match meta
        .as_ref()
        .and_then(|m| m.get("services"))
        .and_then(|s| s.as_array())
    {
        Some(s) => (s.iter().any(|v| v == "ec2"), s.iter().any(|v| v == "s3")),
        None => (true, true),
    }
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

/// Cleans up one run; returns how many resources remain.
async fn cleanup_run(c: &Clients, state: &Path, run_id: &str, timeout: Duration) -> Result<usize> {
    let tracker = Tracker::open(state, run_id)?;
    let journal = tracker.dir().join("journal.jsonl");
    if journal.exists() {
        let (alive, unanswered) = resources::replay(&journal)?;
        for (kind, ids) in alive {
            for id in ids {
                tracker.adopt(kind, &id);
            }
        }
        if unanswered > 0 {
            println!(
                "run {run_id}: {unanswered} create call(s) never answered in the journal; looking for them by tag and name"
            );
        }
    }
    let progress = |m: &str| println!("run {run_id}: {m}");
    let (report, left) = sweep(c, &tracker, services(state, run_id), timeout, &progress).await;
    println!("run {run_id}: deleted {}", summary(&report.deleted));
    for (kind, id, why) in &report.failed {
        println!(
            "run {run_id}: could not delete {} {id}: {why}",
            kind.as_str()
        );
    }
    let left = left.map_err(|e| anyhow::anyhow!("run {run_id}: cannot list the cloud: {e}"))?;
    let n: usize = left.values().map(Vec::len).sum();
    if n > 0 {
        for (kind, ids) in &left {
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
    let runs: Vec<String> = match &args.run_id {
        Some(id) => {
            if !valid_run_id(id) {
                bail!(ConfigError(format!(
                    "`{id}` is not a run id (lowercase letters and digits, as printed at the start of a run)"
                )));
            }
            vec![id.clone()]
        }
        None => {
            let mut all: BTreeSet<String> = runs_on_disk(&state).into_iter().collect();
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
        match cleanup_run(&c, &state, r, args.timeout).await {
            Ok(n) => left += n,
            Err(e) => {
                eprintln!("error: {e:#}");
                failed = true;
            }
        }
    }
    if left > 0 || failed {
        println!("{left} resource(s) remain; run cleanup again once the cloud allows it");
        Ok(1)
    } else {
        Ok(0)
    }
}
