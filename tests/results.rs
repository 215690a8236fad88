//! Results that last: every headless run kept in the state directory
//! (`cloudswarm runs`), compared (`cloudswarm compare`, `run --baseline`)
//! as a gate on a run made slower for real (S3 behind an nginx that
//! limits its answers' rate), JUnit XML that parses with a failing case
//! for a broken SLA, `--keep-runs` pruning, and what a signal and a
//! `kill -9` leave in the run's folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A profile of 64 KiB objects put and got: a front that slows answers
/// down shows on GetObject.
const PROFILE: &str = r#"
[params]
object_size = "64KiB"
[[user]]
name = "objects"
wait = { constant = 0.05 }
[[user.task]]
op = "s3:PutObject"
[[user.task]]
op = "s3:GetObject"
weight = 2
"#;

/// S3 through nginx, each answer sent at 64 KB/s: a 64 KiB GetObject
/// takes about a second (nginx sends the first buffers at once, the rest
/// at the rate).
fn slow_front(moto: &Moto) -> Nginx {
    Nginx::start(&format!(
        "    location / {{\n      limit_rate 64k;\n      proxy_pass {};\n    }}\n",
        moto.url
    ))
}

/// A run of the profile (S3 at `s3`) for `secs` with the extra flags.
fn run(moto: &Moto, s3: &str, state: &Path, profile: &Path, secs: u64, extra: &[&str]) -> Output {
    cloudswarm()
        .arg("run")
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", s3])
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "--status-every",
            "0",
        ])
        .args(["-f", profile.to_str().unwrap(), "-u", "2", "-r", "10"])
        .args(["-t", &format!("{secs}s")])
        .args(extra)
        .output()
        .unwrap()
}

/// The run id a run printed at its start.
fn run_id(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    err.lines()
        .find_map(|l| l.strip_prefix("cloudswarm run "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no run id in\n{}", text(o)))
        .to_string()
}

fn cs(args: &[&str]) -> Output {
    cloudswarm().args(args).output().unwrap()
}

/// `runs --json`: the kept runs, newest first.
fn kept(state: &Path) -> Vec<Value> {
    let o = cs(&["runs", "--json", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["runs"].as_array().unwrap().clone()
}

fn entry<'a>(report: &'a Value, name: &str) -> &'a Value {
    find_entry(report, name).unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

/// JUnit XML read by Python's parser: (suites, [(classname, name, failure message)]).
fn parse_junit(path: &Path) -> (usize, Vec<(String, String, Option<String>)>) {
    let script = r#"
import json, sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites", root.tag
suites = root.findall("testsuite")
cases = []
for s in suites:
    assert int(s.get("tests")) == len(s.findall("testcase"))
    assert int(s.get("failures")) == len([c for c in s.findall("testcase") if c.find("failure") is not None])
    for c in s.findall("testcase"):
        f = c.find("failure")
        cases.append([c.get("classname"), c.get("name"), None if f is None else f.get("message")])
print(json.dumps({"suites": len(suites), "cases": cases}))
"#;
    let o = Command::new("python3")
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "JUnit XML does not parse:\n{}\n{}",
        text(&o),
        std::fs::read_to_string(path).unwrap()
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c[0].as_str().unwrap().to_string(),
                c[1].as_str().unwrap().to_string(),
                c[2].as_str().map(str::to_string),
            )
        })
        .collect();
    (v["suites"].as_u64().unwrap() as usize, cases)
}

