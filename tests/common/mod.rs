//! Test fixtures: a real moto server on a free loopback port, the cloudswarm
//! binary run against it, and SDK clients to look at what the cloud holds.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A moto server that lives as long as this value.
pub struct Moto {
    child: Child,
    pub port: u16,
    pub url: String,
}

/// The repository's root: cargo's CARGO_MANIFEST_DIR of this run (a test
/// binary reused from a build cache made in another clone would otherwise
/// look in that clone), else the one it was built in.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn moto_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let p = root().join(".venv/bin/moto_server");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (the test command does)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(moto_bin())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ALLOW_NONEXISTENT_REGION", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            port,
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

/// The secret key cloudswarm is given: no page, report or metric may show it.
pub const SECRET: &str = "never-shown-SECRET-0123";

/// The cloudswarm binary with a clean AWS environment (test credentials, no
/// config files, no instance metadata lookups).
pub fn cloudswarm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cloudswarm"));
    c.current_dir(root())
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// Runs cloudswarm against moto with the given extra args.
pub fn run_against(moto: &Moto, state: &Path, args: &[&str]) -> Output {
    cloudswarm()
        .arg("run")
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "--status-every",
            "1",
        ])
        .args(args)
        .output()
        .expect("run cloudswarm")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// SDK clients pointed at moto, to inspect what the cloud holds.
pub async fn clients(moto: &Moto) -> (aws_sdk_ec2::Client, aws_sdk_s3::Client) {
    let creds = aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test");
    let region = aws_sdk_ec2::config::Region::new("us-east-1");
    let ec2 = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .credentials_provider(creds.clone())
        .region(region.clone())
        .endpoint_url(&moto.url)
        .build();
    let s3 = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .credentials_provider(creds)
        .region(region)
        .endpoint_url(&moto.url)
        .force_path_style(true)
        .build();
    (
        aws_sdk_ec2::Client::from_conf(ec2),
        aws_sdk_s3::Client::from_conf(s3),
    )
}

/// An nginx on a free loopback port, configured by the caller's `server {}` body.
pub struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Nginx {
    /// `server_body` is placed inside `server { listen ...; }`.
    pub fn start(server_body: &str) -> Nginx {
        Self::start_with("", server_body)
    }

    /// Serves HTTPS with the given certificate and key files.
    pub fn start_tls(cert: &Path, key: &Path, server_body: &str) -> Nginx {
        let body = format!(
            "    ssl_certificate {};\n    ssl_certificate_key {};\n{server_body}",
            cert.display(),
            key.display()
        );
        let mut n = Self::start_with(" ssl", &body);
        n.url = n.url.replace("http://", "https://");
        n
    }

    fn start_with(listen_opts: &str, server_body: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        // One process (no master): killing it leaves no orphaned worker behind.
        let conf = format!(
            "master_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d};\n  \
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
             client_max_body_size 100m;\n  proxy_request_buffering off;\n  proxy_http_version 1.1;\n  \
             server {{\n    listen 127.0.0.1:{port}{listen_opts};\n{server_body}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is missing: run scripts/setup.sh (the test command does)");
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a JSON report.
pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("json report")).expect("valid json")
}

/// One entry of a JSON report, if recorded.
pub fn find_entry<'a>(report: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

/// What of a run moto still holds: (live instances, volumes not being deleted, buckets).
pub async fn run_leftovers(moto: &Moto, run_id: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    use aws_sdk_ec2::types::{Filter, InstanceStateName, VolumeState};
    let (ec2, s3) = clients(moto).await;
    let tag = Filter::builder()
        .name("tag:cloudswarm:run-id")
        .values(run_id)
        .build();
    let inst = ec2
        .describe_instances()
        .filters(tag.clone())
        .send()
        .await
        .unwrap();
    let live: Vec<String> = inst
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            !matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            )
        })
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    let vols = ec2.describe_volumes().filters(tag).send().await.unwrap();
    let vols: Vec<String> = vols
        .volumes()
        .iter()
        .filter(|v| {
            !matches!(
                v.state(),
                Some(VolumeState::Deleting | VolumeState::Deleted)
            )
        })
        .filter_map(|v| v.volume_id().map(str::to_string))
        .collect();
    let b = s3.list_buckets().send().await.unwrap();
    let buckets: Vec<String> = b
        .buckets()
        .iter()
        .filter_map(|b| b.name())
        .filter(|n| n.starts_with(&format!("cs-{run_id}-")))
        .map(str::to_string)
        .collect();
    (live, vols, buckets)
}

