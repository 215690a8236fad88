//! Hostile HTTP against the dashboard (and the `--metrics-bind` server), on
//! loopback: half-open connections, oversized, malformed and slow requests,
//! forged hosts, and SIGTERM while a client holds a connection. Each gets a
//! 4xx or a closed connection, and the service goes on answering others.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The dashboard's limits (src/httpd.rs).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: usize = 1000;

/// What a server did with a request.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// It answered with this status.
    Status(u16),
    /// It closed the connection without an answer.
    Closed,
    /// Nothing within the time we waited.
    Held,
}

/// Sends raw bytes (a write the server cuts short is fine) and reads what
/// comes back within `wait`.
fn send(port: u16, bytes: &[u8], wait: Duration) -> Outcome {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(bytes);
    answer(&mut s, wait)
}

/// The status line the server sends on `s` within `wait`, or how it ended.
fn answer(s: &mut TcpStream, wait: Duration) -> Outcome {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::Held;
            }
            Err(_) => break, // reset
        }
    }
    let line = String::from_utf8_lossy(&got);
    match line.split_whitespace().nth(1).and_then(|c| c.parse().ok()) {
        Some(code) if line.starts_with("HTTP/1.") => Outcome::Status(code),
        _ => Outcome::Closed,
    }
}

/// A 4xx or a close; anything else (an answer of 2xx/5xx, a hold) panics.
fn refused(what: &str, o: Outcome) {
    assert!(
        matches!(o, Outcome::Closed) || matches!(o, Outcome::Status(c) if (400..500).contains(&c)),
        "{what}: {o:?}"
    );
}

fn still_answers(d: &Dashboard, after: &str) {
    let r = d.http("GET", "/stats/requests", &[], "");
    assert_eq!(r.status, 200, "after {after}: {}", r.body);
}

