#!/usr/bin/env bash
# cloudswarm bootstrap: installs a cloudswarm release on a stack's instance and converges it to a
# working state, then signals the stack's wait condition (SUCCESS, or FAILURE with a reason).
#   controller: cloudswarm serve (systemd, user cloudswarm), Prometheus scraping it, Grafana with
#               the release's dashboards provisioned. MASTER=1 (the stack has workers): serve is
#               their master on 0.0.0.0:5557, with a worker token derived from the stack's token.
#   worker:     cloudswarm worker (systemd, user cloudswarm, enabled) joining the controller's
#               master on CONTROLLER_ADDRESS:5557 with the same token, endpoints and credentials.
# Idempotent: a second run, or a run with a newer release (an upgrade), ends in the same state; a
# new release is unpacked into /opt/cloudswarm/releases/<version> and /opt/cloudswarm/current is
# switched atomically; the newest few releases are kept.
#
#   bootstrap.sh --env-file /etc/cloudswarm/stack.env --release-tarball FILE    what the user data runs
#   bootstrap.sh --env-file /etc/cloudswarm/stack.env --release-url URL         a manual upgrade
#   bootstrap.sh --root DIR --env-file FILE --release-tarball FILE              render mode (tests)
#
# Render mode (--root DIR other than /) writes every file under DIR and nothing else: no package
# installs, no users, no chown, no systemctl, no network. What it would do instead goes to
# DIR/.render/: owners (path owner:group), systemctl (the commands) and signal.json (the signal).
# --no-start (real mode) writes and enables everything but starts nothing.
#
# The env file holds KEY=VALUE lines, read literally (never sourced): ROLE (controller|worker),
# RELEASE_URL, RELEASE_SHA256, DASHBOARD_TOKEN, EC2_ENDPOINT, S3_ENDPOINT, REGION, CREDENTIALS_URL,
# ACCESS_KEY_ID, SECRET_ACCESS_KEY, PROMETHEUS_TARBALL_URL, GRAFANA_TARBALL_URL, WAIT_HANDLE_URL,
# MASTER (controller: 1 with workers, 0 or absent without), CONTROLLER_ADDRESS (worker). The
# template's user data writes it; see README.md, Deploying with CloudFormation.
set -Eeuo pipefail
umask 022

ROOT=/ ENV_FILE=/etc/cloudswarm/stack.env TARBALL='' RELEASE_URL_ARG='' NO_START=0 KEEP=3
STEP=start REASON='' ERR_LINE='?' VERSION=unknown RENDER=0 INCOMING=''
P_ROLE='' P_RELEASE_URL='' P_RELEASE_SHA256='' P_DASHBOARD_TOKEN='' P_EC2_ENDPOINT='' P_S3_ENDPOINT=''
P_REGION='' P_CREDENTIALS_URL='' P_ACCESS_KEY_ID='' P_SECRET_ACCESS_KEY='' P_PROMETHEUS_TARBALL_URL=''
P_GRAFANA_TARBALL_URL='' P_WAIT_HANDLE_URL='' P_CONTROLLER_ADDRESS='' P_MASTER=''
MASTER_PORT=5557 # the master's port: the template's security group opens it to the workers only

usage() { sed -n '2,/^set -E/p' "$0" | sed '$d'; exit "${1:-0}"; }
log() { echo "bootstrap: $*" >&2; }
die() { REASON="$STEP: $*"; log "error: $*"; exit 1; }
step() { STEP=$1; log "== $1"; }