/// A `cloudswarm serve` process against moto, on a free loopback port.
pub struct Dashboard {
    child: Child,
    pub port: u16,
    pub url: String,
    /// The state directory (with `start_in`, an unused one: the given folder is).
    pub state: tempfile::TempDir,
}

impl Dashboard {
    pub fn start(moto: &Moto, extra: &[&str]) -> Dashboard {
        Dashboard::start_at(&moto.url, extra)
    }

    /// A dashboard whose EC2 and S3 endpoints are `cloud`.
    pub fn start_at(cloud: &str, extra: &[&str]) -> Dashboard {
        Dashboard::start_with(cloud, cloud, extra)
    }

    /// A dashboard with these EC2 and S3 endpoints.
    pub fn start_with(ec2: &str, s3: &str, extra: &[&str]) -> Dashboard {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().to_path_buf();
        Dashboard::start_state(ec2, s3, state, &dir, extra)
    }

    /// A dashboard whose state directory is `dir` (kept across restarts).
    pub fn start_in(cloud: &str, dir: &Path, extra: &[&str]) -> Dashboard {
        Dashboard::start_state(cloud, cloud, tempfile::tempdir().unwrap(), dir, extra)
    }

    fn start_state(
        ec2: &str,
        s3: &str,
        state: tempfile::TempDir,
        dir: &Path,
        extra: &[&str],
    ) -> Dashboard {
        let port = free_port();
        let child = cloudswarm()
            .arg("serve")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--ec2-endpoint", ec2, "--s3-endpoint", s3])
            .args(["--state-dir", dir.to_str().unwrap()])
            .args(["--stop-timeout", "10s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cloudswarm serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the dashboard did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Dashboard {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    /// GET or POST on the dashboard: (status, headers, body).
    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        http(self.port, method, path, headers, body)
    }

    /// `GET /stats/requests` as JSON.
    pub fn requests(&self) -> serde_json::Value {
        let r = self.http("GET", "/stats/requests", &[], "");
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    /// Waits until `/stats/requests` satisfies `ok`, returning that document.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.requests();
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last /stats/requests: {v}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGTERM, then wait for the process (it stops and cleans up).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port` (form-encoded body when given).
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[(split + 4).min(raw.len())..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &[u8]) -> String {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&s[..eol]).trim(), 16).unwrap_or(0);
        let rest = &s[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until something listens on 127.0.0.1:`port`.
fn wait_listening(port: u16, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_nginx(dir: &Path) -> Child {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is missing: run scripts/setup.sh (the test command does)");
    Command::new(bin)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx")
}

impl Nginx {
    /// An nginx whose `http {}` block holds `http_body` (upstreams, maps, log
    /// formats and as many `server {}` blocks as it likes); `{dir}` in it
    /// stands for the nginx's own folder (for log files). `url` is
    /// `http://127.0.0.1:<port>`; the start waits for every port of `ports`,
    /// `port` first.
    /// A proxy to `upstream` that lets `per_second` requests a second
    /// through (a burst of 5) and answers the rest 503: a cloud front end
    /// that throttles, for capacity searches.
    pub fn rate_limited(upstream: &str, per_second: u32) -> Nginx {
        let port = free_port();
        Nginx::start_http(
            port,
            &[],
            &format!(
                "  limit_req_zone $server_port zone=cap:1m rate={per_second}r/s;\n  limit_req_status 503;\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      \
                 limit_req zone=cap burst=5 nodelay;\n      proxy_pass {upstream};\n    }}\n  }}\n"
            ),
        )
    }

    pub fn start_http(port: u16, ports: &[u16], http_body: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let body = http_body.replace("{dir}", &d);
        let conf = format!(
            "master_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d};\n  \
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
             client_max_body_size 100m;\n  proxy_request_buffering off;\n  proxy_http_version 1.1;\n\
             {body}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = spawn_nginx(dir.path());
        let mut n = Nginx {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        for p in std::iter::once(port).chain(ports.iter().copied()) {
            if TcpStream::connect(("127.0.0.1", p)).is_err() {
                let _ = n.child.try_wait().map(|s| {
                    assert!(
                        s.is_none(),
                        "nginx exited: {}",
                        std::fs::read_to_string(n.dir().join("error.log")).unwrap_or_default()
                    )
                });
                wait_listening(p, "nginx", Duration::from_secs(20));
            }
        }
        n
    }

    /// The folder the nginx runs in (its config, error log and `{dir}` logs).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The port of `url`.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Kills the nginx (its ports refuse connections from then on).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the nginx again with the same configuration and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_nginx(self._dir.path());
        wait_listening(self.port(), "nginx", Duration::from_secs(20));
    }
}

/// Everything of run `run_id` moto still holds, as `kind id` strings: live
/// instances, volumes, snapshots, addresses, key pairs and security groups
/// carrying the run's tag or name, buckets with its name prefix, and
/// in-progress multipart uploads in those buckets. (`run_leftovers` looks at
/// instances, volumes and buckets only.)
pub async fn everything_of_run(moto: &Moto, run_id: &str) -> Vec<String> {
    use aws_sdk_ec2::types::{InstanceStateName, Tag, VolumeState};
    let (ec2, s3) = clients(moto).await;
    let prefix = format!("cs-{run_id}-");
    let ours = |tags: &[Tag]| {
        tags.iter()
            .any(|t| t.key() == Some("cloudswarm:run-id") && t.value() == Some(run_id))
    };
    let mut out = Vec::new();
    let inst = ec2.describe_instances().send().await.unwrap();
    for i in inst.reservations().iter().flat_map(|r| r.instances()) {
        let gone = matches!(
            i.state().and_then(|s| s.name()),
            Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
        );
        if ours(i.tags()) && !gone {
            out.push(format!("instance {}", i.instance_id().unwrap_or("?")));
        }
    }
    let vols = ec2.describe_volumes().send().await.unwrap();
    for v in vols.volumes() {
        let gone = matches!(
            v.state(),
            Some(VolumeState::Deleting | VolumeState::Deleted)
        );
        if ours(v.tags()) && !gone {
            out.push(format!("volume {}", v.volume_id().unwrap_or("?")));
        }
    }
    let snaps = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    for s in snaps.snapshots().iter().filter(|s| ours(s.tags())) {
        out.push(format!("snapshot {}", s.snapshot_id().unwrap_or("?")));
    }
    let addrs = ec2.describe_addresses().send().await.unwrap();
    for a in addrs.addresses().iter().filter(|a| ours(a.tags())) {
        out.push(format!(
            "address {}",
            a.allocation_id().or(a.public_ip()).unwrap_or("?")
        ));
    }
    let keys = ec2.describe_key_pairs().send().await.unwrap();
    for k in keys.key_pairs() {
        let name = k.key_name().unwrap_or("");
        if ours(k.tags()) || name.starts_with(&prefix) {
            out.push(format!("key-pair {name}"));
        }
    }
    let groups = ec2.describe_security_groups().send().await.unwrap();
    for g in groups.security_groups() {
        let name = g.group_name().unwrap_or("");
        if ours(g.tags()) || name.starts_with(&prefix) {
            out.push(format!(
                "security-group {} {name}",
                g.group_id().unwrap_or("?")
            ));
        }
    }
    let buckets = s3.list_buckets().send().await.unwrap();
    for b in buckets.buckets().iter().filter_map(|b| b.name()) {
        if !b.starts_with(&prefix) {
            continue;
        }
        out.push(format!("bucket {b}"));
        if let Ok(u) = s3.list_multipart_uploads().bucket(b).send().await {
            for up in u.uploads() {
                out.push(format!("upload {b}/{}", up.key().unwrap_or("?")));
            }
        }
    }
    out
}

impl Dashboard {
    /// The `cloudswarm serve` process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit:
    /// its status, or None if it is still running.
    pub fn terminate_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A process's resident memory in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// How many file descriptors a process holds open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}