#[test]
fn half_open_connections_neither_hold_the_dashboard_nor_its_memory() {
    // This test opens 2,000 sockets.
    let _ = rlimit::increase_nofile_limit(10_000);
    let moto = Moto::start();
    let d = Dashboard::start(&moto, &[]);
    still_answers(&d, "start");
    let pid = d.pid();
    let (rss0, fds0) = (rss_kib(pid), open_fds(pid));

    let mut held = Vec::new();
    for _ in 0..2 * MAX_CONNECTIONS {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        let _ = s.write_all(b"GET /stats/requests HTTP/1.1\r\nHost: 127.0");
        held.push(s);
    }
    // Others are answered at once: the oldest idle connections make room
    // (without waiting for the header timeout).
    let t = Instant::now();
    still_answers(&d, "2,000 half-open connections");
    assert!(
        t.elapsed() < HEADER_TIMEOUT,
        "answered only after {:?}",
        t.elapsed()
    );
    // A connection closed to make room is closed by its own task: give the
    // last few of those a moment before counting.
    let settle = Instant::now() + Duration::from_secs(5);
    let mut fds = open_fds(pid);
    while fds > fds0 + MAX_CONNECTIONS + 10 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
        fds = open_fds(pid);
    }
    let rss = rss_kib(pid);
    eprintln!("RSS {rss0} -> {rss} KiB, open files {fds0} -> {fds}");
    assert!(
        fds <= fds0 + MAX_CONNECTIONS + 10,
        "{fds} files open (was {fds0})"
    );
    assert!(rss < rss0 + 100 * 1024, "RSS grew from {rss0} to {rss} KiB");

    // No client holds one for long: each is closed by the header timeout.
    for (i, s) in held.iter_mut().enumerate() {
        let o = answer(s, HEADER_TIMEOUT * 3);
        refused(&format!("half-open connection {i}"), o);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(pid) > fds0 + 10 {
        assert!(
            Instant::now() < deadline,
            "{} files still open",
            open_fds(pid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    still_answers(&d, "the half-open connections closed");
}

#[test]
fn oversized_malformed_and_garbage_requests_get_4xx_or_a_close() {
    let moto = Moto::start();
    let d = Dashboard::start(&moto, &[]);
    let host = format!("Host: 127.0.0.1:{}\r\n", d.port);
    let get =
        |extra: &str| format!("GET /stats/requests HTTP/1.1\r\n{host}{extra}\r\n").into_bytes();
    // Pseudo-random bytes, the same every run.
    let mut x: u32 = 12345;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let big_body = {
        let mut v = format!(
            "POST /swarm HTTP/1.1\r\n{host}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3000000\r\n\r\n"
        )
        .into_bytes();
        v.extend(std::iter::repeat_n(b'a', 3_000_000));
        v
    };
    let big_chunked = {
        let mut v = format!("POST /swarm HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
        for _ in 0..48 {
            v.extend(b"10000\r\n");
            v.extend(std::iter::repeat_n(b'a', 0x10000));
            v.extend(b"\r\n");
        }
        v.extend(b"0\r\n\r\n");
        v
    };
    let many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a header of 100 KB", get(&format!("X-Big: {}\r\n", "a".repeat(100_000)))),
        ("500 headers", get(&many_headers)),
        ("a target of 100 KB", format!("GET /{} HTTP/1.1\r\n{host}\r\n", "a".repeat(100_000)).into_bytes()),
        ("a body of 3 MB", big_body),
        ("a chunked body of 3 MB", big_chunked),
        ("a request line of garbage", b"GARBAGE\r\n\r\n".to_vec()),
        ("binary garbage", garbage),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec()),
        ("HTTP/9.9", format!("GET / HTTP/9.9\r\n{host}\r\n").into_bytes()),
        ("a header without a colon", get("X-No-Colon\r\n")),
        ("a NUL in a header", get("X-Nul: a\0b\r\n")),
        (
            "two different Content-Lengths",
            format!("POST /swarm HTTP/1.1\r\n{host}Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde").into_bytes(),
        ),
        (
            "a chunk size that is not hex",
            format!("POST /swarm HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n").into_bytes(),
        ),
        (
            "HTTP/2 with prior knowledge",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(),
        ),
        (
            "a TLS ClientHello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\x01\x02\x03\x04\x05\x06\x07".to_vec(),
        ),
        // The Host checks (src/web/auth.rs) on the wire.
        ("a Host with a byte that is not ASCII", b"GET /stats/requests HTTP/1.1\r\nHost: 127.0.0.1\xff\r\n\r\n".to_vec()),
        (
            "a Host with user info",
            format!("GET /stats/requests HTTP/1.1\r\nHost: 127.0.0.1:{}@evil.example\r\n\r\n", d.port).into_bytes(),
        ),
        ("two Host headers", get("Host: evil.example\r\n")),
        (
            "an absolute target on another host",
            format!("GET http://evil.example/stats/requests HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ),
        (
            "h2c upgrade with a foreign Host",
            b"GET /stats/requests HTTP/1.1\r\nHost: evil.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in &cases {
        refused(what, send(d.port, bytes, Duration::from_secs(60)));
        still_answers(&d, what);
    }
    // The same host checks let a plain request through.
    assert_eq!(
        send(
            d.port,
            &get("Connection: close\r\n"),
            Duration::from_secs(60)
        ),
        Outcome::Status(200)
    );
}

#[test]
fn slow_heads_and_bodies_are_cut_off() {
    let moto = Moto::start();
    let d = Dashboard::start(&moto, &[]);
    // A head that never ends, and one trickled a byte a second.
    let mut head = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    head.write_all(b"GET /stats/requests HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let port = d.port;
    let trickle = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let t = Instant::now();
        for b in b"GET /stats/requests HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if s.write_all(&[*b]).is_err() || t.elapsed() > Duration::from_secs(120) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        t.elapsed()
    });
    // A body that stops halfway (the head is complete: the handler waits for it).
    let mut body = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    body.write_all(
        format!(
            "POST /swarm HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nuser_count=1",
            d.port
        )
        .as_bytes(),
    )
    .unwrap();
    still_answers(&d, "opening slow connections");
    refused("an unfinished head", answer(&mut head, HEADER_TIMEOUT * 4));
    let took = trickle.join().unwrap();
    assert!(
        took < HEADER_TIMEOUT * 4,
        "a trickled head was held {took:?}"
    );
    refused("an unfinished body", answer(&mut body, BODY_TIMEOUT * 3));
    still_answers(&d, "slow connections");
    assert_eq!(d.requests()["state"], "ready", "no swarm from a cut body");
}

#[test]
fn a_very_deep_static_path_is_not_found() {
    let moto = Moto::start();
    let d = Dashboard::start(&moto, &[]);
    for path in [
        format!("/static/{}", "a/".repeat(5000)),
        format!("/static/{}", "a".repeat(300)),
    ] {
        let r = d.http("GET", &path, &[], "");
        assert_eq!(r.status, 404, "{} chars: {}", path.len(), r.body);
    }
    let r = d.http("GET", "/static/app.js", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_client_holding_a_connection_still_cleans_up_and_exits() {
    let moto = Moto::start();
    let mut d = Dashboard::start(&moto, &[]);
    let r = d.http(
        "POST",
        "/swarm",
        &[],
        "user_count=4&spawn_rate=10&profile=burn-in",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let run_id = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    d.wait_for("live resources", Duration::from_secs(60), |v| {
        v["live_resources"].as_u64().unwrap_or(0) > 0
    });
    // A half-sent request and an unfinished body, held open.
    let mut half = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    half.write_all(b"GET /stats/requests HTTP/1.1\r\nHost: 127.0")
        .unwrap();
    let mut body = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    body.write_all(
        format!(
            "POST /swarm HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 50\r\n\r\nuser_count=",
            d.port
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.requests()["state"], "running");
    let t = Instant::now();
    // Users get --stop-timeout 10s, connections 5 s: well within the minute.
    let status = d.terminate_within(Duration::from_secs(60));
    let took = t.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM"));
    eprintln!("exited {took:?} after SIGTERM");
    assert_eq!(status.code(), Some(0), "serve exits cleanly after clean-up");
    let (i, v, b) = run_leftovers(&moto, &run_id).await;
    assert!(
        i.is_empty() && v.is_empty() && b.is_empty(),
        "left behind: {i:?} {v:?} {b:?}"
    );
    drop((half, body));
}

#[test]
fn the_metrics_server_cuts_off_half_open_connections_too() {
    let moto = Moto::start();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = cloudswarm()
        .args([
            "run",
            "-f",
            "profiles/smoke.toml",
            "-u",
            "1",
            "-r",
            "1",
            "-t",
            "90s",
        ])
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .args([
            "--state-dir",
            state.path().to_str().unwrap(),
            "--status-every",
            "0",
        ])
        .args(["--metrics-bind", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "no metrics server on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0")
        .unwrap();
    let r = http(port, "GET", "/metrics", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("cloudswarm_"), "{}", r.body);
    refused(
        "a half-open connection to /metrics",
        answer(&mut half, HEADER_TIMEOUT * 4),
    );
    refused(
        "a header of 100 KB",
        send(
            port,
            format!(
                "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(100_000)
            )
            .as_bytes(),
            Duration::from_secs(60),
        ),
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn failed_starts_are_answered_and_keep_memory_flat() {
    let moto = Moto::start();
    let profiles = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(profiles.path().join(name), text).unwrap();
    // Needs S3, which is not there: preflight fails.
    write(
        "storage.toml",
        "[[user]]\nname = \"s\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n",
    );
    write(
        "broken.toml",
        "[[user]]\nname = \"x\"\n[[user.task]]\nop = \"ec2:LaunchRockets\"\n",
    );
    // Task weights whose sum does not fit in 32 bits: refused when read, or
    // (before profiles bounded it) a panic while preparing the run.
    let mut heavy = String::from("[[user]]\nname = \"h\"\n");
    for _ in 0..4400 {
        heavy.push_str("[[user.task]]\nop = \"ec2:DescribeInstances\"\nweight = 1000000\n");
    }
    write("heavy.toml", &heavy);
    let closed = format!("http://127.0.0.1:{}", free_port());
    let d = Dashboard::start_with(
        &moto.url,
        &closed,
        &["--profiles-dir", profiles.path().to_str().unwrap()],
    );
    let start = |profile: &str, users: &str| {
        d.http(
            "POST",
            "/swarm",
            &[],
            &format!("user_count={users}&spawn_rate=1&profile={profile}"),
        )
    };
    let round = || {
        for (profile, users, status) in [
            ("storage", "1", 502),
            ("broken", "1", 400),
            ("nosuch", "1", 400),
            ("storage", "0", 400),
            ("heavy", "1", 0),
        ] {
            let r = start(profile, users);
            let v: serde_json::Value = serde_json::from_str(&r.body)
                .unwrap_or_else(|e| panic!("{profile}: {} {e}: {}", r.status, r.body));
            assert_eq!(v["success"], false, "{profile}: {}", r.body);
            if status != 0 {
                assert_eq!(r.status, status, "{profile}: {}", r.body);
            } else {
                assert!(matches!(r.status, 400 | 500), "{profile}: {}", r.body);
            }
        }
    };
    // Warm up (the first of each kind loads code and caches), then measure.
    for _ in 0..3 {
        round();
    }
    let rss0 = rss_kib(d.pid());
    for _ in 0..6 {
        round();
    }
    let rss = rss_kib(d.pid());
    eprintln!("30 failed starts: RSS {rss0} -> {rss} KiB");
    // The report was 8-25 MB per failed start; allow well under 1 MB each.
    assert!(rss < rss0 + 24 * 1024, "RSS grew from {rss0} to {rss} KiB");
    assert_eq!(d.requests()["state"], "ready");
}