# --- the wait condition -------------------------------------------------------------------------
signal() { # signal SUCCESS|FAILURE REASON
  local reason body
  reason=${2//[$'\n\t']/ } && reason=${reason//[\"\\]/} && reason=${reason:0:250} # JSON-safe
  body=$(printf '{"Status":"%s","Reason":"%s","UniqueId":"cloudswarm-%s","Data":"%s"}' \
    "$1" "$reason" "${P_ROLE:-unknown}" "$VERSION")
  [ -n "$P_WAIT_HANDLE_URL" ] || { log "signal $1 (no wait handle): $reason"; return 0; }
  if [ "$RENDER" = 1 ]; then
    mkdir -p "$ROOT/.render" && printf '%s\n' "$body" >"$ROOT/.render/signal.json"
    return 0
  fi
  log "signal $1: $reason"
  curl -fsS --retry 5 --retry-delay 3 -X PUT -H 'Content-Type:' --data-binary "$body" \
    "$P_WAIT_HANDLE_URL" >/dev/null ||
    log "warning: could not signal the wait condition (it expires once signalled; harmless on a re-run)"
}
on_exit() {
  local rc=$?
  [ -z "$INCOMING" ] || rm -rf "$INCOMING"
  [ "$rc" = 0 ] && return 0
  [ -n "$REASON" ] || REASON="$STEP: failed at bootstrap.sh line $ERR_LINE (exit $rc)"
  signal FAILURE "$REASON" || true
  exit "$rc"
}
trap 'ERR_LINE=$LINENO' ERR
trap on_exit EXIT

# --- arguments and parameters -------------------------------------------------------------------
while [ $# -gt 0 ]; do
  case $1 in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --env-file) ENV_FILE=${2:?--env-file needs a file}; shift 2 ;;
    --release-tarball) TARBALL=${2:?--release-tarball needs a file}; shift 2 ;;
    --release-url) RELEASE_URL_ARG=${2:?--release-url needs a URL}; shift 2 ;;
    --no-start) NO_START=1; shift ;;
    --keep) KEEP=${2:?--keep needs a number}; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "bootstrap: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
[[ $KEEP =~ ^[1-9][0-9]*$ ]] || { echo "bootstrap: --keep needs a number >= 1" >&2; exit 2; }
if [ "$ROOT" != / ]; then
  RENDER=1 NO_START=1
  mkdir -p "$ROOT" && ROOT=$(cd "$ROOT" && pwd)
  rm -rf "$ROOT/.render" && mkdir -p "$ROOT/.render"
  : >"$ROOT/.render/owners" && : >"$ROOT/.render/systemctl"
else
  ROOT=
fi

