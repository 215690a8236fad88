//! The web dashboard (`cloudswarm serve`, the default command): axum serves
//! the page (askama templates), the assets in `static/`, the Locust-style
//! HTTP API and the kept runs (`runs.rs`); an access token guards it when
//! it is exposed.

mod api;
mod auth;
mod pages;
mod runs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;

use crate::error::config_err;
use crate::session::Limits;
use crate::target::TargetArgs;

pub use api::App;

/// Flags of `cloudswarm serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to serve on; anything but loopback needs --token
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub bind: SocketAddr,
    /// Access token for every page and API call (login form, or `Authorization: Bearer TOKEN`)
    #[arg(long, env = "CLOUDSWARM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the profiles offered in the form live (default: ./profiles, or next to the binary)
    #[arg(long, env = "CLOUDSWARM_PROFILES")]
    pub profiles_dir: Option<PathBuf>,
    /// Where the page's assets live (default: ./static, or next to the binary)
    #[arg(long, env = "CLOUDSWARM_STATIC")]
    pub static_dir: Option<PathBuf>,
    #[command(flatten)]
    pub limits: Limits,
    /// Keep at most N runs in the state directory: the oldest are deleted when a run starts (0: keep all)
    #[arg(long, default_value_t = crate::output::kept::DEFAULT_KEEP_RUNS, value_name = "N")]
    pub keep_runs: usize,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub master: crate::cluster::master::MasterArgs,
}

/// `given`, else `name` in the working directory, else next to the binary
/// (a release's `bin/../name`, or a build's `target/debug/../../name`).
fn find_dir(given: Option<&Path>, name: &str) -> Result<PathBuf> {
    if let Some(d) = given {
        if d.is_dir() {
            return Ok(d.to_path_buf());
        }
        return Err(config_err(format!(
            "--{name}-dir {}: not a directory",
            d.display()
        )));
    }
    let mut tries = vec![PathBuf::from(name)];
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(3) {
            tries.push(up.join(name));
        }
    }
    tries.into_iter().find(|d| d.is_dir()).ok_or_else(|| {
        config_err(format!(
            "cannot find the `{name}` directory: run from the cloudswarm folder or pass --{name}-dir"
        ))
    })
}

/// Checks the bind address against the token: exposing the dashboard
/// beyond loopback needs a token of at least 16 characters.
pub fn check_exposure(bind: &SocketAddr, token: Option<&str>) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    match token {
        Some("") => Err(config_err("--token is empty")),
        Some(t) if !t.chars().all(allowed) => Err(config_err(
            "--token: use only letters, digits and - . _ ~ + / = (e.g. `openssl rand -hex 16`)",
        )),
        Some(t) if !bind.ip().is_loopback() && t.chars().count() < 16 => Err(config_err(
            "--token: use at least 16 characters when the dashboard is reachable from other machines",
        )),
        None if !bind.ip().is_loopback() => Err(config_err(format!(
            "refusing to serve on {bind} without an access token: anyone who reaches it could start load and see the target. \
             Pass --token TOKEN (or set CLOUDSWARM_TOKEN), or bind to 127.0.0.1"
        ))),
        _ => Ok(()),
    }
}

/// Longest path under `/static/` looked up: no asset's is near it, and a
/// longer one would make the file system answer "name too long" (a 500).
const MAX_ASSET_PATH: usize = 256;

/// Answers 404 for an asset path too long to name any file.
async fn short_asset_paths(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.uri().path().len() > MAX_ASSET_PATH {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    }
    next.run(req).await
}

