//! The cloud op library, Eucalyptus-style targets, leak-proof clean-up and
//! budget caps, against a real moto server (behind nginx where a test needs
//! Eucalyptus paths or a broken proxy).

mod common;

use std::time::Duration;

use common::*;

/// The profile's ops that must appear in a report with zero failures.
const EVERY_OP: &[&str] = &[
    "ec2:RunInstances",
    "ec2:instance-running",
    "ec2:CreateVolume",
    "ec2:volume-available",
    "ec2:AttachVolume",
    "ec2:volume-in-use",
    "ec2:DetachVolume",
    "ec2:DeleteVolume",
    "ec2:TerminateInstances",
    "ec2:instance-terminated",
    "ec2:StopInstances",
    "ec2:instance-stopped",
    "ec2:StartInstances",
    "ec2:RebootInstances",
    "ec2:AllocateAddress",
    "ec2:AssociateAddress",
    "ec2:DisassociateAddress",
    "ec2:ReleaseAddress",
    "ec2:CreateSnapshot",
    "ec2:snapshot-completed",
    "ec2:DeleteSnapshot",
    "ec2:CreateKeyPair",
    "ec2:CreateSecurityGroup",
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:DeleteSecurityGroup",
    "ec2:DeleteKeyPair",
    "ec2:DescribeImages",
    "ec2:DescribeAvailabilityZones",
    "ec2:DescribeInstances",
    "ec2:DescribeVolumes",
    "s3:CreateBucket",
    "s3:HeadBucket",
    "s3:PutObject",
    "s3:HeadObject",
    "s3:GetObject",
    "s3:GetObject:ttfb",
    "s3:ListObjects",
    "s3:ListBuckets",
    "s3:CreateMultipartUpload",
    "s3:UploadPart",
    "s3:CompleteMultipartUpload",
    "s3:DeleteObject",
    "s3:DeleteObjects",
    "s3:DeleteBucket",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_op_runs_against_moto_with_zero_failures() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = run_against(
        &moto,
        dir.path(),
        &[
            "-f",
            "profiles/lifecycle.toml",
            // Tasks are picked at random by weight: enough users that every
            // one of them comes up on a slow machine too.
            "-u",
            "12",
            "-r",
            "12",
            "-t",
            "25s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_json(&json);
    let mut missing = vec![];
    for op in EVERY_OP {
        match find_entry(&r, op) {
            Some(e) => assert_eq!(e["num_failures"], 0, "{op}: {e}\n{}", text(&out)),
            None => missing.push(*op),
        }
    }
    assert!(missing.is_empty(), "not run: {missing:?}\n{}", text(&out));
    assert_eq!(r["total"]["num_failures"], 0, "{:#}", r["errors"]);
    // Ranged gets read 1 KiB; puts are 4-64 KiB.
    let get = find_entry(&r, "s3:GetObject").unwrap();
    assert_eq!(
        get["bytes_received"].as_u64().unwrap(),
        1024 * get["num_requests"].as_u64().unwrap()
    );
    assert!(get["throughput_bps"].as_f64().unwrap() > 0.0, "{get}");
    assert_eq!(r["resources"]["leaked"], 0, "{:#}", r["resources"]);
    let run_id = r["run_id"].as_str().unwrap();
    let (i, v, b) = run_leftovers(&moto, run_id).await;
    assert!(
        i.is_empty() && v.is_empty() && b.is_empty(),
        "{i:?} {v:?} {b:?}"
    );
}

fn services_proxy(moto: &Moto) -> Nginx {
    let m = &moto.url;
    Nginx::start(&format!(
        r#"
    location /services/compute {{ proxy_pass {m}/; }}
    location /services/compute/ {{ proxy_pass {m}/; }}
    location /services/objectstorage/ {{
      # This S3 does not know ListObjectsV2: clients must fall back to V1.
      if ($args ~ "list-type=2") {{
        return 501 '<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>ListObjectsV2 is not implemented</Message></Error>';
      }}
      proxy_pass {m}/;
    }}
    location /services/objectstorage {{ proxy_pass {m}/; }}
    location /broken/ {{
      default_type text/html;
      return 502 '<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>';
    }}
"#
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn eucarc_run_through_services_paths_succeeds_and_falls_back_to_list_v1() {
    let moto = Moto::start();
    let proxy = services_proxy(&moto);
    let dir = tempfile::tempdir().unwrap();
    let eucarc = dir.path().join("eucarc");
    // No trailing slashes: the S3 SDK would drop the separator (aws-sdk-rust #1387).
    std::fs::write(
        &eucarc,
        format!(
            "EUCA_KEY_DIR=$(cd $(dirname ${{BASH_SOURCE:-$0}}); pwd -P)\n\
             export EC2_URL={u}/services/compute\n\
             export S3_URL=\"{u}/services/objectstorage\"\n\
             export EC2_ACCESS_KEY='AKIDEUCA'\nexport EC2_SECRET_KEY='euca/secret+key'\n\
             export AWS_ACCESS_KEY=$EC2_ACCESS_KEY\nexport AWS_SECRET_KEY=$EC2_SECRET_KEY\n",
            u = proxy.url
        ),
    )
    .unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        r#"
[params]
poll_interval = "200ms"
[[user]]
name = "euca"
wait = { constant = 0.2 }
# moto has no subnets in a made-up region, so no instances there: the EC2 calls
# here still go through /services/compute with the `eucalyptus` label.
[[user.task]]
sequence = ["ec2:DescribeAvailabilityZones", "ec2:CreateKeyPair", "ec2:CreateSecurityGroup",
            "ec2:AuthorizeSecurityGroupIngress", "ec2:DeleteSecurityGroup", "ec2:DeleteKeyPair",
            "s3:CreateBucket", "s3:PutObject", "s3:ListObjects", "s3:GetObject", "s3:DeleteObject",
            "s3:MultipartUpload", "s3:DeleteObjects"]
"#,
    )
    .unwrap();
    let json = dir.path().join("r.json");
    let out = cloudswarm()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args([
            "run",
            "-f",
            profile.to_str().unwrap(),
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "6s",
        ])
        .args([
            "--eucarc",
            eucarc.to_str().unwrap(),
            "--region",
            "eucalyptus",
        ])
        .args([
            "--state-dir",
            dir.path().to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/services/compute") && err.contains("/services/objectstorage"),
        "{err}"
    );
    assert!(
        !err.contains("euca/secret+key") && !err.contains("AKIDEUCA"),
        "credentials leaked: {err}"
    );
    let r = read_json(&json);
    assert_eq!(r["total"]["num_failures"], 0, "{:#}", r["errors"]);
    for op in [
        "ec2:CreateSecurityGroup",
        "s3:PutObject",
        "s3:ListObjects",
        "s3:GetObject",
        "s3:UploadPart",
    ] {
        let e = find_entry(&r, op).unwrap_or_else(|| panic!("{op} missing: {r:#}"));
        assert!(e["num_requests"].as_u64().unwrap() > 0);
    }
    assert!(
        err.contains("ListObjectsV2"),
        "the fallback to V1 is logged once: {err}"
    );
    assert!(
        !std::fs::read_to_string(dir.path().join("r.json"))
            .unwrap()
            .contains("euca/secret")
    );
    let (_, s3c) = clients(&moto).await;
    let listed = s3c.list_buckets().send().await.unwrap();
    let prefix = format!("cs-{}-", r["run_id"].as_str().unwrap());
    assert!(
        !listed
            .buckets()
            .iter()
            .filter_map(|b| b.name())
            .any(|n| n.starts_with(&prefix)),
        "the V1-only S3 still got its buckets emptied and deleted"
    );

    // Instances and volumes through the same paths, in a region moto has subnets in.
    // Every user starts with RunInstances, so a slow machine still gets one in.
    let json2 = dir.path().join("r2.json");
    let compute = dir.path().join("compute.toml");
    std::fs::write(
        &compute,
        r#"
[params]
image_id = "auto"
poll_interval = "200ms"
[[user]]
name = "c"
wait = { constant = 0.2 }
[[user.task]]
sequence = ["ec2:RunInstances", "ec2:instance-running", "ec2:TerminateInstances", "ec2:CreateVolume", "ec2:volume-available", "ec2:DeleteVolume"]
"#,
    )
    .unwrap();
    let out = cloudswarm()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["run", "-f", compute.to_str().unwrap()])
        .args(["-u", "2", "-r", "2", "-t", "6s"])
        .args([
            "--eucarc",
            eucarc.to_str().unwrap(),
            "--region",
            "us-east-1",
        ])
        .args([
            "--state-dir",
            dir.path().to_str().unwrap(),
            "--json",
            json2.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r2 = read_json(&json2);
    assert_eq!(r2["total"]["num_failures"], 0, "{:#}", r2["errors"]);
    assert!(find_entry(&r2, "ec2:RunInstances").is_some(), "{r2:#}");
    assert_eq!(r2["resources"]["leaked"], 0);
    let (i, v, b) = run_leftovers(&moto, r2["run_id"].as_str().unwrap()).await;
    assert!(
        i.is_empty() && v.is_empty() && b.is_empty(),
        "{i:?} {v:?} {b:?}"
    );
}

#[test]
fn a_proxy_error_page_is_reported_by_status_with_an_excerpt() {
    let moto = Moto::start();
    let proxy = services_proxy(&moto);
    let dir = tempfile::tempdir().unwrap();
    let out = cloudswarm()
        .args([
            "run",
            "-f",
            "profiles/smoke.toml",
            "-t",
            "3s",
            "--state-dir",
        ])
        .arg(dir.path())
        .args([
            "--ec2-endpoint",
            &format!("{}/broken/", proxy.url),
            "--s3-endpoint",
            &moto.url,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 502") && err.contains("502 Bad Gateway"),
        "{err}"
    );
    assert!(!err.contains("<html>"), "the excerpt has no markup: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_then_cleanup_leaves_nothing_and_spares_the_rest() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (ec2, s3) = clients(&moto).await;
    // Resources made beforehand, outside cloudswarm.
    let img = ec2.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let theirs = ec2
        .run_instances()
        .image_id(&img)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let their_instance = theirs.instances()[0].instance_id().unwrap().to_string();
    let their_volume = ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(1)
        .send()
        .await
        .unwrap()
        .volume_id()
        .unwrap()
        .to_string();
    s3.create_bucket().bucket("cs-keepme").send().await.unwrap();
    s3.put_object()
        .bucket("cs-keepme")
        .key("k")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    ec2.create_key_pair()
        .key_name("operator-key")
        .send()
        .await
        .unwrap();

    let mut child = cloudswarm()
        .args(["run", "-f", "profiles/lifecycle.toml", "-u", "8", "-r", "8"])
        .args([
            "--ec2-endpoint",
            &moto.url,
            "--s3-endpoint",
            &moto.url,
            "--state-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it create things, then kill it without warning.
    let runs = dir.path().join("runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let run_id = loop {
        if let Some(e) = std::fs::read_dir(&runs).ok().and_then(|mut d| d.next()) {
            let id = e.unwrap().file_name().to_string_lossy().into_owned();
            let j =
                std::fs::read_to_string(runs.join(&id).join("journal.jsonl")).unwrap_or_default();
            // Kill while instances, volumes and buckets are alive at once (a
            // count of creates alone can land between two lifecycles).
            let alive = alive_kinds(&j);
            if j.matches("\"created\"").count() >= 12
                && ["instance", "volume", "bucket"]
                    .iter()
                    .all(|k| alive.contains(*k))
            {
                break id;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run created nothing"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (i, v, b) = run_leftovers(&moto, &run_id).await;
    assert!(
        !i.is_empty() || !v.is_empty() || !b.is_empty(),
        "the kill left nothing to clean up"
    );
    // Resources whose ids never reached the journal (a crash between the answer
    // and the write): only the run's tag or name prefix can find them.
    let tag = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::Volume)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("cloudswarm:run-id")
                .value(&run_id)
                .build(),
        )
        .build();
    let orphan = ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(1)
        .tag_specifications(tag)
        .send()
        .await
        .unwrap()
        .volume_id()
        .unwrap()
        .to_string();
    let orphan_bucket = format!("cs-{run_id}-999999");
    s3.create_bucket()
        .bucket(&orphan_bucket)
        .send()
        .await
        .unwrap();
    for (key, body) in [("k", "x".to_string()), (".cloudswarm-run", run_id.clone())] {
        s3.put_object()
            .bucket(&orphan_bucket)
            .key(key)
            .body(body.into_bytes().into())
            .send()
            .await
            .unwrap();
    }
    // Shaped like the run's, but with no marker and not in the journal: not ours.
    let lookalike = format!("cs-{run_id}-888888");
    s3.create_bucket().bucket(&lookalike).send().await.unwrap();
    let journal = std::fs::read_to_string(runs.join(&run_id).join("journal.jsonl")).unwrap();
    assert!(!journal.contains(&orphan) && !journal.contains(&orphan_bucket));

    let cleanup = |extra: &[&str]| {
        cloudswarm()
            .args(["cleanup", "--run-id", &run_id, "--state-dir"])
            .arg(dir.path())
            .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = cleanup(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing left in the cloud"),
        "{}",
        text(&out)
    );
    let (i, v, b) = run_leftovers(&moto, &run_id).await;
    assert!(
        i.is_empty() && v.is_empty() && b == vec![lookalike.clone()],
        "{i:?} {v:?} {b:?}"
    );
    let run_tag = || {
        aws_sdk_ec2::types::Filter::builder()
            .name("tag:cloudswarm:run-id")
            .values(&run_id)
            .build()
    };
    let addrs = ec2
        .describe_addresses()
        .filters(run_tag())
        .send()
        .await
        .unwrap();
    assert!(addrs.addresses().is_empty(), "{:?}", addrs.addresses());
    let groups = ec2.describe_security_groups().send().await.unwrap();
    let gnames: Vec<&str> = groups
        .security_groups()
        .iter()
        .filter_map(|g| g.group_name())
        .collect();
    assert!(
        !gnames
            .iter()
            .any(|n| n.starts_with(&format!("cs-{run_id}-"))),
        "{gnames:?}"
    );
    assert!(!v.contains(&orphan) && !b.contains(&orphan_bucket));
    let snaps = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(run_tag())
        .send()
        .await
        .unwrap();
    assert!(snaps.snapshots().is_empty(), "{:?}", snaps.snapshots());
    let keys = ec2.describe_key_pairs().send().await.unwrap();
    let names: Vec<&str> = keys
        .key_pairs()
        .iter()
        .filter_map(|k| k.key_name())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(&format!("cs-{run_id}-"))),
        "{names:?}"
    );
    assert!(names.contains(&"operator-key"), "{names:?}");

    // Idempotent: a second clean-up finds nothing and succeeds.
    let again = cleanup(&[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));

    // What was made outside cloudswarm is untouched.
    let st = ec2
        .describe_instances()
        .instance_ids(&their_instance)
        .send()
        .await
        .unwrap();
    assert_eq!(
        st.reservations()[0].instances()[0]
            .state()
            .unwrap()
            .name()
            .unwrap()
            .as_str(),
        "running"
    );
    let vol = ec2
        .describe_volumes()
        .volume_ids(&their_volume)
        .send()
        .await
        .unwrap();
    assert_eq!(vol.volumes()[0].state().unwrap().as_str(), "available");
    let objs = s3
        .list_objects_v2()
        .bucket("cs-keepme")
        .send()
        .await
        .unwrap();
    assert_eq!(objs.key_count(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_caps_hold_under_a_greedy_profile() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("greedy.toml");
    std::fs::write(
        &profile,
        r#"
[params]
object_size = "1MiB"
[[user]]
name = "greedy"
wait = { constant = 0.5 }
[[user.task]]
op = "ec2:RunInstances"
[[user.task]]
op = "ec2:CreateVolume"
[[user.task]]
op = "s3:CreateBucket"
[[user.task]]
op = "s3:PutObject"
"#,
    )
    .unwrap();
    let json = dir.path().join("r.json");
    let out = run_against(
        &moto,
        dir.path(),
        &[
            "-f",
            profile.to_str().unwrap(),
            "-u",
            "6",
            "-r",
            "6",
            // Long enough that every cap is reached on a slow machine too
            // (6 s once made only 4 of the 5 puts that fit 5 MiB).
            "-t",
            "15s",
            "--max-instances",
            "3",
            "--max-volumes",
            "2",
            "--max-buckets",
            "3",
            "--max-bytes",
            "5MiB",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_json(&json);
    let kinds = &r["resources"]["by_kind"];
    assert_eq!(kinds["instances"]["created"], 3, "{kinds:#}");
    assert_eq!(kinds["volumes"]["created"], 2, "{kinds:#}");
    assert_eq!(kinds["buckets"]["created"], 3, "{kinds:#}");
    assert_eq!(kinds["objects"]["created"], 5, "{kinds:#}");
    for op in [
        "ec2:RunInstances",
        "ec2:CreateVolume",
        "s3:CreateBucket",
        "s3:PutObject",
    ] {
        assert!(
            r["capped"][op].as_u64().unwrap() > 0,
            "{op} capped: {:#}",
            r["capped"]
        );
    }
    assert_eq!(r["resources"]["leaked"], 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("budget caps"), "{stdout}");
}

/// A private CA and a server certificate for 127.0.0.1, made with openssl.
fn private_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=cloudswarm test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("srv.pem"), dir.join("srv.key"))
}

#[test]
fn private_tls_needs_the_ca_bundle_or_insecure() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let tls = Nginx::start_tls(
        &cert,
        &key,
        &format!("    location / {{ proxy_pass {}; }}", moto.url),
    );
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        "[[user]]\nname=\"t\"\nwait = { constant = 0.1 }\n[[user.task]]\nsequence = [\"ec2:DescribeAvailabilityZones\", \"s3:PutObject\", \"s3:GetObject\"]\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        cloudswarm()
            .args([
                "run",
                "-f",
                profile.to_str().unwrap(),
                "-u",
                "2",
                "-r",
                "2",
                "-t",
                "3s",
            ])
            .args([
                "--ec2-endpoint",
                &tls.url,
                "--s3-endpoint",
                &tls.url,
                "--state-dir",
            ])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown CA is refused: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach EC2") && err.to_lowercase().contains("certificate"),
        "{err}"
    );

    let out = run(&[
        "--ca-bundle",
        ca.to_str().unwrap(),
        "--sla",
        "failures<1",
        "--sla",
        "requests>=6",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = run(&["--insecure", "--sla", "failures<1", "--sla", "requests>=6"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WARNING: --insecure"),
        "{}",
        text(&out)
    );

    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let out = run(&["--ca-bundle", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.pem"),
        "{}",
        text(&out)
    );
}

fn s3s_fs_bin() -> std::path::PathBuf {
    let p = std::env::var("S3S_FS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| common::root().join(".tools/bin/s3s-fs"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (the test command does)",
        p.display()
    );
    p
}

/// An S3 server that really checks SigV4 signatures (s3s-fs), on a free port.
struct SigV4S3 {
    child: std::process::Child,
    url: String,
    _root: tempfile::TempDir,
}

impl SigV4S3 {
    fn start(access_key: &str, secret: &str) -> SigV4S3 {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = std::process::Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        SigV4S3 {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _root: root,
        }
    }
}

impl Drop for SigV4S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn wrong_credentials_fail_preflight_naming_them_without_the_secret() {
    let s3 = SigV4S3::start("AKIDCLOUDSWARMTEST", "the-right-secret");
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        "[[user]]\nname=\"s\"\nwait = { constant = 0.1 }\n[[user.task]]\nsequence = [\"s3:CreateBucket\", \"s3:PutObject\", \"s3:GetObject\", \"s3:DeleteObject\", \"s3:DeleteBucket\"]\n",
    )
    .unwrap();
    let run = |key: &str, secret: &str| {
        cloudswarm()
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .args([
                "run",
                "-f",
                profile.to_str().unwrap(),
                "-u",
                "2",
                "-r",
                "2",
                "-t",
                "3s",
            ])
            .args(["--s3-endpoint", &s3.url, "--state-dir"])
            .arg(dir.path())
            .args(["--sla", "failures<1", "--sla", "requests>=5"])
            .output()
            .unwrap()
    };
    let out = run("AKIDCLOUDSWARMTEST", "a-wrong-secret");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rejected the credentials"), "{err}");
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    assert!(
        err.contains("AKID…TEST") && err.contains("Environment"),
        "names the key: {err}"
    );
    assert!(
        !err.contains("a-wrong-secret") && !err.contains("AKIDCLOUDSWARMTEST"),
        "{err}"
    );

    let out = run("AKIDSOMEBODYELSE", "the-right-secret");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rejected the credentials"),
        "{}",
        text(&out)
    );

    // The right ones pass preflight and the run itself.
    let out = run("AKIDCLOUDSWARMTEST", "the-right-secret");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_run_and_deletes_what_it_made() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let child = cloudswarm()
        .args(["run", "-f", "profiles/burn-in.toml", "-u", "7", "-r", "7"])
        .args([
            "--ec2-endpoint",
            &moto.url,
            "--s3-endpoint",
            &moto.url,
            "--state-dir",
        ])
        .arg(dir.path())
        .args(["--json", json.to_str().unwrap(), "--stop-timeout", "5s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once it has created something, stop it the way a service manager would.
    let runs = dir.path().join("runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let made = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path().join("journal.jsonl")).ok())
            .is_some_and(|j| j.matches("\"created\"").count() >= 3);
        if made {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run created nothing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stopping (interrupted)"),
        "{}",
        text(&out)
    );
    let r = read_json(&json);
    assert!(r["resources"]["created"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["resources"]["leaked"], 0, "{r:#}");
    let (i, v, b) = run_leftovers(&moto, r["run_id"].as_str().unwrap()).await;
    assert!(
        i.is_empty() && v.is_empty() && b.is_empty(),
        "{i:?} {v:?} {b:?}"
    );
}

/// Kinds with at least one resource created and not deleted, from a journal.
fn alive_kinds(journal: &str) -> std::collections::BTreeSet<String> {
    let mut alive = std::collections::BTreeMap::<String, String>::new();
    for line in journal.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a line cut by the writer
        };
        let (Some(ev), Some(kind), Some(id)) =
            (e["ev"].as_str(), e["kind"].as_str(), e["id"].as_str())
        else {
            continue;
        };
        match ev {
            "created" => {
                alive.insert(id.to_string(), kind.to_string());
            }
            "deleted" => {
                alive.remove(id);
            }
            _ => {}
        }
    }
    alive.into_values().collect()
}

/// A run whose state directory is gone (another machine, a wiped disk) is
/// still found by `cleanup --all-runs` from what it left in the cloud: a
/// bucket holding its marker, a tagged key pair, security group and
/// address. What only looks like cloudswarm's (the `cs-<id>-<n>` shape with
/// no tag and no marker, or a marker naming another run) survives, with its
/// objects, and no journal folder is made for runs that were never ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_runs_finds_runs_by_tag_and_marker_and_spares_lookalikes() {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let moto = Moto::start();
    let (ec2, s3) = clients(&moto).await;
    let bucket_run = "q7runaaa";
    let tag_run = "q7runbbb";
    let tags = |rt: ResourceType, run: &str| {
        TagSpecification::builder()
            .resource_type(rt)
            .tags(Tag::builder().key("cloudswarm:run-id").value(run).build())
            .build()
    };
    let put = |bucket: &str, key: &str, body: &str| {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(body.as_bytes().to_vec().into())
            .send()
    };
    // Run q7runaaa's: a bucket with its marker, a tagged key pair and group.
    let ours = format!("cs-{bucket_run}-1");
    s3.create_bucket().bucket(&ours).send().await.unwrap();
    put(&ours, ".cloudswarm-run", bucket_run).await.unwrap();
    put(&ours, "u1/o1", "x").await.unwrap();
    ec2.create_key_pair()
        .key_name(format!("cs-{bucket_run}-2"))
        .tag_specifications(tags(ResourceType::KeyPair, bucket_run))
        .send()
        .await
        .unwrap();
    ec2.create_security_group()
        .group_name(format!("cs-{bucket_run}-5"))
        .description("cloudswarm run")
        .tag_specifications(tags(ResourceType::SecurityGroup, bucket_run))
        .send()
        .await
        .unwrap();
    // Run q7runbbb's: a tagged address.
    ec2.allocate_address()
        .domain(aws_sdk_ec2::types::DomainType::Vpc)
        .tag_specifications(tags(ResourceType::ElasticIp, tag_run))
        .send()
        .await
        .unwrap();
    // Lookalikes, made by hand: the right shape, no tag, no marker (or a
    // marker that names another run).
    let lookalike_buckets = [
        "cs-research-2024",
        "cs-q7runaaa-3",
        "cs-q7runccc-1",
        "cs-data-2024",
    ];
    for b in lookalike_buckets {
        s3.create_bucket().bucket(b).send().await.unwrap();
        put(b, "precious", "keep me").await.unwrap();
    }
    put("cs-q7runccc-1", ".cloudswarm-run", "q7runddd")
        .await
        .unwrap();
    let lookalike_keys = ["cs-deploy01-1", "cs-q7runaaa-4", "cs-ops-1"];
    for k in lookalike_keys {
        ec2.create_key_pair().key_name(k).send().await.unwrap();
    }
    let webtier = ec2
        .create_security_group()
        .group_name("cs-webtier1-1")
        .description("hand-made")
        .send()
        .await
        .unwrap();
    let webtier = webtier.group_id().unwrap().to_string();

    let state = tempfile::tempdir().unwrap();
    let cleanup = |extra: &[&str]| {
        cloudswarm()
            .args(["cleanup", "--timeout", "1m", "--state-dir"])
            .arg(state.path())
            .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
            .args(extra)
            .output()
            .unwrap()
    };

    // The dry run says what would go and why, and deletes nothing.
    let out = cleanup(&["--all-runs", "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for line in [
        format!("run {bucket_run}: would delete buckets {ours} (marker)"),
        format!("run {bucket_run}: would delete key pairs cs-{bucket_run}-2 (tag)"),
        format!("run {tag_run}: would delete addresses "),
    ] {
        assert!(stdout.contains(&line), "{line}\n{}", text(&out));
    }
    assert!(stdout.contains("security groups sg-"), "{}", text(&out));
    for other in [
        "research",
        "deploy01",
        "webtier1",
        "q7runccc",
        "q7runddd",
        "cs-q7runaaa-3",
        "cs-q7runaaa-4",
        "ops",
    ] {
        assert!(
            !stdout.contains(other),
            "{other} is not ours:\n{}",
            text(&out)
        );
    }
    assert!(
        s3.head_bucket().bucket(&ours).send().await.is_ok(),
        "dry run deleted"
    );

    let out = cleanup(&["--all-runs"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for run in [bucket_run, tag_run] {
        assert!(
            stdout.contains(&format!("run {run}: nothing left in the cloud")),
            "{}",
            text(&out)
        );
    }
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        text(&out)
    );
    // A lookalike's run id given by hand is no proof either.
    for run in ["research", "q7runccc"] {
        let out = cleanup(&["--run-id", run]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("run {run}: deleted nothing")),
            "{}",
            text(&out)
        );
    }
    assert!(
        !state.path().join("runs").exists(),
        "no journal folder for runs with no journal here"
    );

    let buckets: Vec<String> = s3
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect();
    assert!(!buckets.contains(&ours), "{buckets:?}");
    for keep in lookalike_buckets {
        let o = s3.get_object().bucket(keep).key("precious").send().await;
        let body = o.unwrap().body.collect().await.unwrap().into_bytes();
        assert_eq!(&body[..], b"keep me", "{keep} lost its object");
    }
    let keys = ec2.describe_key_pairs().send().await.unwrap();
    let keys: Vec<&str> = keys
        .key_pairs()
        .iter()
        .filter_map(|k| k.key_name())
        .collect();
    assert!(!keys.contains(&"cs-q7runaaa-2"), "{keys:?}");
    for k in lookalike_keys {
        assert!(keys.contains(&k), "{k} was deleted: {keys:?}");
    }
    let groups = ec2.describe_security_groups().send().await.unwrap();
    let groups: Vec<&str> = groups
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id())
        .collect();
    assert!(groups.contains(&webtier.as_str()), "{groups:?}");
    let names = ec2.describe_security_groups().send().await.unwrap();
    assert!(
        !names
            .security_groups()
            .iter()
            .any(|g| g.group_name() == Some("cs-q7runaaa-5")),
        "the tagged group is gone"
    );
    let addrs = ec2.describe_addresses().send().await.unwrap();
    assert!(addrs.addresses().is_empty(), "{:?}", addrs.addresses());
}

/// A journal with a byte that is not UTF-8 in the middle still drives the
/// clean-up: the bad line is reported and skipped, what the other lines and
/// the cloud's tags and markers prove is deleted, and the count at the end
/// is what a fresh listing of the cloud says (nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_byte_in_the_journal_is_skipped_and_the_run_still_cleaned_up() {
    let moto = Moto::start();
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        r#"
[params]
object_size = "1KiB"
[[user]]
name = "mixed"
wait = { constant = 0.5 }
[[user.task]]
sequence = ["s3:CreateBucket", "s3:PutObject", "ec2:CreateKeyPair", "ec2:CreateSecurityGroup", "ec2:AllocateAddress"]
"#,
    )
    .unwrap();
    let out = run_against(
        &moto,
        state.path(),
        &[
            "-f",
            profile.to_str().unwrap(),
            "-u",
            "3",
            "-r",
            "3",
            "-t",
            "4s",
            "--keep-resources",
            "--max-buckets",
            "1000",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let runs: Vec<_> = std::fs::read_dir(state.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    let left = everything_of_run(&moto, run).await;
    for kind in ["key-pair", "security-group", "address", "bucket"] {
        assert!(
            left.iter().any(|l| l.starts_with(kind)),
            "the run left a {kind}: {left:?}"
        );
    }
    // Break the journal: a line of bytes that are not UTF-8 after the first.
    let journal = state.path().join("runs").join(run).join("journal.jsonl");
    let bytes = std::fs::read(&journal).unwrap();
    let first = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut broken = bytes[..first].to_vec();
    broken.extend_from_slice(b"\xff\xfe\x80 garbage\n");
    broken.extend_from_slice(&bytes[first..]);
    std::fs::write(&journal, broken).unwrap();

    let out = cloudswarm()
        .args(["cleanup", "--run-id", run, "--timeout", "2m", "--state-dir"])
        .arg(state.path())
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout.contains("skipped 1 unreadable line(s) (2)"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains(&format!("run {run}: nothing left in the cloud")),
        "{}",
        text(&out)
    );
    let left = everything_of_run(&moto, run).await;
    assert!(left.is_empty(), "{left:?}");
}

/// What the journal holds but the cloud no longer has (deleted by hand, or
/// by an earlier clean-up that could not write its journal) is not counted
/// as deleted by this clean-up; it is only marked gone.
#[test]
fn resources_already_gone_are_not_counted_as_deleted() {
    let moto = Moto::start();
    let state = tempfile::tempdir().unwrap();
    let run = state.path().join("runs").join("q7gone01");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("journal.jsonl"),
        "{\"ev\":\"intent\",\"seq\":1,\"kind\":\"bucket\",\"name\":\"cs-q7gone01-1\"}\n\
         {\"ev\":\"created\",\"seq\":1,\"kind\":\"bucket\",\"id\":\"cs-q7gone01-1\"}\n\
         {\"ev\":\"intent\",\"seq\":2,\"kind\":\"volume\",\"name\":\"cs-q7gone01-2\"}\n\
         {\"ev\":\"created\",\"seq\":2,\"kind\":\"volume\",\"id\":\"vol-0123456789abcdef0\"}\n",
    )
    .unwrap();
    let cleanup = || {
        cloudswarm()
            .args([
                "cleanup",
                "--run-id",
                "q7gone01",
                "--timeout",
                "30s",
                "--state-dir",
            ])
            .arg(state.path())
            .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
            .output()
            .unwrap()
    };
    let out = cleanup();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("run q7gone01: deleted nothing"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("nothing left in the cloud"),
        "{}",
        text(&out)
    );
    // Marked gone in the journal: the next clean-up has nothing to try.
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    assert_eq!(journal.matches("\"deleted\"").count(), 2, "{journal}");
    let again = cleanup();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("deleting"),
        "{}",
        text(&again)
    );
}

/// When the cloud cannot be listed at the end, nobody knows what is left:
/// `cleanup` says so and exits 1, never 0 with a guess.
#[test]
fn cleanup_that_cannot_list_the_cloud_says_unknown_and_exits_1() {
    let state = tempfile::tempdir().unwrap();
    let run = state.path().join("runs").join("q7dead01");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("journal.jsonl"),
        "{\"ev\":\"intent\",\"seq\":1,\"kind\":\"bucket\",\"name\":\"cs-q7dead01-1\"}\n\
         {\"ev\":\"created\",\"seq\":1,\"kind\":\"bucket\",\"id\":\"cs-q7dead01-1\"}\n",
    )
    .unwrap();
    std::fs::write(run.join("run.json"), r#"{"services":["s3"]}"#).unwrap();
    // Nothing listens on this port.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = cloudswarm()
        .args([
            "cleanup",
            "--run-id",
            "q7dead01",
            "--timeout",
            "2s",
            "--state-dir",
        ])
        .arg(state.path())
        .args(["--ec2-endpoint", &dead, "--s3-endpoint", &dead])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("what is left is unknown"), "{all}");
    assert!(
        all.contains("ListBuckets: refused"),
        "only S3 is listed (run.json): {all}"
    );
    assert!(!all.contains("nothing left"), "{all}");
}
