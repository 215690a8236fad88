//! SLAs that act while the run goes, against a real moto server: the
//! profile's `sla = [...]` and `--sla` combine, each is judged every second,
//! `--abort-on-sla-failure` stops the run at the first breach (clean-up,
//! reports, exit 1), and SLA mistakes are configuration errors (exit 2)
//! before anything is sent.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A profile of puts and deletes in one shared bucket, with `sla_line`.
fn puts_profile(dir: &std::path::Path, sla_line: &str) -> String {
    let path = dir.join("puts.toml");
    std::fs::write(
        &path,
        format!(
            "description = \"puts\"\n{sla_line}\n[params]\nobject_size = \"1KiB\"\nbucket = \"shared\"\n\
             [[user]]\nname = \"s\"\nwait = {{ constant = 0.05 }}\n\
             [[user.task]]\nsequence = [\"s3:PutObject\", \"s3:DeleteObject\"]\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sla_that_breaks_stops_the_run_early_cleans_up_and_exits_1() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // No PutObject on moto takes under 0.2 ms: the window breaks as soon
    // as it has data. The other two hold.
    let broken = "p95[10s](s3:PutObject)<0.2ms";
    let profile = puts_profile(
        dir.path(),
        &format!("sla = [\"failure_rate < 50%\", \"{broken}\"]"),
    );
    let json = dir.path().join("r.json");
    let csv = dir.path().join("run");
    let t0 = Instant::now();
    let out = run_against(
        &moto,
        dir.path(),
        &[
            "-f",
            &profile,
            "-u",
            "3",
            "-r",
            "10",
            "-t",
            "60s",
            "--sla",
            "requests(s3:DeleteObject)<1000000",
            "--abort-on-sla-failure",
            "--json",
            json.to_str().unwrap(),
            "--csv",
            csv.to_str().unwrap(),
        ],
    );
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        took < Duration::from_secs(30),
        "stopped well before the 60 s run time: {took:?}\n{}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let stopping = err
        .lines()
        .find(|l| l.contains("— stopping ("))
        .unwrap_or_else(|| panic!("no stopping line: {err}"));
    assert!(
        stopping.contains(&format!("stopping (SLA `{broken}` broke: actual ")),
        "{stopping}"
    );
    assert!(
        err.contains("the run was stopped early (--abort-on-sla-failure)"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED (actual"), "{stdout}");

    let r = read_json(&json);
    eprintln!("took {took:?}; sla {:#}", r["sla"]);
    assert!(r["duration_s"].as_f64().unwrap() < 30.0, "{r:#}");
    let sla = r["sla"].as_array().unwrap();
    let exprs: Vec<&str> = sla
        .iter()
        .map(|s| s["expression"].as_str().unwrap())
        .collect();
    assert_eq!(
        exprs,
        [
            "failure_rate < 50%",
            broken,
            "requests(s3:DeleteObject)<1000000"
        ],
        "the profile's first, then --sla"
    );
    assert_eq!(sla[0]["ok"], true, "{sla:#?}");
    assert_eq!(sla[0]["first_breach_at"], serde_json::Value::Null);
    assert_eq!(sla[2]["ok"], true, "{sla:#?}");
    assert_eq!(sla[1]["ok"], false, "{sla:#?}");
    assert_eq!(sla[1]["window_s"], 10);
    let started = r["started_at"].as_f64().unwrap();
    let broke = sla[1]["first_breach_at"].as_f64().unwrap();
    assert!(
        broke > started && broke < started + 20.0,
        "broke {:.1} s after the start",
        broke - started
    );
    assert!(sla[1]["breached_seconds"].as_u64().unwrap() >= 1);
    assert_eq!(r["aborted_by_sla"]["sla"], broken, "{r:#}");
    assert_eq!(r["aborted_by_sla"]["state"], "breached");
    // Clean-up ran: nothing of the run is left.
    assert_eq!(r["resources"]["leaked"], 0, "{r:#}");
    let (inst, vols, buckets) = run_leftovers(&moto, r["run_id"].as_str().unwrap()).await;
    assert!(inst.is_empty() && vols.is_empty() && buckets.is_empty());
    // The CSV says the same.
    let rows = std::fs::read_to_string(format!("{}_sla.csv", csv.display())).unwrap();
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(
        lines[0],
        "SLA,OK,Actual,Window (s),First Breach At,Breached Seconds"
    );
    assert_eq!(lines.len(), 4, "{rows}");
    assert!(lines[2].starts_with(&format!("{broken},false,")), "{rows}");
    assert!(lines[1].starts_with("failure_rate < 50%,true,"), "{rows}");
}

#[test]
fn slas_hold_while_the_run_goes_and_the_run_goes_to_its_end() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = puts_profile(dir.path(), "sla = [\"p99[5s](s3:PutObject) < 10s\"]");
    let json = dir.path().join("r.json");
    let t0 = Instant::now();
    let out = run_against(
        &moto,
        dir.path(),
        &[
            "-f",
            &profile,
            "-u",
            "2",
            "-r",
            "10",
            "-t",
            "8s",
            "--sla",
            "rps[3s]>=1",
            "--abort-on-sla-failure",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(t0.elapsed() >= Duration::from_secs(8));
    let r = read_json(&json);
    for s in r["sla"].as_array().unwrap() {
        assert_eq!(s["ok"], true, "{s:#}");
        assert_eq!(s["breached_seconds"], 0, "{s:#}");
    }
    assert_eq!(r["aborted_by_sla"], serde_json::Value::Null);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SLA rps[3s]>=1") && stdout.contains("held (actual"),
        "{stdout}"
    );
}

#[test]
fn sla_mistakes_are_configuration_errors_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here: a run that got past validation would say so.
    let nowhere = "http://127.0.0.1:9";
    let refused = |profile: &str, extra: &[&str]| {
        let out = cloudswarm()
            .arg("run")
            .args(["--ec2-endpoint", nowhere, "--s3-endpoint", nowhere])
            .args(["--state-dir", dir.path().to_str().unwrap()])
            .args(["-f", profile, "-t", "5s"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!err.contains("cannot reach"), "{err}");
        err
    };
    let bad = puts_profile(
        dir.path(),
        "sla = [\"failure_rate<1%\",\n  \"p95(s3:PutObjet)<1s\"]",
    );
    let e = refused(&bad, &[]);
    assert!(
        e.contains(&format!(
            "{bad}:3:3: SLA `p95(s3:PutObjet)<1s` names `s3:PutObjet`, which is not an op"
        )),
        "{e}"
    );
    let check = cloudswarm().args(["check", &bad]).output().unwrap();
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(":3:3: SLA `p95(s3:PutObjet)<1s`"),
        "{}",
        text(&check)
    );

    let good = puts_profile(dir.path(), "");
    let e = refused(&good, &["--abort-on-sla-failure"]);
    assert!(
        e.contains("--abort-on-sla-failure needs an SLA: give --sla EXPR or `sla = [...]`"),
        "{e}"
    );
    let e = refused(&good, &["--sla", "p95(s3:PutObject)[5m]<1s"]);
    assert!(e.contains("the window goes before the entry"), "{e}");
    let e = refused(&good, &["--sla", "p95[90d]<1s"]);
    assert!(e.contains("longer than a day"), "{e}");

    let with = puts_profile(
        dir.path(),
        "sla = [\"p95[5m](s3:PutObject)<2s\", \"throttle_rate<1%\"]",
    );
    let check = cloudswarm().args(["check", &with]).output().unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout)
            .contains("ok (1 user class(es), 1 task(s), 2 SLA(s))"),
        "{}",
        text(&check)
    );
}
