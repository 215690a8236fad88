//! Headless runs against a real moto server over HTTP.

mod common;

use aws_sdk_ec2::types::{Filter, InstanceStateName};
use common::*;

fn entry<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    find_entry(report, name).unwrap_or_else(|| panic!("no entry {name} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn burn_in_run_measures_and_leaves_nothing_behind() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (ec2, s3) = clients(&moto).await;
    // Resources made outside cloudswarm must survive its clean-up.
    let img = ec2
        .describe_images()
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_string))
        .unwrap();
    let outside = ec2
        .run_instances()
        .image_id(&img)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let outside_id = outside.instances()[0].instance_id().unwrap().to_string();
    s3.create_bucket()
        .bucket("operator-data")
        .send()
        .await
        .unwrap();

    let json = dir.path().join("report.json");
    let csv = dir.path().join("burn");
    let out = run_against(
        &moto,
        dir.path(),
        &[
            "-f",
            "profiles/burn-in.toml",
            // Enough users that every class's lifecycle task comes up in 15 s
            // (tasks are picked at random by weight).
            "-u",
            "14",
            "-r",
            "14",
            "-t",
            "15s",
            "--json",
            json.to_str().unwrap(),
            "--csv",
            csv.to_str().unwrap(),
            "--sla",
            "failure_rate<5%",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = read_json(&json);
    let run_id = report["run_id"].as_str().unwrap().to_string();
    for name in ["ec2:RunInstances", "ec2:CreateVolume", "s3:PutObject"] {
        let e = entry(&report, name);
        assert!(e["num_requests"].as_u64().unwrap() > 0, "{name}: {e}");
        let (p50, p95, p99, max) = (
            e["p50_ms"].as_f64().unwrap(),
            e["p95_ms"].as_f64().unwrap(),
            e["p99_ms"].as_f64().unwrap(),
            e["max_ms"].as_f64().unwrap(),
        );
        assert!(
            p50 > 0.0 && p50 <= p95 && p95 <= p99 && p99 <= max,
            "{name}: {e}"
        );
    }
    assert!(
        entry(&report, "ec2:instance-running")["num_requests"]
            .as_u64()
            .unwrap()
            > 0
    );
    let total = &report["total"];
    let sum: u64 = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| cloudswarm::ops::is_request(e["name"].as_str().unwrap()))
        .map(|e| e["num_requests"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total["num_requests"].as_u64().unwrap(),
        sum,
        "aggregate = sum of requests"
    );
    // The waits' polls are requests the cloud served: counted, on rows of their own.
    let polls = entry(&report, "ec2:DescribeInstances:poll")["num_requests"]
        .as_u64()
        .unwrap();
    assert!(polls > 0, "{report:#}");
    assert!(report["resources"]["created"].as_u64().unwrap() > 0);
    assert_eq!(report["resources"]["leaked"], 0, "{report:#}");

    // The cloud holds nothing of the run: no live instance, no volume, no bucket.
    let tag = Filter::builder()
        .name("tag:cloudswarm:run-id")
        .values(&run_id)
        .build();
    let inst = ec2
        .describe_instances()
        .filters(tag.clone())
        .send()
        .await
        .unwrap();
    let mut tagged = 0;
    for i in inst.reservations().iter().flat_map(|r| r.instances()) {
        tagged += 1;
        let st = i.state().and_then(|s| s.name()).unwrap();
        assert!(
            matches!(
                st,
                InstanceStateName::Terminated | InstanceStateName::ShuttingDown
            ),
            "instance {:?} of the run is {st:?}",
            i.instance_id()
        );
    }
    assert!(tagged > 0, "the run's instances carry its tag");
    let (live, vols, run_buckets) = run_leftovers(&moto, &run_id).await;
    assert!(
        live.is_empty() && vols.is_empty() && run_buckets.is_empty(),
        "{live:?} {vols:?} {run_buckets:?}"
    );
    let buckets = s3.list_buckets().send().await.unwrap();
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(&format!("cs-{run_id}-"))),
        "{names:?}"
    );
    // What was there before is untouched.
    assert!(names.contains(&"operator-data"), "{names:?}");
    let o = ec2
        .describe_instances()
        .instance_ids(&outside_id)
        .send()
        .await
        .unwrap();
    let st = o.reservations()[0].instances()[0]
        .state()
        .unwrap()
        .name()
        .unwrap()
        .clone();
    assert_eq!(st, InstanceStateName::Running);

    // CSV files carry Locust's columns and one row per entry plus Aggregated.
    let stats = std::fs::read_to_string(format!("{}_stats.csv", csv.display())).unwrap();
    let mut lines = stats.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("Type,Name,Request Count,Failure Count,Median Response Time"),
        "{header}"
    );
    assert!(header.contains("99.9%"));
    assert!(
        stats.lines().any(|l| l.starts_with(",Aggregated,")),
        "{stats}"
    );
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("ec2,ec2:RunInstances,")),
        "{stats}"
    );
    let hist = std::fs::read_to_string(format!("{}_stats_history.csv", csv.display())).unwrap();
    assert!(
        hist.lines().count() > 10,
        "one history row a second: {hist}"
    );
    assert!(std::path::Path::new(&format!("{}_failures.csv", csv.display())).exists());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Response time percentiles"), "{stdout}");
    assert!(stdout.contains("SLA failure_rate<5%"), "{stdout}");
}