read_params() {
  local line key
  [ -r "$ENV_FILE" ] || die "cannot read the parameters file $ENV_FILE"
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in '' | '#'*) continue ;; esac
    key=${line%%=*}
    case $key in
      ROLE | RELEASE_URL | RELEASE_SHA256 | DASHBOARD_TOKEN | EC2_ENDPOINT | S3_ENDPOINT | REGION | \
        CREDENTIALS_URL | ACCESS_KEY_ID | SECRET_ACCESS_KEY | PROMETHEUS_TARBALL_URL | \
        GRAFANA_TARBALL_URL | WAIT_HANDLE_URL | CONTROLLER_ADDRESS | MASTER)
        printf -v "P_$key" '%s' "${line#*=}" ;;
      *) log "warning: ignoring unknown parameter $key in $ENV_FILE" ;;
    esac
  done <"$ENV_FILE"
}
# Values end up in systemd environment files and configs: allow only what cannot break them.
valid_url() { [[ $1 =~ ^https?://[^[:space:]\"\'\\]+$ ]]; }
check_params() {
  case $P_ROLE in controller | worker) ;; *) die "ROLE must be controller or worker, not '$P_ROLE'" ;; esac
  [[ $P_DASHBOARD_TOKEN =~ ^[A-Za-z0-9._~+/=-]{16,}$ ]] ||
    die "DASHBOARD_TOKEN must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / = -"
  local k
  for k in EC2_ENDPOINT S3_ENDPOINT PROMETHEUS_TARBALL_URL GRAFANA_TARBALL_URL; do
    local v="P_$k"
    [ -z "${!v}" ] || valid_url "${!v}" || die "$k is not an http(s) URL without spaces or quotes"
  done
  [[ $P_REGION =~ ^[A-Za-z0-9._-]*$ ]] || die "REGION may only hold letters, digits, . _ -"
  [ -z "$P_CREDENTIALS_URL" ] || [[ $P_CREDENTIALS_URL == https://* ]] || die "CREDENTIALS_URL must be https://"
  [[ $P_ACCESS_KEY_ID =~ ^[A-Za-z0-9]*$ && $P_SECRET_ACCESS_KEY =~ ^[A-Za-z0-9/+=]*$ ]] ||
    die "ACCESS_KEY_ID or SECRET_ACCESS_KEY has characters keys never have"
  [[ -n $P_ACCESS_KEY_ID && -z $P_SECRET_ACCESS_KEY || -z $P_ACCESS_KEY_ID && -n $P_SECRET_ACCESS_KEY ]] &&
    die "give both ACCESS_KEY_ID and SECRET_ACCESS_KEY, or neither"
  [[ $P_RELEASE_SHA256 =~ ^([0-9a-f]{64})?$ ]] || die "RELEASE_SHA256 must be 64 lowercase hex digits"
  case $P_MASTER in '' | 0 | 1) ;; *) die "MASTER must be 1 or 0, not '$P_MASTER'" ;; esac
  if [ "$P_ROLE" = worker ]; then
    [[ $P_CONTROLLER_ADDRESS =~ ^[A-Za-z0-9.:-]+$ ]] || die "a worker needs CONTROLLER_ADDRESS"
    [ "$P_MASTER" != 1 ] || die "MASTER=1 is for the controller, not a worker"
  else
    [ -n "$P_GRAFANA_TARBALL_URL" ] || die "GRAFANA_TARBALL_URL is empty"
  fi
}

# --- file helpers: every write is a rename of a complete file, owners recorded in render mode ---
own() { # own OWNER:GROUP PATH REAL_PATH: chown, or in render mode record "PATH OWNER:GROUP"
  if [ "$RENDER" = 1 ]; then echo "$2 $1" >>"$ROOT/.render/owners"; else chown "$1" "$3"; fi
}
put() { # put PATH MODE OWNER:GROUP, content on stdin
  local dest=$ROOT$1 tmp
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.XXXXXX") # 0600 until complete
  cat >"$tmp"
  chmod "$2" "$tmp"
  own "$3" "$1" "$tmp"
  mv -f "$tmp" "$dest"
}
dir() { # dir PATH MODE OWNER:GROUP
  mkdir -p "$ROOT$1"
  chmod "$2" "$ROOT$1"
  own "$3" "$1" "$ROOT$1"
}
switch_link() { # switch_link TARGET LINK: atomic replacement of a symlink
  ln -sfn "$1" "$ROOT$2.new"
  mv -Tf "$ROOT$2.new" "$ROOT$2"
}
run_systemctl() {
  if [ "$RENDER" = 1 ]; then echo "systemctl $*" >>"$ROOT/.render/systemctl"; else systemctl "$@"; fi
}
fetch() { # fetch URL DEST
  curl -fsSL --retry 5 --retry-delay 5 --connect-timeout 20 -o "$2.part" "$1" || die "cannot download $1"
  mv -f "$2.part" "$2"
}
pkg_install() {
  if command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  elif command -v dnf >/dev/null; then dnf install -y -q "$@"
  elif command -v yum >/dev/null; then yum install -y -q "$@"
  else die "no apt-get, dnf or yum to install $*"; fi
}
ensure_user() { # ensure_user NAME HOME
  [ "$RENDER" = 1 ] && return 0
  id -u "$1" >/dev/null 2>&1 && return 0
  local nologin
  nologin=$(command -v nologin || echo /bin/false)
  useradd --system --user-group --home-dir "$2" --no-create-home --shell "$nologin" "$1"
}

# --- the release --------------------------------------------------------------------------------
install_release() {
  step "install the release"
  # Without --release-tarball: --release-url, else the stack's RELEASE_URL (a plain re-run).
  local explicit_url=$RELEASE_URL_ARG
  [ -n "$TARBALL" ] || [ -n "$RELEASE_URL_ARG" ] || RELEASE_URL_ARG=$P_RELEASE_URL
  if [ -z "$TARBALL" ] && [ -n "$RELEASE_URL_ARG" ]; then
    [ "$RENDER" = 0 ] || die "--release-url needs the network; give --release-tarball in render mode"
    mkdir -p /var/cache/cloudswarm
    TARBALL=/var/cache/cloudswarm/release.tar.gz
    fetch "$RELEASE_URL_ARG" "$TARBALL"
  fi
  [ -n "$TARBALL" ] || die "give --release-tarball FILE or --release-url URL"
  [ -f "$TARBALL" ] || die "release tarball $TARBALL not found"
  # RELEASE_SHA256 pins the stack's release; an explicit --release-url is the operator's choice.
  if [ -n "$P_RELEASE_SHA256" ] && [ -z "$explicit_url" ]; then
    echo "$P_RELEASE_SHA256  $TARBALL" | sha256sum -c --status - ||
      die "the release tarball does not match ReleaseSha256"
  fi
  local tops top
  tops=$(tar -tzf "$TARBALL" 2>/dev/null | cut -d/ -f1 | sort -u) || die "the release is not a readable .tar.gz"
  top=$tops
  [[ $top =~ ^cloudswarm-[0-9A-Za-z._+-]+$ ]] ||
    die "the release must hold a single top directory cloudswarm-<version>/"
  VERSION=${top#cloudswarm-}
  local releases=$ROOT/opt/cloudswarm/releases
  dir /opt/cloudswarm 0755 root:root
  dir /opt/cloudswarm/releases 0755 root:root
  rm -rf "$releases"/.incoming.*
  INCOMING=$(mktemp -d "$releases/.incoming.XXXXXX")
  tar -xzf "$TARBALL" -C "$INCOMING" --no-same-owner --no-same-permissions || die "cannot unpack the release"
  local new=$INCOMING/$top f
  for f in bin/cloudswarm static profiles cloudformation/bootstrap.sh; do
    [ -e "$new/$f" ] || die "the release has no $f"
  done
  [ -d "$new/grafana/dashboards" ] || log "warning: the release has no grafana/dashboards; Grafana will show none"
  [ -x "$new/bin/cloudswarm" ] || die "bin/cloudswarm in the release is not executable"
  chmod -R u=rwX,go=rX "$new" && chmod 0755 "$new/bin/cloudswarm" "$new/cloudformation/bootstrap.sh"
  # Replace the same version in place (a re-run) with two renames; then switch `current`.
  [ ! -e "$releases/$VERSION" ] || mv "$releases/$VERSION" "$INCOMING/old"
  mv "$new" "$releases/$VERSION"
  rm -rf "$INCOMING" && INCOMING=
  switch_link "releases/$VERSION" /opt/cloudswarm/current
  # Keep the newest $KEEP releases, in install order (.history), never the current one.
  local history=$releases/.history v
  { grep -vx -- "$VERSION" "$history" 2>/dev/null || true; echo "$VERSION"; } >"$history.new"
  mv -f "$history.new" "$history"
  while [ "$(wc -l <"$history")" -gt "$KEEP" ]; do
    v=$(head -n 1 "$history")
    log "pruning release $v"
    rm -rf "${releases:?}/$v"
    sed -i 1d "$history"
  done
  for v in "$releases"/*; do # releases not in the history (installed by hand) go too
    grep -qx -- "$(basename "$v")" "$history" || rm -rf "$v"
  done
  log "release $VERSION is current"
}

# --- cloudswarm: user, environment, credentials, units ------------------------------------------
configure_cloudswarm() {
  step "configure cloudswarm"
  ensure_user cloudswarm /var/lib/cloudswarm
  dir /etc/cloudswarm 0755 root:root
  dir /var/lib/cloudswarm 0750 cloudswarm:cloudswarm
  local creds=/etc/cloudswarm/credentials body
  if [ -n "$P_CREDENTIALS_URL" ]; then
    if [ "$RENDER" = 1 ]; then
      body=$'[default]\n# render mode: the file downloaded from CredentialsUrl goes here'
    else
      body=$(curl -fsS --proto =https --retry 5 --retry-delay 5 "$P_CREDENTIALS_URL") ||
        die "cannot download CredentialsUrl"
      grep -q aws_access_key_id <<<"$body" ||
        die "CredentialsUrl is not an AWS credentials file (no aws_access_key_id)"
    fi
    printf '%s\n' "$body" | put $creds 0600 cloudswarm:cloudswarm
  elif [ -n "$P_ACCESS_KEY_ID" ]; then
    printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
      "$P_ACCESS_KEY_ID" "$P_SECRET_ACCESS_KEY" | put $creds 0600 cloudswarm:cloudswarm
  else
    rm -f "$ROOT$creds" # the instance role
  fi
  # Tokens stay in this 0600 file, never on a command line. The controller gets the dashboard's
  # token (DASHBOARD_TOKEN). The master (controller with workers) and the workers share a worker
  # token derived from it, sha256("cloudswarm-worker:" + DASHBOARD_TOKEN) in hex: Locust's protocol
  # sends it in clear, so what crosses the network cannot log into the dashboard. Workers get no
  # dashboard token: they never call the dashboard.
  local worker_token
  worker_token=$(printf 'cloudswarm-worker:%s' "$P_DASHBOARD_TOKEN" | sha256sum | cut -d' ' -f1)
  {
    echo "# Written by cloudformation/bootstrap.sh from the stack's parameters; read by systemd."
    [ "$P_ROLE" != controller ] || echo "CLOUDSWARM_TOKEN=$P_DASHBOARD_TOKEN"
    [ "$P_ROLE" = controller ] && [ "$P_MASTER" != 1 ] || echo "CLOUDSWARM_WORKER_TOKEN=$worker_token"
    echo "CLOUDSWARM_STATE_DIR=/var/lib/cloudswarm"
    [ -z "$P_REGION" ] || echo "AWS_REGION=$P_REGION"
    [ -z "$P_EC2_ENDPOINT" ] || echo "AWS_ENDPOINT_URL_EC2=$P_EC2_ENDPOINT"
    [ -z "$P_S3_ENDPOINT" ] || echo "AWS_ENDPOINT_URL_S3=$P_S3_ENDPOINT"
    [ ! -e "$ROOT$creds" ] || echo "AWS_SHARED_CREDENTIALS_FILE=$creds"
  } | put /etc/cloudswarm/cloudswarm.env 0600 root:root

  # One unit per role, alike but for ExecStart: user cloudswarm, the env file above (token,
  # endpoints, region, credentials file), state in /var/lib/cloudswarm, the same hardening, and a
  # restart 5 s after any exit (a worker quits after 60 s without its master and comes back).
  local unit description exec_start
  if [ "$P_ROLE" = controller ]; then
    unit=cloudswarm.service
    description="cloudswarm load tester (web dashboard on :8089)"
    exec_start="/opt/cloudswarm/current/bin/cloudswarm serve --bind 0.0.0.0:8089 --profiles-dir /opt/cloudswarm/current/profiles --static-dir /opt/cloudswarm/current/static --state-dir /var/lib/cloudswarm"
    if [ "$P_MASTER" = 1 ]; then # the dashboard drives the stack's workers instead of a local engine
      description="cloudswarm load tester (web dashboard on :8089, master of the workers on :$MASTER_PORT)"
      exec_start+=" --master --master-bind-host 0.0.0.0 --master-bind-port $MASTER_PORT"
    fi
  else
    unit=cloudswarm-worker.service
    description="cloudswarm worker (joins the master on $P_CONTROLLER_ADDRESS:$MASTER_PORT)"
    # No -f: the master sends the profile with each run.
    exec_start="/opt/cloudswarm/current/bin/cloudswarm worker --master-host $P_CONTROLLER_ADDRESS --master-port $MASTER_PORT --state-dir /var/lib/cloudswarm"
  fi
  put "/etc/systemd/system/$unit" 0644 root:root <<EOF
# $description; written by cloudformation/bootstrap.sh.
[Unit]
Description=$description
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=cloudswarm
Group=cloudswarm
WorkingDirectory=/opt/cloudswarm/current
EnvironmentFile=/etc/cloudswarm/cloudswarm.env
ExecStart=$exec_start
Restart=always
RestartSec=5
LimitNOFILE=65536
NoNewPrivileges=true
PrivateTmp=true
ProtectHome=true
ProtectSystem=full

[Install]
WantedBy=multi-user.target
EOF
}

# --- Prometheus and Grafana (controller) --------------------------------------------------------
install_tarball() { # install_tarball NAME URL: unpack into /opt/NAME/<tarball name>, switch current
  local name=$1 url=$2 base tmp
  base=$(basename "${url%%\?*}")
  base=${base%.tar.gz} && base=${base%.tgz}
  [[ $base =~ ^[A-Za-z0-9._+-]+$ ]] || die "cannot name the $name install after $url"
  dir "/opt/$name" 0755 root:root
  if [ "$RENDER" = 0 ] && [ ! -d "/opt/$name/$base" ]; then
    log "downloading $url"
    tmp=$(mktemp -d "/opt/$name/.incoming.XXXXXX")
    fetch "$url" "$tmp/download.tar.gz"
    mkdir "$tmp/unpacked"
    tar -xzf "$tmp/download.tar.gz" -C "$tmp/unpacked" --strip-components=1 --no-same-owner ||
      die "cannot unpack $url"
    mv "$tmp/unpacked" "/opt/$name/$base" && rm -rf "$tmp"
  fi
  switch_link "$base" "/opt/$name/current"
  local old
  for old in "$ROOT/opt/$name"/*; do # earlier versions and failed downloads
    case $(basename "$old") in current | "$base") ;; *) rm -rf "$old" ;; esac
  done
  rm -rf "$ROOT/opt/$name"/.incoming.*
}

configure_prometheus() {
  step "configure Prometheus"
  local bin=/opt/prometheus/current/prometheus
  if [ -n "$P_PROMETHEUS_TARBALL_URL" ]; then
    install_tarball prometheus "$P_PROMETHEUS_TARBALL_URL"
  else
    bin=/usr/bin/prometheus
    [ "$RENDER" = 1 ] || [ -x $bin ] || pkg_install prometheus
    [ "$RENDER" = 1 ] || [ -x $bin ] || die "the distribution's prometheus package has no $bin"
  fi
  ensure_user prometheus /var/lib/prometheus
  dir /etc/prometheus 0755 root:root
  dir /var/lib/prometheus 0750 prometheus:prometheus
  printf '%s' "$P_DASHBOARD_TOKEN" | put /etc/cloudswarm/prometheus-token 0640 root:prometheus
  put /etc/prometheus/prometheus.yml 0644 root:root <<'EOF'
# Written by cloudformation/bootstrap.sh: scrape cloudswarm's /metrics (bearer token) and Prometheus.
global:
  scrape_interval: 5s
  evaluation_interval: 15s
scrape_configs:
  - job_name: cloudswarm
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: /etc/cloudswarm/prometheus-token
    static_configs:
      - targets: ['127.0.0.1:8089']
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.0.1:9090']
EOF
  # Named prometheus.service so it replaces a distribution unit of the same name.
  put /etc/systemd/system/prometheus.service 0644 root:root <<EOF
# Prometheus for cloudswarm; written by cloudformation/bootstrap.sh.
[Unit]
Description=Prometheus (scrapes cloudswarm on 127.0.0.1:8089)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=prometheus
Group=prometheus
ExecStart=$bin --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/var/lib/prometheus/data --storage.tsdb.retention.time=15d --storage.tsdb.retention.size=4GB --web.listen-address=:9090
ExecReload=/bin/kill -HUP \$MAINPID
Restart=always
RestartSec=5
NoNewPrivileges=true
PrivateTmp=true
ProtectHome=true
ProtectSystem=full

[Install]
WantedBy=multi-user.target
EOF
}

configure_grafana() {
  step "configure Grafana"
  install_tarball grafana "$P_GRAFANA_TARBALL_URL"
  ensure_user grafana /var/lib/grafana
  dir /etc/grafana 0755 root:root
  dir /var/lib/grafana 0750 grafana:grafana
  dir /var/lib/grafana/plugins 0750 grafana:grafana
  dir /var/log/grafana 0750 grafana:grafana
  printf '%s' "$P_DASHBOARD_TOKEN" | put /etc/grafana/admin-password 0640 root:grafana
  put /etc/grafana/grafana.ini 0640 root:grafana <<'EOF'
; Written by cloudformation/bootstrap.sh. The admin password (DashboardToken) applies when Grafana
; first creates its database; change it later in Grafana itself.
[paths]
data = /var/lib/grafana
logs = /var/log/grafana
plugins = /var/lib/grafana/plugins
provisioning = /etc/grafana/provisioning

[server]
http_port = 3000

[security]
admin_user = admin
admin_password = $__file{/etc/grafana/admin-password}
disable_gravatar = true

[users]
allow_sign_up = false

[auth.anonymous]
enabled = false

[analytics]
reporting_enabled = false
check_for_updates = false
check_for_plugin_updates = false

[log]
mode = console
EOF
  dir /etc/grafana/provisioning 0755 root:root
  dir /etc/grafana/provisioning/datasources 0755 root:root
  dir /etc/grafana/provisioning/dashboards 0755 root:root
  # The release's datasource (its uid is what the release's dashboards refer to), or a default.
  local ds=$ROOT/opt/cloudswarm/current/grafana/provisioning/datasources/prometheus.yml
  if [ -f "$ds" ]; then
    put /etc/grafana/provisioning/datasources/cloudswarm.yml 0644 root:root <"$ds"
  else
    put /etc/grafana/provisioning/datasources/cloudswarm.yml 0644 root:root <<'EOF'
# Written by cloudformation/bootstrap.sh (the release has no grafana/provisioning/datasources/prometheus.yml).
apiVersion: 1
datasources:
  - name: Prometheus
    type: prometheus
    uid: prometheus
    access: proxy
    url: http://127.0.0.1:9090
    isDefault: true
    editable: false
EOF
  fi
  # Our own provider: its path is where this deployment keeps the dashboards (the current release).
  put /etc/grafana/provisioning/dashboards/cloudswarm.yml 0644 root:root <<'EOF'
# Written by cloudformation/bootstrap.sh: the dashboards of the current cloudswarm release.
apiVersion: 1
providers:
  - name: cloudswarm
    folder: cloudswarm
    type: file
    disableDeletion: true
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: /opt/cloudswarm/current/grafana/dashboards
EOF
  put /etc/systemd/system/grafana-server.service 0644 root:root <<'EOF'
# Grafana for cloudswarm; written by cloudformation/bootstrap.sh.
[Unit]
Description=Grafana (cloudswarm dashboards, Prometheus on 127.0.0.1:9090)
Wants=network-online.target
After=network-online.target prometheus.service

[Service]
Type=simple
User=grafana
Group=grafana
WorkingDirectory=/opt/grafana/current
ExecStart=/opt/grafana/current/bin/grafana server --homepath /opt/grafana/current --config /etc/grafana/grafana.ini
Restart=always
RestartSec=5
LimitNOFILE=10000
NoNewPrivileges=true
PrivateTmp=true
ProtectHome=true
ProtectSystem=full

[Install]
WantedBy=multi-user.target
EOF
}

# --- services -----------------------------------------------------------------------------------
wait_http() { # wait_http NAME URL [bearer]: up to 3 minutes for a 2xx (Grafana migrates its database at first start)
  local _
  for _ in $(seq 1 90); do
    if [ "${3:-}" = bearer ]; then
      printf 'header = "Authorization: Bearer %s"\n' "$P_DASHBOARD_TOKEN" |
        curl -K - -fsS -o /dev/null --max-time 5 "$2" 2>/dev/null && return 0
    else
      curl -fsS -o /dev/null --max-time 5 "$2" 2>/dev/null && return 0
    fi
    sleep 2
  done
  die "$1 does not answer on $2 (journalctl -u $1)"
}
start_services() {
  step "start services"
  run_systemctl daemon-reload
  local units=(cloudswarm.service prometheus.service grafana-server.service)
  [ "$P_ROLE" = controller ] || units=(cloudswarm-worker.service)
  run_systemctl enable "${units[@]}"
  if [ "$NO_START" = 1 ]; then
    log "--no-start: not starting ${units[*]}"
    return 0
  fi
  run_systemctl restart "${units[@]}"
  if [ "$P_ROLE" = worker ]; then
    # Nothing to wait for: the worker joins its master whenever the master is up (a worker has no
    # wait condition to signal). Only a unit that dies at once is an error.
    sleep 3
    systemctl is-active --quiet cloudswarm-worker.service ||
      die "cloudswarm-worker does not stay up (journalctl -u cloudswarm-worker)"
    return 0
  fi
  wait_http cloudswarm http://127.0.0.1:8089/ bearer
  wait_http prometheus http://127.0.0.1:9090/-/ready
  wait_http grafana-server http://127.0.0.1:3000/api/health
}

# --- main ---------------------------------------------------------------------------------------
step "read parameters"
read_params
check_params
if [ "$RENDER" = 0 ]; then
  [ "$(id -u)" = 0 ] || die "run as root (or give --root DIR for render mode)"
  [ "$(uname -m)" = x86_64 ] || die "the release is linux-x86_64; this machine is $(uname -m)"
  command -v systemctl >/dev/null || die "this image has no systemd"
  for c in curl tar gzip; do command -v $c >/dev/null || pkg_install $c; done
fi
install_release
configure_cloudswarm
if [ "$P_ROLE" = controller ]; then
  configure_prometheus
  configure_grafana
fi
start_services
step "done"
signal SUCCESS "cloudswarm $VERSION is running ($P_ROLE)"
log "cloudswarm $VERSION ready ($P_ROLE)"