#[test]
fn runs_are_kept_listed_compared_and_gated_and_junit_parses() {
    let moto = Moto::start();
    let slow = slow_front(&moto);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let profile = dir.path().join("objects.toml");
    std::fs::write(&profile, PROFILE).unwrap();

    // Two runs straight to moto; the second breaks an SLA no GetObject meets.
    let a = run(
        &moto,
        &moto.url,
        &state,
        &profile,
        6,
        &["--sla", "failure_rate<1%"],
    );
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    let a_id = run_id(&a);
    let junit_b = dir.path().join("b.xml");
    let b = run(
        &moto,
        &moto.url,
        &state,
        &profile,
        4,
        &[
            "--sla",
            "failure_rate<1%",
            "--sla",
            "p95(s3:GetObject)<0.01ms",
            "--junit",
            junit_b.to_str().unwrap(),
        ],
    );
    assert_eq!(b.status.code(), Some(1), "{}", text(&b));
    let b_id = run_id(&b);

    // Both are kept: listed newest first, their folders hold every output.
    let runs = kept(&state);
    let ids: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [b_id.as_str(), a_id.as_str()]);
    assert_eq!(runs[0]["sla"], "FAILED");
    assert_eq!(runs[1]["sla"], "held");
    assert_eq!(runs[1]["profile"], "objects");
    assert!(runs[1]["requests"].as_u64().unwrap() > 20, "{runs:?}");
    let folder = state.join("runs").join(&a_id);
    for f in [
        "report.json",
        "report.html",
        "stats.csv",
        "failures.csv",
        "stats_history.csv",
        "sla.csv",
        "journal.jsonl",
        "run.json",
    ] {
        assert!(folder.join(f).is_file(), "{f} is not kept");
    }
    assert!(
        !folder.join("snapshot.json").exists(),
        "the final report replaces the snapshot"
    );
    let report = read_json(&folder.join("report.json"));
    assert_eq!(report["schema"], 1);
    assert_eq!(report["complete"], true);
    assert_eq!(report["profile_text"], PROFILE);
    assert_eq!(report["target"]["s3_endpoint"], moto.url.as_str());
    assert!(!report.to_string().contains(SECRET), "no credentials kept");
    assert_eq!(report["cloudswarm_version"], env!("CARGO_PKG_VERSION"));
    assert!(report["ended_at"].as_f64().unwrap() >= report["started_at"].as_f64().unwrap());
    assert!(
        report["history"].as_array().unwrap().len() >= 4,
        "{report:#}"
    );
    let listed = cs(&["runs", "--state-dir", state.to_str().unwrap()]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    eprintln!("{listed}");
    assert!(listed.starts_with("RUN "), "{listed}");
    for id in [&a_id, &b_id] {
        assert!(listed.contains(id.as_str()), "{listed}");
    }

    // The broken SLA is the JUnit report's failing case.
    let (suites, cases) = parse_junit(&junit_b);
    assert_eq!(suites, 1);
    assert_eq!(cases.len(), 2, "{cases:?}");
    assert_eq!((cases[0].0.as_str(), cases[0].2.is_none()), ("sla", true));
    assert_eq!(cases[1].0, "sla");
    assert_eq!(cases[1].1, "p95(s3:GetObject)<0.01ms");
    assert!(
        cases[1].2.as_deref().unwrap().contains("FAILED"),
        "{cases:?}"
    );

    // A run against itself: nothing regressed, exit 0.
    let st = state.to_str().unwrap();
    let same = cs(&[
        "compare",
        &a_id,
        &a_id,
        "--max-regression",
        "10%",
        "--state-dir",
        st,
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert!(String::from_utf8_lossy(&same.stdout).contains("no regression"));

    // A run whose GetObject answers come slowly, judged against A as it
    // ends: exit 1, and its reports say so.
    let json_c = dir.path().join("c.json");
    let junit_c = dir.path().join("c.xml");
    let html_c = dir.path().join("c.html");
    // 10 s: enough slow GetObjects to be judged (--min-requests 10).
    let c = run(
        &moto,
        &slow.url,
        &state,
        &profile,
        10,
        &[
            "--baseline",
            &a_id,
            "--max-regression",
            "10%",
            "--json",
            json_c.to_str().unwrap(),
            "--junit",
            junit_c.to_str().unwrap(),
            "--html",
            html_c.to_str().unwrap(),
        ],
    );
    assert_eq!(c.status.code(), Some(1), "{}", text(&c));
    let c_id = run_id(&c);
    let out = String::from_utf8_lossy(&c.stdout);
    assert!(
        out.contains("REGRESSED") && out.contains("p95(s3:GetObject)"),
        "{out}"
    );
    let rc = read_json(&json_c);
    let fast = entry(&report, "s3:GetObject")["p95_ms"].as_f64().unwrap();
    let slowed = entry(&rc, "s3:GetObject")["p95_ms"].as_f64().unwrap();
    eprintln!(
        "GetObject p95: {fast:.1} ms straight to moto, {slowed:.1} ms through the slow front"
    );
    assert!(
        slowed > fast * 2.0 && slowed > fast + 50.0,
        "{fast} {slowed}"
    );
    assert_eq!(
        rc["comparison"]["regressed"], true,
        "{:#}",
        rc["comparison"]
    );
    assert_eq!(rc["comparison"]["base"]["run_id"], a_id.as_str());
    let failed: Vec<&str> = rc["comparison"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["failed"] == true)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"p95(s3:GetObject)"), "{failed:?}");
    let (_, cases) = parse_junit(&junit_c);
    let regression: Vec<_> = cases.iter().filter(|c| c.0 == "regression").collect();
    assert!(regression.len() >= 4, "{cases:?}");
    let get = regression
        .iter()
        .find(|c| c.1 == "p95(s3:GetObject)")
        .unwrap_or_else(|| panic!("{cases:?}"));
    assert!(
        get.2.as_deref().unwrap().contains("regressed against run"),
        "{get:?}"
    );
    let html = std::fs::read_to_string(&html_c).unwrap();
    assert!(
        html.contains("id=\"comparison\"") && html.contains("REGRESSED"),
        "the HTML report has the comparison"
    );

    // The same by `compare`: exit 1, the comparison as JSON.
    let cmp = dir.path().join("cmp.json");
    let o = cs(&[
        "compare",
        &a_id,
        &c_id,
        "--max-regression",
        "10%",
        "--json",
        cmp.to_str().unwrap(),
        "--state-dir",
        st,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    let v = read_json(&cmp);
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "s3:GetObject")
        .unwrap();
    assert_eq!(row["regressed"], true);
    assert!(row["new"]["p95_ms"].as_f64() > row["base"]["p95_ms"].as_f64());
    // Without a limit it marks, and exits 0; by report path too.
    let o = cs(&[
        "compare",
        &a_id,
        json_c.to_str().unwrap(),
        "--state-dir",
        st,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("! s3:GetObject"));

    // Bad input: exit 2.
    let o = cs(&["compare", &a_id, "nosuchrun", "--state-dir", st]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no run nosuchrun"),
        "{}",
        text(&o)
    );
    let other = dir.path().join("schema2.json");
    let mut r2 = report.clone();
    r2["schema"] = 2.into();
    std::fs::write(&other, r2.to_string()).unwrap();
    let o = cs(&["compare", other.to_str().unwrap(), &a_id, "--state-dir", st]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("report schema 2"),
        "{}",
        text(&o)
    );
    let o = run(
        &moto,
        &moto.url,
        &state,
        &profile,
        1,
        &["--baseline", "nosuchrun"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(
        &moto,
        &moto.url,
        &state,
        &profile,
        1,
        &["--max-regression", "10%"],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "a gate needs a baseline: {}",
        text(&o)
    );

    // --keep-runs 2: the new run and the newest one are left.
    let d = run(&moto, &moto.url, &state, &profile, 2, &["--keep-runs", "2"]);
    assert_eq!(d.status.code(), Some(0), "{}", text(&d));
    let ids: Vec<String> = kept(&state)
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [run_id(&d), c_id]);
    assert!(!state.join("runs").join(&a_id).exists());
}

/// A started run's id and its folder, once its first snapshot is there.
fn wait_for_snapshot(state: &Path, child: &mut std::process::Child) -> (String, PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(rd) = std::fs::read_dir(state.join("runs")) {
            for e in rd.flatten() {
                if e.path().join("snapshot.json").is_file() {
                    return (e.file_name().to_string_lossy().into_owned(), e.path());
                }
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended");
        assert!(Instant::now() < deadline, "no snapshot within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_signal_keeps_the_reports_and_a_crash_leaves_the_journal_and_last_snapshot() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let profile = dir.path().join("objects.toml");
    std::fs::write(&profile, PROFILE).unwrap();
    let spawn = || {
        cloudswarm()
            .arg("run")
            .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
            .args([
                "--state-dir",
                state.to_str().unwrap(),
                "--status-every",
                "0",
            ])
            .args([
                "-f",
                profile.to_str().unwrap(),
                "-u",
                "2",
                "-r",
                "10",
                "-t",
                "60s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // SIGTERM: the run stops, cleans up and keeps its reports.
    let mut child = spawn();
    let (stopped, folder) = wait_for_snapshot(&state, &mut child);
    let snap = read_json(&folder.join("snapshot.json"));
    assert_eq!(
        (snap["schema"].as_u64(), snap["complete"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(snap["run_id"], stopped.as_str());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let report = read_json(&folder.join("report.json"));
    assert_eq!(report["complete"], true);
    assert!(report["total"]["num_requests"].as_u64().unwrap() > 0);
    assert!(folder.join("report.html").is_file() && !folder.join("snapshot.json").exists());

    // kill -9 after a snapshot: the journal and the snapshot stay, and
    // `runs` says the run has no final report.
    let mut child = spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (crashed, folder) = loop {
        let (id, f) = wait_for_snapshot(&state, &mut child);
        if id != stopped {
            break (id, f);
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    };
    // A second snapshot, with requests in it.
    std::thread::sleep(Duration::from_secs(6));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(folder.join("journal.jsonl").is_file());
    assert!(!folder.join("report.json").exists());
    let snap = read_json(&folder.join("snapshot.json"));
    assert_eq!(snap["complete"], false);
    assert!(
        snap["total"]["num_requests"].as_u64().unwrap() > 0,
        "{snap:#}"
    );
    let runs = kept(&state);
    let listed = runs
        .iter()
        .find(|r| r["run_id"] == crashed.as_str())
        .unwrap();
    assert_eq!(listed["state"], "snapshot");
    let o = cs(&["runs", "--state-dir", state.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("no final report"), "{out}");
    // What the crash left is cleaned up from the journal.
    let o = cs(&[
        "cleanup",
        "--run-id",
        &crashed,
        "--ec2-endpoint",
        &moto.url,
        "--s3-endpoint",
        &moto.url,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
