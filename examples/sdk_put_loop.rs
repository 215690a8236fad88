//! The benchmark's peer: a bare aws-sdk-s3 loop putting 1 KiB objects with
//! CONCURRENCY tasks for SECONDS, the way a hand-written client would.
//! usage: sdk_put_loop ENDPOINT CONCURRENCY SECONDS
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;

fn main() {
    // The same runtime choice cloudswarm makes: one thread on one core.
    let one_core = std::thread::available_parallelism().map_or(1, |n| n.get()) == 1;
    let rt = if one_core {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    rt.expect("runtime").block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: sdk_put_loop ENDPOINT CONCURRENCY SECONDS");
        std::process::exit(2);
    }
    let endpoint = args[1].clone();
    let conc: usize = args[2].parse().expect("concurrency");
    let secs: f64 = args[3].parse().expect("seconds");
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(conf);
    let body = bytes::Bytes::from(vec![b'x'; 1024]);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..conc {
        let (s3, body, ok, failed) = (s3.clone(), body.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let r = s3
                    .put_object()
                    .bucket("bench")
                    .key(format!("t{t}/o{i}"))
                    .body(ByteStream::from(body.clone()))
                    .send()
                    .await;
                match r {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let el = t0.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    println!(
        "requests={n} failures={} seconds={el:.2} rps={:.1}",
        failed.load(Ordering::Relaxed),
        n as f64 / el
    );
}