/// Twenty users waiting for instances and volumes at the same time share
/// one poller per kind: each poll interval asks for every waiting id in one
/// Describe call, so the poll rows grow with the intervals elapsed, not
/// with the users (one call per waiting user per interval before). Each
/// resource's wait is still measured on its own row.
#[test]
fn many_users_waiting_share_one_poll_per_interval() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("waits.toml");
    std::fs::write(
        &profile,
        r#"
[params]
image_id = "auto"
poll_interval = "500ms"
[[user]]
name = "c"
wait = { constant = 0 }
[[user.task]]
# moto answers CreateVolume with `available` (a wait of zero, no poll), but
# an attach or a detach is polled for.
sequence = ["ec2:RunInstances", "ec2:instance-running", "ec2:CreateVolume", "ec2:AttachVolume",
            "ec2:volume-in-use", "ec2:DetachVolume", "ec2:volume-available",
            "ec2:TerminateInstances", "ec2:DeleteVolume"]
"#,
    )
    .unwrap();
    let json = dir.path().join("r.json");
    let t0 = std::time::Instant::now();
    let out = run_against(
        &moto,
        dir.path(),
        &[
            "-f",
            profile.to_str().unwrap(),
            "-u",
            "20",
            "-r",
            "20",
            "-t",
            "8s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_json(&json);
    let n = |name: &str| find_entry(&r, name).map_or(0, |e| e["num_requests"].as_u64().unwrap());
    let (runs, running) = (n("ec2:RunInstances"), n("ec2:instance-running"));
    let (attaches, in_use) = (n("ec2:AttachVolume"), n("ec2:volume-in-use"));
    let (detaches, available) = (n("ec2:DetachVolume"), n("ec2:volume-available"));
    let (ipolls, vpolls) = (
        n("ec2:DescribeInstances:poll"),
        n("ec2:DescribeVolumes:poll"),
    );
    let intervals = (took.as_secs_f64() / 0.5).ceil() as u64;
    let figures = format!(
        "{took:?} ({intervals} intervals): RunInstances {runs}, instance-running {running}, \
         DescribeInstances:poll {ipolls}; AttachVolume {attaches}, volume-in-use {in_use}, \
         DetachVolume {detaches}, volume-available {available}, DescribeVolumes:poll {vpolls}\n\
         errors: {:#}",
        r["errors"]
    );
    eprintln!("{figures}");
    assert_eq!(r["total"]["num_failures"], 0, "{figures}");
    // Every user waited (81 to 157 times each kind when written); each
    // resource's wait is measured on its own row, once per call that set
    // it going.
    assert!(
        running >= 20 && in_use >= 20 && available >= 20,
        "{figures}"
    );
    for (calls, waits) in [(runs, running), (attaches, in_use), (detaches, available)] {
        assert!(waits <= calls && calls <= waits + 20, "{figures}");
    }
    // At most about one round per interval the whole process lived (the
    // run is 8 s of it; a group's first round comes at once, hence the one
    // more), however many users wait.
    for polls in [ipolls, vpolls] {
        assert!(polls >= 1 && polls <= intervals + 1, "{figures}");
    }
    // Polling alone, each wait asked at least once (157 waits of each kind
    // made 157 DescribeInstances and 314 DescribeVolumes before the pollers
    // were shared); now the calls are a fraction of the waits (12 to 18 per
    // kind for 81 to 105 waits of each when written).
    assert!(
        ipolls * 2 <= running && vpolls * 2 <= in_use + available,
        "{figures}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn user_count_follows_stages_and_sla_breach_exits_1() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("shape");
    let out = run_against(
        &moto,
        dir.path(),
        &[
            "-f",
            "profiles/storage.toml",
            "--stages",
            "6:7s:20,2:6s:20",
            "--csv",
            csv.to_str().unwrap(),
            "--sla",
            "rps>=1000000",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an SLA breach exits 1: {}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
    let hist = std::fs::read_to_string(format!("{}_stats_history.csv", csv.display())).unwrap();
    let users: Vec<u64> = hist
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    let first_six = users.iter().position(|&u| u == 6).expect(&hist);
    let later_two = users[first_six..]
        .iter()
        .position(|&u| u == 2)
        .expect(&hist);
    // Once down to 2 it stays there until the stop (the last row is after stop: 0).
    let tail = &users[first_six + later_two..users.len() - 1];
    assert!(tail.iter().all(|&u| u == 2), "{users:?}");
    assert!(tail.len() >= 3, "{users:?}");
}

#[test]
fn bad_profile_and_bad_flags_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[user]]\nname = \"x\"\n[[user.task]]\nop = \"ec2:LaunchRocket\"\n",
    )
    .unwrap();
    let out = cloudswarm()
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4:") && err.contains("unknown op `ec2:LaunchRocket`"),
        "{err}"
    );
    assert!(
        err.contains("ec2:RunInstances"),
        "lists the known ops: {err}"
    );

    let out = cloudswarm()
        .args(["run", "-f", bad.to_str().unwrap(), "-t", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = cloudswarm()
        .args(["check", "profiles/burn-in.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    for args in [
        vec!["-u", "-3"],
        vec!["-r", "0"],
        vec!["-t", "soon"],
        vec!["--stages", "10"],
        vec!["--sla", "latency<1s"],
        vec!["--sla", "p95(ec2:Nope)<1s"],
        vec!["--ec2-endpoint", "ftp://x"],
    ] {
        let out = cloudswarm()
            .args(["run", "-f", "profiles/smoke.toml", "--state-dir"])
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(!out.stderr.is_empty());
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }

    // Report paths are checked before the run, not after it: a missing
    // folder or a directory in place of the file exits 2 at once, naming it,
    // and leaves no files behind.
    let missing = dir.path().join("no-such-dir").join("r");
    let as_dir = dir.path().join("a-dir");
    std::fs::create_dir(&as_dir).unwrap();
    for (flag, path, says) in [
        ("--csv", missing.clone(), "no-such-dir/r_stats.csv"),
        ("--json", as_dir.clone(), "a-dir is a directory"),
    ] {
        let out = cloudswarm()
            .args([
                "run",
                "-f",
                "profiles/smoke.toml",
                "-t",
                "1m",
                "--state-dir",
            ])
            .arg(dir.path())
            .arg(flag)
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out));
        assert!(err.contains(flag) && err.contains(says), "{err}");
        assert!(
            !err.contains("cloudswarm run "),
            "stopped before the run: {err}"
        );
    }
    // A good path passes the check, which leaves no file behind when the
    // run then stops early (here: nothing listens at the endpoint).
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = cloudswarm()
        .args([
            "run",
            "-f",
            "profiles/smoke.toml",
            "-t",
            "1m",
            "--state-dir",
        ])
        .arg(dir.path())
        .args(["--ec2-endpoint", &url, "--s3-endpoint", &url, "--csv"])
        .arg(dir.path().join("fine"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot reach"), "{}", text(&out));
    assert!(
        !dir.path().join("fine_stats.csv").exists(),
        "the check leaves no file"
    );
}

/// Runs `profile` for 5 s with `args` and `env`, expects the preflight to
/// refuse it (exit 2) and returns what it said.
fn refused_run(profile: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = cloudswarm()
        .args(["run", "-f", profile, "-t", "5s", "--state-dir"])
        .arg(dir.path())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unreachable_endpoint_fails_preflight_with_exit_2() {
    let port = free_port(); // nothing listens there
    let url = format!("http://127.0.0.1:{port}");
    let err = refused_run(
        "profiles/smoke.toml",
        &["--ec2-endpoint", &url, "--s3-endpoint", &url],
        &[],
    );
    assert!(
        err.contains("cannot reach EC2") && err.contains("refused"),
        "{err}"
    );
}

#[test]
fn endpoints_come_from_the_environment_and_the_profile_services_section() {
    // Nothing listens on these ports: the preflight's message names the
    // endpoint each client was really given.
    let global = format!("http://127.0.0.1:{}", free_port());
    let err = refused_run(
        "profiles/compute.toml",
        &[],
        // An empty service setting counts as unset.
        &[("AWS_ENDPOINT_URL", &global), ("AWS_ENDPOINT_URL_EC2", "")],
    );
    assert!(
        err.contains(&format!("cannot reach EC2 at {global}")),
        "{err}"
    );

    let ec2_own = format!("http://127.0.0.1:{}", free_port());
    let err = refused_run(
        "profiles/compute.toml",
        &[],
        &[
            ("AWS_ENDPOINT_URL", &global),
            ("AWS_ENDPOINT_URL_EC2", &ec2_own),
        ],
    );
    assert!(
        err.contains(&format!("cannot reach EC2 at {ec2_own}")),
        "AWS_ENDPOINT_URL_EC2 wins over AWS_ENDPOINT_URL: {err}"
    );

    let profile_url = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[default]\nservices = local\n\n[services local]\ns3 =\n  endpoint_url = {profile_url}\n"
        ),
    )
    .unwrap();
    let err = refused_run(
        "profiles/storage.toml",
        &[],
        &[
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_ENDPOINT_URL", &global),
        ],
    );
    assert!(
        err.contains(&format!("cannot reach S3 at {profile_url}")),
        "the services section wins over AWS_ENDPOINT_URL: {err}"
    );
}

#[test]
fn saturated_users_wait_for_a_slot_and_go_on_with_their_sequence() {
    // One in-flight slot for 20 users: nearly every step waits for a slot,
    // outside the user's op state, and must then go on from that very step.
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("seq.toml");
    std::fs::write(
        &profile,
        r#"
description = "put, head, delete, in order"
[params]
object_size = "1KiB"
bucket = "shared"
[[user]]
name = "s"
wait = { constant = 0 }
[[user.task]]
sequence = ["s3:PutObject", "s3:HeadObject", "s3:DeleteObject"]
"#,
    )
    .unwrap();
    let json = dir.path().join("r.json");
    let csv = dir.path().join("sat");
    let out = run_against(
        &moto,
        dir.path(),
        &[
            "-f",
            profile.to_str().unwrap(),
            "-u",
            "20",
            "-r",
            "100",
            "-t",
            "4s",
            "--max-inflight",
            "1",
            "--json",
            json.to_str().unwrap(),
            "--csv",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_json(&json);
    let n = |name: &str| find_entry(&r, name).map_or(0, |e| e["num_requests"].as_u64().unwrap());
    let (put, head, del) = (n("s3:PutObject"), n("s3:HeadObject"), n("s3:DeleteObject"));
    assert_eq!(r["total"]["num_failures"], 0, "{r}");
    assert!(
        del >= 20,
        "every user got through sequences: {put} {head} {del}"
    );
    // No step skipped or repeated: each user has at most one sequence unfinished.
    assert!(
        put >= head && head >= del && put - del <= 20,
        "put {put}, head {head}, delete {del}"
    );
    // The users did wait for the slot, and the status line said so.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SATURATED"), "{err}");
    // The history marks those seconds as the generator's, not the cloud's.
    let g = &r["generator"];
    eprintln!("generator: {g}");
    assert!(g["saturated_seconds"].as_u64().unwrap() >= 3, "{g}");
    // Limited: the saturated seconds, and any whose runtime lagged (a busy machine).
    assert!(
        g["limited_seconds"].as_u64() >= g["saturated_seconds"].as_u64(),
        "{g}"
    );
    assert_eq!(g["dropped_seconds"], 0, "{g}");
    assert!(err.contains("note: the load generator limited "), "{err}");
    let hist = std::fs::read_to_string(format!("{}_stats_history.csv", csv.display())).unwrap();
    let header: Vec<&str> = hist.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (limited, by) = (col("Generator Limited"), col("Limited By"));
    let marked = hist
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[limited] == "1")
        .inspect(|f| {
            assert!(
                f[by]
                    .split("; ")
                    .all(|r| r == "in-flight slots full" || r.starts_with("runtime lag ")),
                "{hist}"
            )
        })
        .count();
    assert_eq!(
        marked as u64,
        g["limited_seconds"].as_u64().unwrap(),
        "{hist}"
    );
}

#[test]
fn a_report_that_cannot_be_saved_at_the_end_spares_the_others_and_exits_2() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let json = dir.path().join("r.json");
    let profile = dir.path().join("put.toml");
    std::fs::write(
        &profile,
        "[[user]]\nname = \"s3\"\nwait = { constant = 0.05 }\n[[user.task]]\nop = \"s3:PutObject\"\n",
    )
    .unwrap();
    let mut child = cloudswarm()
        .arg("run")
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .arg("-f")
        .arg(&profile)
        .args(["-u", "2", "-r", "10", "-t", "3s"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--csv")
        .arg(gone.join("r"))
        .arg("--json")
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The folder passes the check at the start; it goes away once the run
    // has begun (its journal folder exists), before the reports are written.
    let runs = dir.path().join("state").join("runs");
    let begun = std::time::Instant::now();
    while !std::fs::read_dir(&runs).is_ok_and(|mut d| d.next().is_some()) {
        if child.try_wait().unwrap().is_some() {
            panic!(
                "the run ended before it began: {}",
                text(&child.wait_with_output().unwrap())
            );
        }
        assert!(begun.elapsed().as_secs() < 60, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::remove_dir(&gone).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reports not saved: --csv: cannot write") && err.contains("gone/r_stats.csv"),
        "{err}"
    );
    let report = read_json(&json);
    assert!(
        report["total"]["num_requests"].as_u64().unwrap() > 0,
        "the JSON report is still written: {report}"
    );
    assert_eq!(report["resources"]["leaked"], 0, "{report}");
}

/// A bucket the cloud loses mid-run (deleted behind the run's back) is
/// forgotten by the users, who make a new one and go on; the failures are
/// the few requests that met the gone bucket, not every request after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_whose_bucket_is_lost_make_a_new_one() {
    for mode in ["shared", "per-user"] {
        let moto = Moto::start();
        let (_, s3) = clients(&moto).await;
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("lost.toml");
        std::fs::write(
            &profile,
            format!(
                r#"
[params]
object_size = "1KiB"
bucket = "{mode}"
[[user]]
name = "s"
wait = {{ constant = 0.1 }}
[[user.task]]
op = "s3:PutObject"
"#
            ),
        )
        .unwrap();
        let json = dir.path().join("r.json");
        let child = cloudswarm()
            .arg("run")
            .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
            .args(["--state-dir", dir.path().to_str().unwrap()])
            .args([
                "-f",
                profile.to_str().unwrap(),
                "-u",
                "2",
                "-r",
                "10",
                "-t",
                "10s",
            ])
            .args(["--json", json.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the run's buckets to hold objects, then take them away.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let lost = loop {
            let names: Vec<String> = s3
                .list_buckets()
                .send()
                .await
                .unwrap()
                .buckets()
                .iter()
                .filter_map(|b| b.name().map(str::to_string))
                .collect();
            let mut full = Vec::new();
            for n in &names {
                let l = s3.list_objects_v2().bucket(n).send().await.unwrap();
                if l.key_count().unwrap_or(0) >= 3 {
                    full.push(n.clone());
                }
            }
            if !full.is_empty() {
                break full;
            }
            assert!(std::time::Instant::now() < deadline, "no objects put");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        for b in &lost {
            // Empty and delete, as someone else would; the run's puts may
            // still land meanwhile, so try until the bucket is gone.
            for _ in 0..50 {
                let l = s3.list_objects_v2().bucket(b).send().await.unwrap();
                for o in l.contents() {
                    let _ = s3
                        .delete_object()
                        .bucket(b)
                        .key(o.key().unwrap())
                        .send()
                        .await;
                }
                if s3.delete_bucket().bucket(b).send().await.is_ok() {
                    break;
                }
            }
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let r = read_json(&json);
        let put = find_entry(&r, "s3:PutObject").unwrap();
        let made = find_entry(&r, "s3:CreateBucket").unwrap()["num_requests"]
            .as_u64()
            .unwrap();
        assert!(made > lost.len() as u64, "{mode}: new buckets made: {r:#}");
        let gone: u64 = r["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["code"] == "NoSuchBucket")
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        assert!(
            (1..=4).contains(&gone),
            "{mode}: a few puts met the gone bucket, then users went on: {gone} {r:#}"
        );
        assert!(
            put["num_requests"].as_u64().unwrap() > 3 * gone + 20,
            "{mode}: {r:#}"
        );
        assert_eq!(r["resources"]["leaked"], 0, "{mode}: {r:#}");
    }
}