/// The router: pages, API and assets, behind the token check.
pub fn router(app: Arc<App>) -> Router {
    let assets = Router::new()
        .fallback_service(tower_http::services::ServeDir::new(app.static_dir.clone()))
        .layer(axum::middleware::from_fn(short_asset_paths));
    Router::new()
        .route("/", get(pages::index))
        .route("/report", get(pages::report))
        .route("/stats/report", get(pages::report))
        .route("/swarm", post(api::swarm))
        .route("/stop", get(api::stop).post(api::stop))
        .route("/stats/reset", get(api::reset).post(api::reset))
        .route("/stats/requests", get(api::requests))
        .route("/workers", get(api::workers))
        .route("/stats/history", get(api::history))
        .route("/stats/requests/csv", get(api::stats_csv))
        .route("/stats/sla/csv", get(api::sla_csv))
        .route("/stats/failures/csv", get(api::failures_csv))
        .route("/stats/history/csv", get(api::history_csv))
        .route("/stats/requests_full_history/csv", get(api::history_csv))
        .route("/report.json", get(api::report_json))
        .route("/runs.json", get(runs::list))
        .route("/runs/{id}/{file}", get(runs::file))
        .route("/compare.json", get(runs::compare_runs))
        .route("/cleanup", post(api::cleanup))
        .route("/profiles", get(api::profiles))
        .route("/metrics", get(api::metrics))
        .route("/login", get(auth::login_page).post(auth::login))
        .nest_service("/static", assets)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::guard,
        ))
        .with_state(app)
}

/// Serves the dashboard until Ctrl-C or SIGTERM, then stops the swarm and
/// cleans up what it made.
pub async fn serve(args: ServeArgs) -> Result<i32> {
    crate::signals::take_over();
    check_exposure(&args.bind, args.token.as_deref())?;
    let profiles_dir = find_dir(args.profiles_dir.as_deref(), "profiles")?;
    crate::metrics::install();
    let static_dir = find_dir(args.static_dir.as_deref(), "static")?;
    let clients = args
        .target
        .clients()
        .await
        .map_err(|e| config_err(e.to_string()))?;
    // Count Ctrl-C / SIGTERM from now on (a signal during start-up is not lost).
    let (signals_tx, mut signals) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            crate::signals::shutdown().await;
            signals_tx.send_modify(|n| *n += 1);
        }
    });
    let master = if args.master.master {
        for w in args.master.warnings() {
            eprintln!("{w}");
        }
        let m = crate::cluster::master::Master::bind(args.master.config()).await?;
        eprintln!(
            "master on {}: runs started here go to the workers that joined (cloudswarm worker --master-host HOST --master-port {})",
            m.endpoint(),
            args.master.master_bind_port
        );
        Some(m)
    } else {
        None
    };
    let mut app = App::new(
        clients,
        args.limits.clone(),
        args.token.clone(),
        args.bind.port(),
        profiles_dir,
        static_dir,
        master,
    );
    app.keep_runs = args.keep_runs;
    let app = Arc::new(app);
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| config_err(format!("cannot listen on {}: {e}", args.bind)))?;
    let addr = listener.local_addr().context("listener address")?;
    let info = &app.clients.info;
    eprintln!(
        "cloudswarm dashboard on http://{addr}/ — target EC2 {} / S3 {} (region {}){}",
        info.ec2_endpoint,
        info.s3_endpoint,
        info.region,
        if app.token.is_some() {
            "; access token required"
        } else {
            ""
        }
    );
    // Serve until the first signal, and during the clean-up after it (the
    // page shows its progress); then close the connections.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(crate::httpd::serve(listener, router(app.clone()), async {
        let _ = stop_rx.await;
    }));
    let mut first = signals.clone();
    tokio::select! {
        _ = first.wait_for(|n| *n >= 1) => {}
        ended = &mut server => {
            // It stops only when told to: this is a bug. Still clean up.
            eprintln!("the dashboard's server stopped ({ended:?}): stopping the swarm and cleaning up");
            app.shutdown().await;
            return Ok(1);
        }
    }
    let second = async move {
        let _ = signals.wait_for(|n| *n >= 2).await;
    };
    tokio::pin!(second);
    eprintln!("shutting down: stopping the swarm and cleaning up");
    tokio::select! {
        _ = app.shutdown() => {}
        _ = &mut second => {
            eprintln!("interrupted again: leaving the rest to `cloudswarm cleanup`");
            return Ok(1);
        }
    }
    let _ = stop_tx.send(());
    tokio::select! {
        _ = server => {}
        _ = &mut second => {}
    }
    Ok(0)
}
