//! What `check` accepts, `run` runs.
//!
//! A property test generates profiles (TOML text: classes, tasks, weights,
//! waits and parameters, with the bounds' edges and extreme values) and
//! asserts: when validation (`profile::parse`, what `cloudswarm check` runs)
//! accepts one, building the engine, setting the largest target and running
//! every task of every class once does not panic, and the wait that follows
//! is at most a day. The tasks go through the real SDK over real HTTP to a
//! canned endpoint on 127.0.0.1 (an axum server in this process): EC2 calls
//! get an empty `<ActionResponse>`, S3 calls an empty 200. So creates give
//! nothing to wait for and every step is quick; the budget caps are small so
//! the payloads stay small (object sizes themselves are bounded by
//! validation). Then the command line: `check` refusing devices, FIFOs and
//! oversized files, and `run --stages` refusing users and rates the engine
//! would refuse, both with exit 2 before anything starts.

mod common;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, Uri, header};
use axum::response::IntoResponse;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use cloudswarm::engine::{Engine, MAX_RATE, MAX_USERS};
use cloudswarm::ops::Op;
use cloudswarm::profile::{self, MAX_WAIT};
use cloudswarm::resources::Caps;
use cloudswarm::resources::Tracker;
use cloudswarm::stats::Stats;
use cloudswarm::target::{Clients, TargetArgs};
use cloudswarm::tasks::RunCtx;

// ---- the canned endpoint

/// Answers every request at once: an EC2 call (a form with `Action=X`) with
/// an empty `<XResponse>`, anything else (S3) with an empty 200.
async fn canned(method: Method, uri: Uri, body: Bytes) -> impl IntoResponse {
    let form = String::from_utf8_lossy(&body);
    let action = (method == Method::POST && uri.path() == "/")
        .then(|| {
            form.split('&')
                .find_map(|kv| kv.strip_prefix("Action="))
                .map(str::to_string)
        })
        .flatten();
    match action {
        Some(a) => (
            [(header::CONTENT_TYPE, "text/xml")],
            format!(
                "<{a}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r-1</requestId></{a}Response>"
            ),
        ),
        None => ([(header::CONTENT_TYPE, "application/xml")], String::new()),
    }
}

/// Starts the canned endpoint; returns clients pointed at it.
async fn canned_clients(dir: &Path) -> Clients {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(canned)
        .layer(axum::extract::DefaultBodyLimit::disable());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // Keys from a eucarc, so the test changes no environment variable.
    let eucarc = dir.join("eucarc");
    let keys =
        format!("EC2_URL={url}\nS3_URL={url}\nEC2_ACCESS_KEY=testing\nEC2_SECRET_KEY=testing\n");
    std::fs::write(&eucarc, keys).unwrap();
    TargetArgs {
        ec2_endpoint: Some(url.clone()),
        s3_endpoint: Some(url),
        region: Some("us-east-1".into()),
        eucarc: Some(eucarc),
        ca_bundle: None,
        insecure: false,
        retries: 0,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(30),
    }
    .clients()
    .await
    .unwrap()
}

// ---- generated profiles

/// A TOML float (nan and inf spelled TOML's way).
fn toml_f64(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{v:?}")
    }
}

/// Whole numbers: mostly in `lo..=hi`, often at its edges, rarely beyond.
fn int_in(lo: i64, hi: i64) -> impl Strategy<Value = i64> {
    prop_oneof![
        30 => lo..=hi,
        5 => Just(lo),
        5 => Just(hi),
        1 => prop_oneof![
            Just(lo - 1),
            Just(hi + 1),
            Just(-1i64),
            Just(u32::MAX as i64 + 1),
            Just(i64::MAX),
            Just(i64::MIN),
        ],
    ]
}

/// Seconds: mostly a day or less, with the edges and extreme numbers.
fn seconds() -> impl Strategy<Value = f64> {
    prop_oneof![
        20 => 0.0..=86_400.0f64,
        3 => Just(0.0),
        3 => Just(86_400.0),
        3 => prop_oneof![Just(5e-324), Just(1e-300), Just(1e-9)],
        1 => prop_oneof![
            Just(-1.0),
            Just(86_400.001),
            Just(1e300),
            Just(f64::INFINITY),
            Just(f64::NAN)
        ],
    ]
}

