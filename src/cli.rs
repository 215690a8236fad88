//! Command line: `cloudswarm serve` (the dashboard, the default), `run`
//! (headless swarm), `runs` and `compare` (kept runs), `check` (validate
//! profiles), `cleanup`, `ops`, `worker` (under a master), `locustfile`. Maps errors to exit codes: 2 for usage and
//! configuration problems, the run's own code otherwise.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::error::ConfigError;
use crate::ops::Op;
use crate::profile;
use crate::run::{self, RunArgs};

#[derive(Parser, Debug)]
#[command(
    name = "cloudswarm",
    version,
    about = "Load-test EC2- and S3-compatible clouds, Locust-style"
)]
pub struct Cli {
    /// What to do (default: serve the dashboard on 127.0.0.1:8089)
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the web dashboard (the default command)
    Serve(Box<crate::web::ServeArgs>),
    /// Run a swarm headless and print a summary (exit 0 ok, 1 SLA failed or regressed, 2 bad input)
    Run(Box<RunArgs>),
    /// List the runs kept in the state directory
    Runs(crate::results::RunsArgs),
    /// Compare two runs (ids or JSON reports); a gate with --max-regression (exit 0 ok, 1 regressed, 2 bad input)
    Compare(Box<crate::results::CompareArgs>),
    /// Validate profile files
    Check {
        /// Profile files (TOML)
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete what runs left behind (from their journals and the cloud's tags and names)
    Cleanup(Box<crate::reclaim::CleanupArgs>),
    /// List the ops a profile can use
    Ops,
    /// Run as a worker of a master (a stock Locust master or cloudswarm's) on Locust's protocol
    Worker(Box<crate::cluster::worker::WorkerArgs>),
    /// Print a locustfile with the profile's user classes, for a stock Locust master
    Locustfile {
        /// Profile file (TOML)
        profile: PathBuf,
    },
}

fn check(files: &[PathBuf]) -> i32 {
    let mut code = 0;
    for f in files {
        match profile::load(f) {
            Ok(p) => {
                // The profile's SLAs too (their grammar lives with the outputs).
                let slas = match crate::output::sla::for_run(&p, f, &[]) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = 2;
                        continue;
                    }
                };
                let tasks: usize = p.users.iter().map(|u| u.tasks.len()).sum();
                println!(
                    "{}: ok ({} user class(es), {} task(s){})",
                    f.display(),
                    p.users.len(),
                    tasks,
                    if slas.is_empty() {
                        String::new()
                    } else {
                        format!(", {} SLA(s)", slas.len())
                    }
                );
            }
            Err(e) => {
                eprintln!("error: {e}");
                code = 2;
            }
        }
    }
    code
}

/// Runs an async command on a fresh runtime; maps errors to exit codes.
fn block_on(fut: impl std::future::Future<Output = anyhow::Result<i32>>) -> i32 {
    // On one core a single-threaded runtime does the same work with less
    // cross-thread waking; CLOUDSWARM_WORKERS overrides the core count.
    let workers = std::env::var("CLOUDSWARM_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let built = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 2;
        }
    };
    match rt.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                2
            } else {
                1
            }
        }
    }
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDSWARM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = match cli.command {
        Some(c) => c,
        None => match Cli::try_parse_from(["cloudswarm", "serve"]) {
            Ok(Cli {
                command: Some(c), ..
            }) => c,
            _ => return 2,
        },
    };
    match command {
        Command::Serve(args) => block_on(crate::web::serve(*args)),
        Command::Check { files } => check(&files),
        Command::Ops => {
            for op in Op::all() {
                println!("{}", op.name());
            }
            0
        }
        Command::Run(args) => block_on(run::run(*args)),
        Command::Runs(args) => crate::results::runs(&args),
        Command::Compare(args) => match crate::results::compare(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                if e.downcast_ref::<ConfigError>().is_some() {
                    2
                } else {
                    1
                }
            }
        },
        Command::Cleanup(args) => block_on(crate::reclaim::cleanup(*args)),
        Command::Worker(args) => block_on(crate::cluster::worker::worker(*args)),
        Command::Locustfile { profile } => match profile::load(&profile) {
            Ok(p) => {
                print!(
                    "{}",
                    crate::cluster::locustfile::render(&p, &profile.display().to_string())
                );
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
    }
}