fn throughput() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => 1.2e-5..=1e6f64,
        3 => Just(1.0 / 86_400.0),
        2 => Just(1e6),
        1 => prop_oneof![Just(1e-300), Just(5e-324), Just(1e-5), Just(0.0), Just(1e7), Just(f64::NAN)],
    ]
}

fn wait() -> impl Strategy<Value = String> {
    prop_oneof![
        seconds().prop_map(|s| format!("{{ constant = {} }}", toml_f64(s))),
        (seconds(), seconds(), prop::bool::weighted(0.9)).prop_map(|(a, b, ordered)| {
            let (a, b) = if ordered {
                (a.min(b), a.max(b))
            } else {
                (a, b)
            };
            format!("{{ between = [{}, {}] }}", toml_f64(a), toml_f64(b))
        }),
        seconds().prop_map(|s| format!("{{ constant_pacing = {} }}", toml_f64(s))),
        throughput().prop_map(|s| format!("{{ constant_throughput = {} }}", toml_f64(s))),
    ]
}

/// Sizes as text: small ones (what runs under the test's caps), the 5 GiB
/// and 5 TB edges, and rarely beyond or malformed.
fn size_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u64..=2_000_000).prop_map(|n| n.to_string()),
        4 => prop_oneof![Just("1KiB"), Just("4 KiB"), Just("1MiB"), Just("5MiB"), Just("1.5KiB"), Just("64kB")]
            .prop_map(String::from),
        2 => prop_oneof![Just("5GiB"), Just("5368709120"), Just("0")].prop_map(String::from),
        1 => prop_oneof![
            Just("5368709121"),
            Just("6GiB"),
            Just("5000GB"),
            Just("5001GB"),
            Just("99999999999999999999999999"),
            Just("3 parsecs"),
        ]
        .prop_map(String::from),
    ]
}

fn object_size() -> impl Strategy<Value = String> {
    prop_oneof![
        size_text().prop_map(|s| format!("{s:?}")),
        int_in(0, 5 << 30).prop_map(|n| n.to_string()),
        (
            0u64..=2_000_000,
            0u64..=2_000_000,
            prop::bool::weighted(0.9)
        )
            .prop_map(|(a, b, ordered)| {
                let (a, b) = if ordered {
                    (a.min(b), a.max(b))
                } else {
                    (a, b)
                };
                format!("\"{a}..{b}\"")
            }),
        Just("\"1KiB..5GiB\"".to_string()),
        prop::collection::btree_map(size_text(), int_in(1, 1_000_000), 1..4).prop_map(|m| {
            let kv: Vec<String> = m.iter().map(|(k, w)| format!("{k:?} = {w}")).collect();
            format!("{{ {} }}", kv.join(", "))
        }),
    ]
}

fn duration_text(shortest: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        16 => prop_oneof![Just(shortest), Just("1s"), Just("2"), Just("10m"), Just("365d")],
        1 => prop_oneof![
            Just("0s"),
            Just("49ms"),
            Just("366d"),
            Just("1e30"),
            Just("9999999999h"),
            Just("soon"),
        ],
    ]
    .prop_map(|s| format!("{s:?}"))
}

/// `params = { ... }` fields, each present or not.
fn params() -> impl Strategy<Value = Vec<String>> {
    let field = |name: &'static str, v: BoxedStrategy<String>| {
        prop::option::weighted(0.3, v.prop_map(move |v| format!("{name} = {v}")))
    };
    (
        field(
            "instance_count",
            int_in(1, 100).prop_map(|n| n.to_string()).boxed(),
        ),
        field(
            "volume_size_gib",
            int_in(1, 16_384).prop_map(|n| n.to_string()).boxed(),
        ),
        field("object_size", object_size().boxed()),
        field(
            "multipart_size",
            size_text().prop_map(|s| format!("{s:?}")).boxed(),
        ),
        field(
            "part_size",
            size_text().prop_map(|s| format!("{s:?}")).boxed(),
        ),
        field(
            "delete_batch",
            int_in(1, 1000).prop_map(|n| n.to_string()).boxed(),
        ),
        field(
            "get_range",
            prop_oneof![
                10 => prop_oneof![Just("0-1023"), Just("512-"), Just("0-18446744073709551615")],
                1 => prop_oneof![Just("5-1"), Just("-5"), Just("abc")],
            ]
            .prop_map(|s| format!("{s:?}"))
            .boxed(),
        ),
        field("wait_timeout", duration_text("0s").boxed()),
        field("poll_interval", duration_text("50ms").boxed()),
        field(
            "bucket",
            prop_oneof![4 => Just("\"per-user\""), 4 => Just("\"shared\""), 1 => Just("\"mine\"")]
                .prop_map(String::from)
                .boxed(),
        ),
        field(
            "user_data",
            prop_oneof![Just("\"#!/bin/sh\\necho hi\""), Just("\"\"")]
                .prop_map(String::from)
                .boxed(),
        ),
    )
        .prop_map(|t| {
            [t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10]
                .into_iter()
                .flatten()
                .collect()
        })
}

fn op_name() -> impl Strategy<Value = String> {
    let ops: Vec<&'static str> = Op::all().iter().map(|o| o.name()).collect();
    prop_oneof![
        120 => prop::sample::select(ops).prop_map(String::from),
        1 => Just("ec2:RunInstance".to_string()),
    ]
}

/// One `[[user.task]]`'s lines, or many tasks at the weight limit.
fn tasks() -> impl Strategy<Value = String> {
    let one = (
        prop_oneof![
            20 => op_name().prop_map(|o| format!("op = {o:?}")),
            20 => prop::collection::vec(op_name(), 1..5).prop_map(|v| format!("sequence = {v:?}")),
            1 => Just("sequence = []".to_string()),
        ],
        prop::option::weighted(0.6, int_in(1, 1_000_000)),
    )
        .prop_map(|(what, w)| {
            let mut t = format!("[[user.task]]\n{what}\n");
            if let Some(w) = w {
                writeln!(t, "weight = {w}").unwrap();
            }
            t
        });
    prop_oneof![
        60 => prop::collection::vec(one, 1..4).prop_map(|v| v.concat()),
        1 => Just(String::new()),
        // Task weights that sum past u32 (and the task count's edge).
        1 => prop_oneof![Just(999usize), Just(1000), Just(1001), Just(5000)].prop_map(|n| {
            "[[user.task]]\nop = \"s3:ListBuckets\"\nweight = 1000000\n".repeat(n)
        }),
        // The sequence length's edge.
        1 => prop_oneof![Just(1000usize), Just(1001)].prop_map(|n| {
            let steps = vec!["ec2:DescribeImages"; n];
            format!("[[user.task]]\nsequence = {steps:?}\n")
        }),
    ]
}

fn user_class() -> impl Strategy<
    Value = (
        Option<i64>,
        Option<i64>,
        Option<String>,
        Vec<String>,
        String,
    ),
> {
    (
        prop::option::weighted(0.5, int_in(1, 1_000_000)),
        prop::option::weighted(0.2, int_in(0, 1_000_000)),
        prop::option::weighted(0.8, wait()),
        params(),
        tasks(),
    )
}

fn profile_text() -> impl Strategy<Value = String> {
    (params(), prop::collection::vec(user_class(), 1..4)).prop_map(|(shared, classes)| {
        let mut t = String::new();
        if !shared.is_empty() {
            writeln!(t, "[params]\n{}", shared.join("\n")).unwrap();
        }
        for (i, (weight, fixed, wait, params, tasks)) in classes.into_iter().enumerate() {
            writeln!(t, "[[user]]\nname = \"c{i}\"").unwrap();
            if let Some(w) = weight {
                writeln!(t, "weight = {w}").unwrap();
            }
            if let Some(f) = fixed {
                writeln!(t, "fixed_count = {f}").unwrap();
            }
            if let Some(w) = wait {
                writeln!(t, "wait = {w}").unwrap();
            }
            if !params.is_empty() {
                writeln!(t, "params = {{ {} }}", params.join(", ")).unwrap();
            }
            t.push_str(&tasks);
        }
        t
    })
}

#[test]
fn what_check_accepts_runs_without_panicking() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clients = rt.block_on(canned_clients(dir.path()));
    let caps = Caps {
        max_instances: 1000,
        max_volumes: 1000,
        max_buckets: 1000,
        max_bytes: 1 << 20,
    };
    let mut runner = TestRunner::new(Config {
        cases: 192,
        failure_persistence: None,
        ..Config::default()
    });
    let (accepted, cases) = (Cell::new(0u32), Cell::new(0u32));
    runner
        .run(&profile_text(), |text| {
            let case = cases.get() + 1;
            cases.set(case);
            let profile = match profile::parse(Path::new("gen.toml"), &text) {
                Ok(p) => p,
                Err(e) => {
                    // PROP_DEBUG=1 shows why profiles were refused, to tune the generator.
                    if std::env::var_os("PROP_DEBUG").is_some() {
                        eprintln!("REJECTED {}", e.message);
                    }
                    return Ok(());
                }
            };
            accepted.set(accepted.get() + 1);
            let run_id = cloudswarm::naming::RunId::parse(&format!("prop{case:04}")).unwrap();
            let meta = cloudswarm::naming::RunMeta::default();
            let tracker = Tracker::create(dir.path(), &run_id, &meta).unwrap();
            let mut ctx = RunCtx::new(run_id, clients.clone(), Stats::new(), tracker, caps);
            ctx.default_az = Some("us-east-1a".into());
            ctx.auto_image = Some("ami-12345678".into());
            let engine = Engine::new(
                Arc::new(ctx),
                Arc::new(profile.clone()),
                cloudswarm::engine::DEFAULT_MAX_INFLIGHT,
            );
            engine
                .set_target(MAX_USERS, MAX_RATE)
                .map_err(TestCaseError::fail)?;
            for (i, class) in profile.users.iter().enumerate() {
                // Tasks with the same steps do the same: run one of each.
                let mut seen = BTreeSet::new();
                for (j, task) in class.tasks.iter().enumerate() {
                    if !seen.insert(task.steps.iter().map(|o| o.name()).collect::<Vec<_>>()) {
                        continue;
                    }
                    let wait = rt
                        .block_on(async {
                            tokio::time::timeout(
                                Duration::from_secs(120),
                                engine.run_task_once(i, j),
                            )
                            .await
                        })
                        .map_err(|_| {
                            TestCaseError::fail(format!("task {j} of class {i} hung\n{text}"))
                        })?;
                    prop_assert!(
                        wait <= MAX_WAIT,
                        "wait {wait:?} after task {j} of class {i}"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    // The generator is worth its name only if many of its profiles pass.
    let (accepted, cases) = (accepted.get(), cases.get());
    eprintln!("{accepted} of {cases} generated profiles were valid and ran");
    assert!(
        accepted >= 32,
        "only {accepted} of {cases} generated profiles were valid"
    );
}

// ---- the command line

fn check(path: &str) -> std::process::Output {
    common::cloudswarm()
        .args(["check", path])
        .output()
        .expect("run cloudswarm check")
}

#[test]
fn check_refuses_devices_fifos_and_oversized_files_with_exit_2() {
    let o = check("/dev/zero");
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "/dev/zero: cannot read profile: it is a character device, not a regular file"
        ),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("profile.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    // Nobody writes to the FIFO: opening it to read would block for ever.
    let o = check(fifo.to_str().unwrap());
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("it is a FIFO (named pipe), not a regular file"),
        "{}",
        common::text(&o)
    );

    let big = dir.path().join("big.toml");
    let mut text = std::fs::read_to_string(common::root().join("profiles/smoke.toml")).unwrap();
    while text.len() <= 1 << 20 {
        text.push_str("# padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, &text).unwrap();
    let o = check(big.to_str().unwrap());
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("more than the limit of 1048576 (1 MiB)"),
        "{}",
        common::text(&o)
    );

    let o = check(dir.path().to_str().unwrap());
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("it is a directory"));

    // A shipped profile still passes.
    let o = check("profiles/smoke.toml");
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
}

#[test]
fn check_names_file_line_and_field_of_what_run_could_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("slow.toml");
    std::fs::write(
        &p,
        "[[user]]\nname = \"a\"\nwait = { constant_throughput = 1e-300 }\n[[user.task]]\nop = \"s3:ListBuckets\"\n",
    )
    .unwrap();
    let o = check(p.to_str().unwrap());
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("slow.toml:3:"), "{err}");
    assert!(
        err.contains("wait.constant_throughput must be from"),
        "{err}"
    );
}

#[test]
fn run_refuses_stages_beyond_the_engine_limits_before_starting() {
    for (stages, says) in [
        (
            "10:1s,1000001:1s",
            "stage `1000001:1s`: 1000001 users; at most 1000000",
        ),
        (
            "10:1s:100001",
            "stage `10:1s:100001`: hatch rate 100001; at most 100000 users/s",
        ),
    ] {
        // No endpoint is given: nothing may start before the flag is refused.
        let o = common::cloudswarm()
            .args(["run", "-f", "profiles/smoke.toml", "--stages", stages])
            .output()
            .expect("run cloudswarm");
        assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{err}");
    }
}
