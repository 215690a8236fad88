#!/usr/bin/env bash
# Checks the CloudFormation deployment (cloudformation/, issue 6):
#   1. cfn-lint on every template in cloudformation/ (installed from PyPI into the project venv
#      when missing); errors and warnings fail, except the two rules ignored below.
#   2. The templates against Eucalyptus 4.x (resource types from
#      cloudformation/eucalyptus-resource-types.txt, sections, parameter types, functions, pseudo
#      parameters, LaunchConfiguration properties) and against our rules: no ingress open to
#      0.0.0.0/0 or ::/0 by default, the master port 5557 open only to the worker security group
#      (and the workers reaching nothing else), secrets NoEcho, IAM resources conditional, the wait
#      handle in the controller's user data, MASTER in the controller's user data exactly when
#      WorkerCount > 0, the workers' SpotPrice only from a non-blank WorkerSpotPrice, user data
#      under 16 KB, every parameter and output in a README table, both create-stack commands there.
#   3. cloudformation/bootstrap.sh in render mode on releases built by scripts/release.sh from a
#      stand-in binary: units, configs, secret modes and owners, the `current` symlink, a second run
#      leaving an identical tree, upgrades switching only `current`, pruning, a failed upgrade
#      signalling FAILURE and keeping the running release, credentials variants; the controller
#      with workers (serve --master on 0.0.0.0:5557, the worker token in its 0600 env file) and
#      without (neither); the worker role (an enabled `cloudswarm worker --master-host CONTROLLER
#      --master-port 5557` unit with the token only in its 0600 env file and the controller's
#      endpoints and credentials); the template's user data for all three.
#   4. When a built target/debug/cloudswarm exists: `serve` and `worker` take the flags and the
#      CLOUDSWARM_WORKER_TOKEN variable the units use, and `worker` needs no -f.
# Prints each check; exits non-zero on any failure.
#   scripts/check-cloudformation.sh
#   CFN_README=OTHER.md scripts/check-cloudformation.sh   (another README to read)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CLOUDSWARM_VENV:-$PWD/.venv}
export CFN_README=${CFN_README:-README.md}

if [ ! -x "$VENV/bin/python" ]; then
  echo "check-cloudformation: creating venv $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/cfn-lint" --version >/dev/null 2>&1; then
  echo "check-cloudformation: pip install cfn-lint"
  "$VENV/bin/pip" install -q --disable-pip-version-check cfn-lint
fi
TEMPLATES=(cloudformation/*.json)

echo "== cfn-lint ($("$VENV/bin/cfn-lint" --version)) on ${TEMPLATES[*]}: errors and warnings fail"
# Ignored, because the fix is something Eucalyptus 4.x does not support:
#   W2506  "ImageId should be of type AWS::EC2::Image::Id": Eucalyptus 4.x templates know only
#          String, Number and CommaDelimitedList parameters.
#   W3697  "AWS::AutoScaling::LaunchConfiguration is in maintenance mode": Eucalyptus 4.x has no
#          AWS::EC2::LaunchTemplate (Eucalyptus 5 adds it).
# Informational rules (such as I1022 "prefer Fn::Sub", which Eucalyptus 4.x lacks) are not run.
"$VENV/bin/cfn-lint" --non-zero-exit-code warning --ignore-checks W2506 W3697 -- "${TEMPLATES[@]}"
echo "ok: cfn-lint"

echo "== shell syntax of cloudformation/bootstrap.sh and scripts/release.sh"
bash -n cloudformation/bootstrap.sh && bash -n scripts/release.sh
if command -v shellcheck >/dev/null; then
  shellcheck cloudformation/bootstrap.sh scripts/release.sh scripts/check-cloudformation.sh
  echo "ok: bash -n, shellcheck"
else
  echo "ok: bash -n (shellcheck not installed, skipped)"
fi

echo "== templates: Eucalyptus 4.x compatibility, security rules, documentation in $CFN_README"
"$VENV/bin/python" - "${TEMPLATES[@]}" <<'PY'
import json, os, re, sys

# What Eucalyptus 4.x's template parser accepts (eucalyptus/eucalyptus,
# clc/modules/cloudformation/.../template/TemplateParser.java and IntrinsicFunctions.java).
EUCA_SECTIONS = {"AWSTemplateFormatVersion", "Description", "Parameters", "Mappings", "Conditions",
                 "Resources", "Outputs"}
EUCA_PARAM_TYPES = {"String", "Number", "CommaDelimitedList"}
EUCA_FUNCTIONS = {"Ref", "Condition", "Fn::If", "Fn::Equals", "Fn::And", "Fn::Or", "Fn::Not",
                  "Fn::Base64", "Fn::FindInMap", "Fn::GetAtt", "Fn::GetAZs", "Fn::Join", "Fn::Select"}
EUCA_PSEUDO = {"AWS::AccountId", "AWS::NotificationARNs", "AWS::NoValue", "AWS::Region",
               "AWS::StackId", "AWS::StackName"}
SECRET = re.compile(r"token|secret|password|passwd|credential|key", re.I)
NOT_SECRET = {"KeyName"}  # the name of a key pair, not a key
OPEN = {"0.0.0.0/0", "::/0"}
USERDATA_LIMIT = 16384
# Properties Eucalyptus 4.x reads from an AWS::AutoScaling::LaunchConfiguration (eucalyptus/eucalyptus,
# .../cloudformation/resources/standard/propertytypes/AWSAutoScalingLaunchConfigurationProperties);
# it skips any other property silently. Its CloudFormation passes SpotPrice to CreateLaunchConfiguration,
# which its Auto Scaling service does not store (it has no spot instances): workers launch on-demand.
EUCA_LC_PROPS = {"AssociatePublicIpAddress", "BlockDeviceMappings", "EbsOptimized", "IamInstanceProfile",
                 "ImageId", "InstanceId", "InstanceMonitoring", "InstanceType", "KernelId", "KeyName",
                 "RamDiskId", "SecurityGroups", "SpotPrice", "UserData"}
MASTER_PORT = 5557

failures = []
def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)

types = {l.strip() for l in open("cloudformation/eucalyptus-resource-types.txt")
         if l.strip() and not l.startswith("#")}
readme_path = os.environ["CFN_README"]
readme = open(readme_path).read()
for cmd in ("aws cloudformation create-stack", "euform-create-stack"):
    if cmd not in readme:
        fail(f"{readme_path} does not show `{cmd}`")

def walk(node, path="$"):
    """Yields (path, key, value) for every single-key function object in the template."""
    if isinstance(node, dict):
        if len(node) == 1:
            (k, v), = node.items()
            if k == "Ref" or k == "Condition" or k.startswith("Fn::"):
                yield path, k, v
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")

def documented(name):
    return re.search(r"^\|\s*`?" + re.escape(name) + r"`?\s*\|", readme, re.M) is not None

for path in sys.argv[1:]:
    with open(path) as f:
        t = json.load(f)
    params, res, outs = t.get("Parameters", {}), t.get("Resources", {}), t.get("Outputs", {})
    n = len(failures)

    for s in t:
        if s not in EUCA_SECTIONS:
            fail(f"{path}: top-level section {s} is unknown to Eucalyptus 4.x")
    for name, p in params.items():
        if p.get("Type") not in EUCA_PARAM_TYPES:
            fail(f"{path}: parameter {name} has type {p.get('Type')}, not one Eucalyptus 4.x knows")
        if SECRET.search(name) and name not in NOT_SECRET and str(p.get("NoEcho", "")).lower() != "true":
            fail(f"{path}: parameter {name} looks secret but is not NoEcho")
        if not documented(name):
            fail(f"{path}: parameter {name} is not in a table of {readme_path}")
    for name in outs:
        if not documented(name):
            fail(f"{path}: output {name} is not in a table of {readme_path}")
    for where, fn, arg in walk(t):
        if fn not in EUCA_FUNCTIONS:
            fail(f"{path}: {where} uses {fn}, which Eucalyptus 4.x lacks")
        if fn == "Ref" and isinstance(arg, str) and arg.startswith("AWS::") and arg not in EUCA_PSEUDO:
            fail(f"{path}: {where} uses pseudo parameter {arg}, which Eucalyptus 4.x lacks")

    def check_cidr(where, value):
        if isinstance(value, str):
            if value in OPEN:
                fail(f"{path}: {where} is open to {value}")
        elif isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in params:
            p = params[value["Ref"]]
            if p.get("Default") in OPEN or "Default" in p and not p["Default"]:
                fail(f"{path}: {where} defaults to {p.get('Default')!r}; give no default")
            pattern = p.get("AllowedPattern")
            if not pattern or any(re.fullmatch(pattern, o) for o in OPEN):
                fail(f"{path}: {where}: parameter {value['Ref']} accepts an open CIDR")
        else:
            fail(f"{path}: {where}: cannot verify the CIDR {value!r}")
    for name, r in res.items():
        rtype, props = r.get("Type"), r.get("Properties", {})
        if rtype not in types:
            fail(f"{path}: resource {name} has type {rtype}, not in eucalyptus-resource-types.txt")
        rules = []
        if rtype == "AWS::EC2::SecurityGroup":
            rules = [(f"{name}.SecurityGroupIngress[{i}]", rule)
                     for i, rule in enumerate(props.get("SecurityGroupIngress", []))]
        elif rtype == "AWS::EC2::SecurityGroupIngress":
            rules = [(name, props)]
        for where, rule in rules:
            for key in ("CidrIp", "CidrIpv6"):
                if key in rule:
                    check_cidr(f"{where}.{key}", rule[key])
        if rtype == "AWS::AutoScaling::LaunchConfiguration":
            for prop in set(props) - EUCA_LC_PROPS:
                fail(f"{path}: {name}.{prop} is not a LaunchConfiguration property Eucalyptus 4.x reads")
        if rtype.startswith("AWS::IAM::") and "Condition" not in r:
            fail(f"{path}: IAM resource {name} has no Condition (clouds without IAM need to skip it)")
        ud = props.get("UserData")
        if ud is not None:
            parts = ud.get("Fn::Base64", {}).get("Fn::Join", ["", []])[1]
            size = sum(len(x) if isinstance(x, str) else 1024 for x in parts)  # 1 KiB per value
            if size > USERDATA_LIMIT:
                fail(f"{path}: {name}'s user data may reach {size} bytes (> {USERDATA_LIMIT})")
            else:
                print(f"ok: {name} user data at most {size} bytes")
        if rtype == "AWS::CloudFormation::WaitCondition":
            handle = props.get("Handle", {}).get("Ref")
            if res.get(handle, {}).get("Type") != "AWS::CloudFormation::WaitConditionHandle":
                fail(f"{path}: wait condition {name} has no WaitConditionHandle")
            elif not any(fn == "Ref" and arg == handle for _, fn, arg in walk(
                    [x.get("Properties", {}).get("UserData") for x in res.values()])):
                fail(f"{path}: no user data carries the wait handle {handle}")
    if os.path.basename(path) == "cloudswarm.json":
        for p in ("ImageId", "InstanceType", "KeyName", "OperatorCidr", "WorkerCount", "WorkerSpotPrice",
                  "Ec2Endpoint", "S3Endpoint", "Region", "ReleaseUrl", "DashboardToken", "CredentialsUrl",
                  "CreateIamRole", "GrafanaTarballUrl"):
            if p not in params:
                fail(f"{path}: parameter {p} is missing")
        for o in ("WebPortalUrl", "GrafanaURL", "PrometheusURL"):
            if o not in outs:
                fail(f"{path}: output {o} is missing")
        if params.get("WorkerCount", {}).get("Default") != "0":
            fail(f"{path}: WorkerCount must default to 0")
        if params.get("DashboardToken", {}).get("MinLength", 0) < 16:
            fail(f"{path}: DashboardToken needs MinLength 16")
        if params.get("CredentialsUrl", {}).get("AllowedPattern") != "^$|^https://.*":
            fail(f"{path}: CredentialsUrl must be checked by AllowedPattern ^$|^https://.*")
        conds = t.get("Conditions", {})

        # The master port: one rule, on the controller's group, from the worker group; the workers
        # reach nothing else on the controller (they never call the dashboard).
        m = len(failures)
        def ref(v):  # the logical id a Ref or Fn::GetAtt names
            if isinstance(v, dict):
                return v.get("Ref") or (v.get("Fn::GetAtt") or [None])[0]
            return v
        ingress = []  # (where, the group it opens, rule)
        for name, r in res.items():
            if r.get("Type") == "AWS::EC2::SecurityGroup":
                ingress += [(f"{name}.SecurityGroupIngress[{i}]", name, rule)
                            for i, rule in enumerate(r.get("Properties", {}).get("SecurityGroupIngress", []))]
            elif r.get("Type") == "AWS::EC2::SecurityGroupIngress":
                pr = r.get("Properties", {})
                ingress.append((name, ref(pr.get("GroupName", pr.get("GroupId"))), pr))
        def source(rule):
            return ref(rule.get("SourceSecurityGroupName", rule.get("SourceSecurityGroupId")))
        def covers(rule, port):
            if str(rule.get("IpProtocol")) in ("-1", "all"):
                return True
            try:
                return int(rule["FromPort"]) <= port <= int(rule["ToPort"])
            except (KeyError, TypeError, ValueError):
                return True  # cannot tell: count it
        master = [(w, g, rule) for w, g, rule in ingress if covers(rule, MASTER_PORT)]
        if [(g, source(rule), str(rule.get("IpProtocol")), rule.get("FromPort"), rule.get("ToPort"))
                for _, g, rule in master] != [("ControllerSecurityGroup", "WorkerSecurityGroup", "tcp",
                                               MASTER_PORT, MASTER_PORT)] or \
                any(k in rule for _, _, rule in master for k in ("CidrIp", "CidrIpv6")):
            fail(f"{path}: port {MASTER_PORT} must be opened exactly once, on ControllerSecurityGroup, to "
                 f"SourceSecurityGroup WorkerSecurityGroup only: {[w for w, _, _ in master]}")
        for w, g, rule in ingress:
            if source(rule) == "WorkerSecurityGroup" and not (
                    rule.get("FromPort") == MASTER_PORT == rule.get("ToPort") and str(rule.get("IpProtocol")) == "tcp"):
                fail(f"{path}: {w} lets the workers reach more than the master port {MASTER_PORT}/tcp")
        if not failures[m:]:
            print(f"ok: port {MASTER_PORT} is open to WorkerSecurityGroup only, and the workers reach nothing else")
        m = len(failures)

        # MASTER=1 in the controller's user data exactly when WorkerCount > 0; never in the workers'.
        def userdata(resource):
            return res.get(resource, {}).get("Properties", {}).get("UserData", {}).get(
                "Fn::Base64", {}).get("Fn::Join", ["", []])[1]
        cud, wud = userdata("Controller"), userdata("WorkerLaunchConfig")
        at = [i for i, x in enumerate(cud) if isinstance(x, str) and x.endswith("\nMASTER=")]
        value = cud[at[0] + 1] if len(at) == 1 and at[0] + 1 < len(cud) else None
        cond = value.get("Fn::If", [None])[0] if isinstance(value, dict) else None
        if not (isinstance(value, dict) and value.get("Fn::If", [None, 0, 0])[1:] == ["1", "0"] and
                conds.get(cond) == {"Fn::Not": [{"Fn::Equals": [{"Ref": "WorkerCount"}, "0"]}]}):
            fail(f"{path}: the controller's user data must say MASTER= Fn::If [a condition WorkerCount != 0, 1, 0]: {value}")
        if any(isinstance(x, str) and "MASTER=" in x for x in wud):
            fail(f"{path}: the workers' user data must not say MASTER=")
        at = [i for i, x in enumerate(wud) if isinstance(x, str) and x.endswith("\nCONTROLLER_ADDRESS=")]
        if not (len(at) == 1 and wud[at[0] + 1] == {"Fn::GetAtt": ["Controller", "PrivateIp"]}):
            fail(f"{path}: the workers' user data must say CONTROLLER_ADDRESS= the controller's PrivateIp")
        # Spot: only the workers, only when WorkerSpotPrice is not blank (default blank: on-demand).
        sp = params.get("WorkerSpotPrice", {})
        lc = res.get("WorkerLaunchConfig", {}).get("Properties", {})
        spot = lc.get("SpotPrice")
        cond = spot.get("Fn::If", [None])[0] if isinstance(spot, dict) else None
        if not (isinstance(spot, dict) and spot.get("Fn::If", [0, 0, 0])[1:] == [{"Ref": "WorkerSpotPrice"}, {"Ref": "AWS::NoValue"}]
                and conds.get(cond) == {"Fn::Not": [{"Fn::Equals": [{"Ref": "WorkerSpotPrice"}, ""]}]}):
            fail(f"{path}: WorkerLaunchConfig.SpotPrice must be Fn::If [WorkerSpotPrice not blank, Ref WorkerSpotPrice, AWS::NoValue]: {spot}")
        if sp.get("Default") != "" or sp.get("Type") != "String":
            fail(f"{path}: WorkerSpotPrice must be a String defaulting to blank (on-demand)")
        pattern = sp.get("AllowedPattern", "")
        if not (all(re.fullmatch(pattern, v) for v in ("", "0.05", "1", "0.0123")) and
                not any(re.fullmatch(pattern, v) for v in ("abc", "-1", "0.05 ", "$1"))):
            fail(f"{path}: WorkerSpotPrice's AllowedPattern {pattern!r} must take blank or a price, nothing else")
        for name, r in res.items():
            if name != "WorkerLaunchConfig" and "SpotPrice" in r.get("Properties", {}):
                fail(f"{path}: only the workers may be spot instances, not {name}")
        if not failures[m:]:
            print("ok: MASTER in the controller's user data iff WorkerCount > 0; workers' SpotPrice only from a "
                  "non-blank WorkerSpotPrice")
    if len(failures) == n:
        print(f"ok: {path}: {len(res)} resources of Eucalyptus-supported types, {len(params)} parameters "
              f"and {len(outs)} outputs documented, no open ingress, secrets NoEcho")
sys.exit(1 if failures else 0)
PY

echo "== bootstrap.sh in render mode (releases built by scripts/release.sh from a stand-in binary)"
"$VENV/bin/python" - <<'PY'
import email, hashlib, json, os, shutil, stat, subprocess, sys, tempfile
import yaml  # PyYAML comes with cfn-lint

# A stand-in binary: packaging the real debug build (hundreds of MB) would take most of a minute.
TOKEN = "check-token-0123456789abcdef"
# The worker token the master and the workers share: derived from the stack's token, because
# Locust's protocol sends it in clear (README.md, Workers).
WTOKEN = hashlib.sha256(b"cloudswarm-worker:" + TOKEN.encode()).hexdigest()
failures = []
def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL: " + msg)
    return cond

work = tempfile.mkdtemp(prefix="cfn-check-")
try:
    stand_in = os.path.join(work, "cloudswarm")
    with open(stand_in, "w") as f:
        f.write("#!/bin/sh\necho \"cloudswarm stand-in $*\"\n")
    os.chmod(stand_in, 0o755)
    dist = os.path.join(work, "dist")
    def release(version):
        env = dict(os.environ, CLOUDSWARM_BIN=stand_in, CLOUDSWARM_VERSION=version, CLOUDSWARM_DIST=dist)
        out = subprocess.run(["scripts/release.sh"], env=env, check=True, capture_output=True, text=True)
        return out.stdout.strip()
    tarballs = {v: release(v) for v in ("0.0.1", "0.0.2", "0.0.3", "0.0.4")}
    name = os.path.basename(tarballs["0.0.1"])
    check(name == "cloudswarm-0.0.1-linux-x86_64.tar.gz", f"release.sh made {name}")
    sha = open(tarballs["0.0.1"] + ".sha256").read().split()[0]
    check(sha == hashlib.sha256(open(tarballs["0.0.1"], "rb").read()).hexdigest(), ".sha256 is right")
    check(release("0.0.1") == tarballs["0.0.1"] and
          open(tarballs["0.0.1"] + ".sha256").read().split()[0] == sha, "release.sh is reproducible")
    print("ok: scripts/release.sh built 4 releases (reproducible, with .sha256)")

    PARAMS = dict(ROLE="controller", RELEASE_URL="https://releases.example/cloudswarm.tar.gz",
                  RELEASE_SHA256="", DASHBOARD_TOKEN=TOKEN, EC2_ENDPOINT="http://ec2.euca.example:8773/",
                  S3_ENDPOINT="http://s3.euca.example:8773/", REGION="eucalyptus", CREDENTIALS_URL="",
                  ACCESS_KEY_ID="AKIDCHECK", SECRET_ACCESS_KEY="secret/CHECK+key=",
                  PROMETHEUS_TARBALL_URL="https://mirror.example/prometheus-2.53.4.linux-amd64.tar.gz",
                  GRAFANA_TARBALL_URL="https://mirror.example/grafana-11.6.0.linux-amd64.tar.gz",
                  WAIT_HANDLE_URL="https://cfn.example/waitcondition?signature=abc")
    def bootstrap(root, tarball, **overrides):
        params = dict(PARAMS, **overrides)
        env_file = os.path.join(work, "stack.env")
        with open(env_file, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in params.items() if v is not None)
        return subprocess.run(["cloudformation/bootstrap.sh", "--root", root, "--env-file", env_file,
                               "--release-tarball", tarball], capture_output=True, text=True)
    def manifest(root):
        m = {}
        for d, dirs, files in os.walk(root):
            for n in dirs + files:
                p = os.path.join(d, n)
                st = os.lstat(p)
                rel = os.path.relpath(p, root)
                if stat.S_ISLNK(st.st_mode):
                    m[rel] = ("link", os.readlink(p))
                elif stat.S_ISDIR(st.st_mode):
                    m[rel] = ("dir", oct(st.st_mode & 0o7777))
                else:
                    m[rel] = ("file", oct(st.st_mode & 0o7777), hashlib.sha256(open(p, "rb").read()).hexdigest())
        return m
    def read(root, p):
        with open(os.path.join(root, p.lstrip("/"))) as f:
            return f.read()
    def mode(root, p):
        return stat.S_IMODE(os.lstat(os.path.join(root, p.lstrip("/"))).st_mode)
    def service(root, unit):
        keys = {}
        for line in read(root, "/etc/systemd/system/" + unit).splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                keys[k] = v
        return keys
    def signal(root):
        p = os.path.join(root, ".render/signal.json")
        return json.load(open(p)) if os.path.exists(p) else None

    # First install of a controller.
    root = os.path.join(work, "controller")
    r = bootstrap(root, tarballs["0.0.1"])
    if not check(r.returncode == 0, f"bootstrap failed:\n{r.stderr}"):
        sys.exit(1)
    cs = service(root, "cloudswarm.service")
    check(cs.get("ExecStart", "").startswith("/opt/cloudswarm/current/bin/cloudswarm serve --bind 0.0.0.0:8089"),
          "cloudswarm.service runs `cloudswarm serve --bind 0.0.0.0:8089`")
    for flag in ("--profiles-dir /opt/cloudswarm/current/profiles", "--static-dir /opt/cloudswarm/current/static",
                 "--state-dir /var/lib/cloudswarm"):
        check(flag in cs.get("ExecStart", ""), f"cloudswarm.service passes {flag}")
    check(cs.get("User") == "cloudswarm" and cs.get("Group") == "cloudswarm", "cloudswarm.service runs as cloudswarm")
    check(cs.get("EnvironmentFile") == "/etc/cloudswarm/cloudswarm.env", "cloudswarm.service reads the env file")
    check(cs.get("WorkingDirectory") == "/opt/cloudswarm/current", "cloudswarm.service works in current/")
    check(TOKEN not in read(root, "/etc/systemd/system/cloudswarm.service"), "the token is not in the unit")
    check("--master" not in cs.get("ExecStart", ""), "without workers (no MASTER) serve is not a master")
    pr = service(root, "prometheus.service")
    check(pr.get("User") == "prometheus", "prometheus.service runs as prometheus")
    check(pr.get("ExecStart", "").startswith("/opt/prometheus/current/prometheus --config.file=/etc/prometheus/prometheus.yml"),
          "prometheus.service runs the installed Prometheus on /etc/prometheus/prometheus.yml")
    gr = service(root, "grafana-server.service")
    check(gr.get("User") == "grafana", "grafana-server.service runs as grafana")
    check(gr.get("ExecStart") == "/opt/grafana/current/bin/grafana server --homepath /opt/grafana/current --config /etc/grafana/grafana.ini",
          "grafana-server.service runs `grafana server` on /etc/grafana/grafana.ini")
    for unit, keys in (("cloudswarm", cs), ("prometheus", pr), ("grafana-server", gr)):
        check(keys.get("Restart") == "always", f"{unit}.service restarts always")
        check(keys.get("WantedBy") == "multi-user.target", f"{unit}.service is wanted at boot")
    print("ok: units (ExecStart, User, EnvironmentFile, Restart)")

    prom = yaml.safe_load(read(root, "/etc/prometheus/prometheus.yml"))
    job = [j for j in prom["scrape_configs"] if j["job_name"] == "cloudswarm"]
    check(len(job) == 1, "prometheus.yml has a cloudswarm job")
    job = job[0] if job else {}
    check(job.get("static_configs") == [{"targets": ["127.0.0.1:8089"]}], "Prometheus scrapes 127.0.0.1:8089")
    check(job.get("metrics_path", "/metrics") == "/metrics", "Prometheus scrapes /metrics")
    check(job.get("authorization") == {"type": "Bearer", "credentials_file": "/etc/cloudswarm/prometheus-token"},
          "Prometheus sends the bearer token from /etc/cloudswarm/prometheus-token")
    ds = yaml.safe_load(read(root, "/etc/grafana/provisioning/datasources/cloudswarm.yml"))
    check([d.get("url") for d in ds["datasources"]] == ["http://127.0.0.1:9090"] and
          ds["datasources"][0].get("type") == "prometheus", "Grafana's datasource is Prometheus on 127.0.0.1:9090")
    dp = yaml.safe_load(read(root, "/etc/grafana/provisioning/dashboards/cloudswarm.yml"))
    check(dp["providers"][0]["options"]["path"] == "/opt/cloudswarm/current/grafana/dashboards",
          "Grafana provisions the dashboards of the current release")
    ini = read(root, "/etc/grafana/grafana.ini")
    check("provisioning = /etc/grafana/provisioning" in ini, "grafana.ini points at the provisioning dir")
    check("admin_password = $__file{/etc/grafana/admin-password}" in ini and TOKEN not in ini,
          "grafana.ini takes the admin password from a file")
    if os.path.exists("grafana/dashboards/cloudswarm.json"):
        check(os.path.isfile(os.path.join(root, "opt/cloudswarm/current/grafana/dashboards/cloudswarm.json")),
              "the release's dashboard is where Grafana's provider looks")
    else:
        print("note: grafana/dashboards/cloudswarm.json is not in the repository yet")
    env = read(root, "/etc/cloudswarm/cloudswarm.env").splitlines()
    for line in (f"CLOUDSWARM_TOKEN={TOKEN}", "CLOUDSWARM_STATE_DIR=/var/lib/cloudswarm", "AWS_REGION=eucalyptus",
                 "AWS_ENDPOINT_URL_EC2=http://ec2.euca.example:8773/", "AWS_ENDPOINT_URL_S3=http://s3.euca.example:8773/",
                 "AWS_SHARED_CREDENTIALS_FILE=/etc/cloudswarm/credentials"):
        check(line in env, f"cloudswarm.env has {line.split('=')[0]}")
    check(not [l for l in env if l.startswith("CLOUDSWARM_WORKER_TOKEN=")],
          "without workers the controller's env has no CLOUDSWARM_WORKER_TOKEN")
    check("aws_secret_access_key = secret/CHECK+key=" in read(root, "/etc/cloudswarm/credentials"),
          "the access keys are in the credentials file")
    check(read(root, "/etc/cloudswarm/prometheus-token") == TOKEN, "prometheus-token holds the token")
    print("ok: configs (Prometheus scrape with bearer credentials file, Grafana provisioning, env, credentials)")

    owners = dict(l.split() for l in read(root, "/.render/owners").splitlines())
    for path, want_mode, want_owner in (
            ("/etc/cloudswarm/cloudswarm.env", 0o600, "root:root"),
            ("/etc/cloudswarm/credentials", 0o600, "cloudswarm:cloudswarm"),
            ("/etc/cloudswarm/prometheus-token", 0o640, "root:prometheus"),
            ("/etc/grafana/admin-password", 0o640, "root:grafana"),
            ("/etc/grafana/grafana.ini", 0o640, "root:grafana"),
            ("/var/lib/cloudswarm", 0o750, "cloudswarm:cloudswarm"),
            ("/var/lib/prometheus", 0o750, "prometheus:prometheus"),
            ("/var/lib/grafana", 0o750, "grafana:grafana")):
        check(mode(root, path) == want_mode, f"{path} has mode {oct(mode(root, path))}, not {oct(want_mode)}")
        check(owners.get(path) == want_owner, f"{path} is owned by {owners.get(path)}, not {want_owner}")
    for p, entry in manifest(root).items():
        if entry[0] == "file" and int(entry[1], 8) & 0o004:
            check(TOKEN not in read(root, p) and "secret/CHECK" not in read(root, p),
                  f"{p} is world-readable and holds a secret")
    print("ok: secrets 0600/0640 with the right owners; no world-readable file holds one")

    check(os.readlink(os.path.join(root, "opt/cloudswarm/current")) == "releases/0.0.1", "current -> releases/0.0.1")
    check(os.access(os.path.join(root, "opt/cloudswarm/current/bin/cloudswarm"), os.X_OK), "current/bin/cloudswarm runs")
    sysctl = read(root, "/.render/systemctl")
    check("systemctl enable cloudswarm.service prometheus.service grafana-server.service" in sysctl,
          "the controller enables cloudswarm, prometheus and grafana-server")
    check((signal(root) or {}).get("Status") == "SUCCESS", "the controller signals SUCCESS")
    print("ok: current -> releases/0.0.1, services enabled, SUCCESS signalled")

    # Idempotency: a second run leaves an identical tree.
    first = manifest(root)
    r = bootstrap(root, tarballs["0.0.1"])
    check(r.returncode == 0, f"second run failed:\n{r.stderr}")
    second = manifest(root)
    diff = sorted(set(first.items()) ^ set(second.items()))
    check(not diff, f"the second run changed the tree: {diff[:5]}")
    print(f"ok: a second run leaves an identical tree ({len(first)} paths)")

    # Upgrade: only the new release, `current`, the release history and the signal change.
    r = bootstrap(root, tarballs["0.0.2"])
    check(r.returncode == 0, f"upgrade failed:\n{r.stderr}")
    third = manifest(root)
    changed = {p for p in set(second) | set(third) if second.get(p) != third.get(p)}
    expected = {"opt/cloudswarm/current", "opt/cloudswarm/releases/.history", ".render/signal.json"}
    unexpected = {p for p in changed - expected if not p.startswith("opt/cloudswarm/releases/0.0.2")}
    check(not unexpected, f"the upgrade changed more than the release: {sorted(unexpected)[:5]}")
    check(os.readlink(os.path.join(root, "opt/cloudswarm/current")) == "releases/0.0.2", "current -> releases/0.0.2")
    check(os.path.isdir(os.path.join(root, "opt/cloudswarm/releases/0.0.1")), "the previous release is kept")
    print("ok: an upgrade adds releases/0.0.2 and switches current; everything else is unchanged")

    for v in ("0.0.3", "0.0.4"):
        check(bootstrap(root, tarballs[v]).returncode == 0, f"upgrade to {v} failed")
    kept = sorted(os.listdir(os.path.join(root, "opt/cloudswarm/releases")))
    check(kept == [".history", "0.0.2", "0.0.3", "0.0.4"], f"releases kept after 4 installs: {kept}")
    print("ok: old releases pruned to the newest 3")

    # A failing upgrade (corrupt tarball, wrong checksum) exits non-zero, signals FAILURE with a
    # reason and leaves the running release in place.
    corrupt = os.path.join(work, "corrupt.tar.gz")
    with open(corrupt, "wb") as f:
        f.write(b"not a tarball" * 100)
    for what, tarball, overrides in (("a corrupt tarball", corrupt, {}),
                                     ("a checksum mismatch", tarballs["0.0.1"], {"RELEASE_SHA256": "0" * 64}),
                                     ("a short token", tarballs["0.0.1"], {"DASHBOARD_TOKEN": "short"})):
        r = bootstrap(root, tarball, **overrides)
        sig = signal(root) or {}
        check(r.returncode != 0, f"bootstrap with {what} exited 0")
        check(sig.get("Status") == "FAILURE" and len(sig.get("Reason", "")) > 10,
              f"bootstrap with {what} did not signal FAILURE with a reason: {sig}")
        check(os.readlink(os.path.join(root, "opt/cloudswarm/current")) == "releases/0.0.4",
              f"bootstrap with {what} moved current")
        print(f"ok: {what} fails with FAILURE: {sig.get('Reason')}")
    check(not [n for n in os.listdir(os.path.join(root, "opt/cloudswarm/releases")) if n.startswith(".incoming")],
          "a failed run leaves no half-unpacked release")
    for what, overrides in (("MASTER=yes", {"MASTER": "yes"}),
                            ("a worker with MASTER=1", {"ROLE": "worker", "MASTER": "1", "CONTROLLER_ADDRESS": "10.0.0.5"}),
                            ("a worker without CONTROLLER_ADDRESS", {"ROLE": "worker"})):
        r = bootstrap(os.path.join(work, "refused"), tarballs["0.0.1"], **overrides)
        check(r.returncode != 0 and "error:" in r.stderr, f"bootstrap with {what} was not refused: {r.stderr}")
    print("ok: MASTER other than 1/0, MASTER=1 on a worker and a worker without CONTROLLER_ADDRESS are refused")

    def secrets_private(root, what):
        for p, entry in manifest(root).items():
            if entry[0] == "file" and int(entry[1], 8) & 0o004:
                check(TOKEN not in read(root, p) and WTOKEN not in read(root, p) and "secret/CHECK" not in read(root, p),
                      f"{what}: {p} is world-readable and holds a secret")

    # The controller of a stack with workers (MASTER=1): serve is their master on 0.0.0.0:5557 and
    # takes the worker token (the stack's token) from its env file; back to MASTER=0, neither.
    mroot = os.path.join(work, "master")
    r = bootstrap(mroot, tarballs["0.0.1"], MASTER="1")
    check(r.returncode == 0, f"bootstrap with MASTER=1 failed:\n{r.stderr}")
    ms = service(mroot, "cloudswarm.service")
    check(ms.get("ExecStart") == cs.get("ExecStart") + " --master --master-bind-host 0.0.0.0 --master-bind-port 5557",
          f"with workers serve runs as their master on 0.0.0.0:5557: {ms.get('ExecStart')}")
    for key in ("User", "Group", "EnvironmentFile", "WorkingDirectory", "Restart", "RestartSec", "LimitNOFILE",
                "NoNewPrivileges", "PrivateTmp", "ProtectHome", "ProtectSystem", "WantedBy"):
        check(ms.get(key) == cs.get(key), f"the master's unit keeps {key}={cs.get(key)}")
    menv = read(mroot, "/etc/cloudswarm/cloudswarm.env").splitlines()
    check(f"CLOUDSWARM_WORKER_TOKEN={WTOKEN}" in menv and f"CLOUDSWARM_TOKEN={TOKEN}" in menv,
          "the master's env file has the dashboard token and the worker token derived from it")
    check(mode(mroot, "/etc/cloudswarm/cloudswarm.env") == 0o600, "the master's env file is 0600")
    check(TOKEN not in read(mroot, "/etc/systemd/system/cloudswarm.service") and
          WTOKEN not in read(mroot, "/etc/systemd/system/cloudswarm.service"), "no token is in the master's unit")
    check("systemctl enable cloudswarm.service prometheus.service grafana-server.service" in read(mroot, "/.render/systemctl"),
          "the master enables cloudswarm, prometheus and grafana-server")
    secrets_private(mroot, "master")
    r = bootstrap(mroot, tarballs["0.0.1"], MASTER="0")
    check(r.returncode == 0 and "--master" not in service(mroot, "cloudswarm.service").get("ExecStart", "") and
          "CLOUDSWARM_WORKER_TOKEN" not in read(mroot, "/etc/cloudswarm/cloudswarm.env"),
          "MASTER=0 (WorkerCount back to 0) takes --master and the worker token away again")
    print("ok: with workers serve --master --master-bind-host 0.0.0.0 --master-bind-port 5557, "
          "CLOUDSWARM_WORKER_TOKEN in the 0600 env file; without, neither")

    # Worker: an enabled `cloudswarm worker` unit joining the controller's master on 5557, the token
    # only in its 0600 env file, the controller's endpoints, region and credentials, no Prometheus/Grafana.
    wroot = os.path.join(work, "worker")
    r = bootstrap(wroot, tarballs["0.0.1"], ROLE="worker", CONTROLLER_ADDRESS="10.0.0.5", WAIT_HANDLE_URL="",
                  PROMETHEUS_TARBALL_URL="", GRAFANA_TARBALL_URL="")
    check(r.returncode == 0, f"worker bootstrap failed:\n{r.stderr}")
    wk = service(wroot, "cloudswarm-worker.service")
    wexec = wk.get("ExecStart", "")
    check(wexec.startswith("/opt/cloudswarm/current/bin/cloudswarm worker --master-host 10.0.0.5 --master-port 5557"),
          f"the worker unit runs `cloudswarm worker --master-host CONTROLLER_ADDRESS --master-port 5557`: {wexec}")
    check("--state-dir /var/lib/cloudswarm" in wexec, "the worker keeps its state in /var/lib/cloudswarm")
    check(" -f " not in wexec and "--profile" not in wexec, "the worker takes its profile from the master (no -f)")
    check(WTOKEN not in read(wroot, "/etc/systemd/system/cloudswarm-worker.service") and "token" not in wexec,
          "the token is not on the worker's command line")
    for key in ("User", "Group", "EnvironmentFile", "WorkingDirectory", "LimitNOFILE", "NoNewPrivileges",
                "PrivateTmp", "ProtectHome", "ProtectSystem", "WantedBy"):
        check(wk.get(key) == cs.get(key), f"the worker unit has the controller's {key}={cs.get(key)}: {wk.get(key)}")
    check(wk.get("Restart") == "always" and wk.get("RestartSec") == "5",
          "the worker restarts always, 5 s after it quits (it quits after 60 s without its master)")
    wenv = read(wroot, "/etc/cloudswarm/cloudswarm.env").splitlines()
    check(f"CLOUDSWARM_WORKER_TOKEN={WTOKEN}" in wenv, "the worker's env file has the worker token")
    check(not [l for l in wenv if l.startswith(("CLOUDSWARM_TOKEN=", "CLOUDSWARM_CONTROLLER="))] and
          TOKEN not in read(wroot, "/etc/cloudswarm/cloudswarm.env"),
          "the worker's env file has no dashboard token and no controller URL (it never calls the dashboard)")
    check(mode(wroot, "/etc/cloudswarm/cloudswarm.env") == 0o600 and
          dict(l.split() for l in read(wroot, "/.render/owners").splitlines()).get("/etc/cloudswarm/cloudswarm.env") == "root:root",
          "the worker's env file is 0600 root")
    for line in ("CLOUDSWARM_STATE_DIR=/var/lib/cloudswarm", "AWS_REGION=eucalyptus",
                 "AWS_ENDPOINT_URL_EC2=http://ec2.euca.example:8773/", "AWS_ENDPOINT_URL_S3=http://s3.euca.example:8773/",
                 "AWS_SHARED_CREDENTIALS_FILE=/etc/cloudswarm/credentials"):
        check(line in wenv and line in env, f"the worker reaches the cloud as the controller does: {line.split('=')[0]}")
    check(read(wroot, "/etc/cloudswarm/credentials") == read(root, "/etc/cloudswarm/credentials") and
          mode(wroot, "/etc/cloudswarm/credentials") == 0o600, "the worker has the controller's credentials file (0600)")
    wsys = read(wroot, "/.render/systemctl").splitlines()
    check("systemctl enable cloudswarm-worker.service" in wsys, f"the worker unit is enabled: {wsys}")
    check(not [l for l in wsys if "enable" in l and "cloudswarm-worker.service" not in l],
          "the worker enables nothing else")
    check(not os.path.exists(os.path.join(wroot, "etc/systemd/system/cloudswarm.service")), "the worker has no dashboard unit")
    check(not os.path.exists(os.path.join(wroot, "etc/prometheus")) and not os.path.exists(os.path.join(wroot, "etc/grafana")),
          "the worker has no Prometheus or Grafana")
    secrets_private(wroot, "worker")
    first = manifest(wroot)
    r = bootstrap(wroot, tarballs["0.0.1"], ROLE="worker", CONTROLLER_ADDRESS="10.0.0.5", WAIT_HANDLE_URL="",
                  PROMETHEUS_TARBALL_URL="", GRAFANA_TARBALL_URL="")
    check(r.returncode == 0 and manifest(wroot) == first, "a second worker run leaves an identical tree")
    print("ok: worker: enabled `cloudswarm worker --master-host 10.0.0.5 --master-port 5557` as cloudswarm, hardened "
          "like the controller, token only in its 0600 env file, the controller's endpoints and credentials")

    # Credentials: a CredentialsUrl file (0600, cloudswarm), then none (instance role) removes it.
    croot = os.path.join(work, "credentials")
    r = bootstrap(croot, tarballs["0.0.1"], CREDENTIALS_URL="https://bucket.example/creds?X-Amz-Signature=x",
                  ACCESS_KEY_ID="", SECRET_ACCESS_KEY="")
    check(r.returncode == 0 and mode(croot, "/etc/cloudswarm/credentials") == 0o600 and
          dict(l.split() for l in read(croot, "/.render/owners").splitlines()).get("/etc/cloudswarm/credentials")
          == "cloudswarm:cloudswarm", "CredentialsUrl gives a 0600 credentials file owned by cloudswarm")
    r = bootstrap(croot, tarballs["0.0.1"], ACCESS_KEY_ID="", SECRET_ACCESS_KEY="")
    check(r.returncode == 0 and not os.path.exists(os.path.join(croot, "etc/cloudswarm/credentials")) and
          "AWS_SHARED_CREDENTIALS_FILE" not in read(croot, "/etc/cloudswarm/cloudswarm.env"),
          "without credentials parameters the file goes (the instance role is used)")
    print("ok: credentials from CredentialsUrl (0600, cloudswarm), or none for the instance role")

    # The template's user data itself, in a sandbox: its paths moved under a directory, the release
    # from a file:// URL, the bootstrap in render mode. It must write the parameters file (0600)
    # and end in a running install; a release URL that does not download makes it exit non-zero.
    template = json.load(open("cloudformation/cloudswarm.json"))
    values = {"ImageId": "ami-00000000", "OperatorCidr": "203.0.113.7/32", "DashboardToken": TOKEN,
              "Ec2Endpoint": "http://ec2.euca.example:8773/", "Region": "", "AWS::Region": "eu-test-1",
              "ControllerWaitHandle": "https://127.0.0.1:9/waitcondition?signature=abc",
              "ReleaseUrl": "file://" + tarballs["0.0.1"], "ReleaseSha256": sha, "WorkerCount": "0"}
    def resolve(node):
        if isinstance(node, str):
            return node
        if "Ref" in node:
            name = node["Ref"]
            return values[name] if name in values else template["Parameters"][name].get("Default", "")
        if "Fn::If" in node:
            cond, yes, no = node["Fn::If"]
            truth = {"RegionIsBlank": values["Region"] == "", "HasWorkers": str(values["WorkerCount"]) != "0"}
            return resolve(yes if truth[cond] else no)
        if node == {"Fn::GetAtt": ["Controller", "PrivateIp"]}:
            return "10.0.0.5"
        raise ValueError(f"cannot resolve {node}")
    def user_data(resource, sandbox):
        parts = template["Resources"][resource]["Properties"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
        text = "".join(resolve(p) for p in parts)
        mime = email.message_from_string(text)  # what cloud-init parses
        check([m.get_content_type() for m in mime.walk()] == ["multipart/mixed", "text/cloud-config", "text/x-shellscript"]
              and "- [scripts-user, always]" in mime.get_payload(0).get_payload(),
              f"{resource}'s user data is a cloud-config (scripts-user always) and a shell script")
        script = text[text.index("#!/bin/bash"):text.index("--==cloudswarm==--")]
        script = script.replace("/etc/cloudswarm", sandbox + "/etc/cloudswarm").replace(
            "/var/cache/cloudswarm", sandbox + "/cache")
        return script.replace("--release-tarball $c/release.tar.gz", f"--release-tarball $c/release.tar.gz --root {sandbox}/root")
    for resource, role, workers in (("Controller", "controller", "0"), ("Controller", "controller", "3"),
                                    ("WorkerLaunchConfig", "worker", "3")):
        values["WorkerCount"] = workers
        sandbox = os.path.join(work, f"userdata-{role}-{workers}")
        os.makedirs(sandbox)
        r = subprocess.run(["bash", "-c", user_data(resource, sandbox)], capture_output=True, text=True)
        check(r.returncode == 0, f"the {role} user data failed:\n{r.stderr}")
        check(mode(sandbox, "/etc/cloudswarm/stack.env") == 0o600, f"the {role} user data's stack.env is 0600")
        check(f"ROLE={role}" in read(sandbox, "/etc/cloudswarm/stack.env").splitlines(), f"stack.env says ROLE={role}")
        check(os.readlink(os.path.join(sandbox, "root/opt/cloudswarm/current")) == "releases/0.0.1",
              f"the {role} user data installs the release")
        uenv = read(sandbox, "root/etc/cloudswarm/cloudswarm.env").splitlines()
        sroot = os.path.join(sandbox, "root")
        if role == "controller":
            check("AWS_REGION=eu-test-1" in uenv, "a blank Region becomes the stack's region")
            check((signal(sroot) or {}).get("Status") == "SUCCESS", "the controller would signal SUCCESS")
            master = workers != "0"
            check(f"MASTER={int(master)}" in read(sandbox, "/etc/cloudswarm/stack.env").splitlines(),
                  f"WorkerCount={workers}: stack.env says MASTER={int(master)}")
            uexec = service(sroot, "cloudswarm.service").get("ExecStart", "")
            check(uexec.endswith(" --master --master-bind-host 0.0.0.0 --master-bind-port 5557") == master and
                  ("--master" in uexec) == master, f"WorkerCount={workers}: serve is {'' if master else 'not '}a master: {uexec}")
            check((f"CLOUDSWARM_WORKER_TOKEN={WTOKEN}" in uenv) == master,
                  f"WorkerCount={workers}: the worker token is {'' if master else 'not '}in the controller's env file")
        else:
            check(service(sroot, "cloudswarm-worker.service").get("ExecStart", "").startswith(
                      "/opt/cloudswarm/current/bin/cloudswarm worker --master-host 10.0.0.5 --master-port 5557"),
                  "the worker's user data makes it join the master on the controller's private address")
            check(f"CLOUDSWARM_WORKER_TOKEN={WTOKEN}" in uenv, "the worker's user data passes the token")
            check("systemctl enable cloudswarm-worker.service" in read(sroot, "/.render/systemctl"),
                  "the worker's user data enables cloudswarm-worker")
    values["ReleaseUrl"] = "file://" + os.path.join(work, "missing.tar.gz")
    sandbox = os.path.join(work, "userdata-missing")
    os.makedirs(sandbox)
    r = subprocess.run(["bash", "-c", user_data("Controller", sandbox)], capture_output=True, text=True)
    check(r.returncode != 0 and "cannot download the release" in r.stderr,
          f"a release that does not download fails the user data: {r.returncode} {r.stderr}")
    print("ok: the template's user data (controller without and with workers, worker) writes stack.env 0600 and "
          "runs the release's bootstrap")
finally:
    shutil.rmtree(work, ignore_errors=True)
sys.exit(1 if failures else 0)
PY

echo "== the flags bootstrap.sh gives \`cloudswarm serve\` and \`cloudswarm worker\`"
BIN=${CARGO_TARGET_DIR:-target}/debug/cloudswarm
if [ -x "$BIN" ] && HELP=$(timeout 20 "$BIN" serve --help 2>/dev/null); then
  has() { grep -qE -- "(^|[[:space:],])$1([[:space:]=,]|\$)" <<<"$2"; } # the exact flag, not a longer one
  for flag in --bind --profiles-dir --static-dir --state-dir --master --master-bind-host --master-bind-port; do
    has "$flag" "$HELP" || { echo "FAIL: \`cloudswarm serve\` has no $flag"; exit 1; }
  done
  grep -q "env: CLOUDSWARM_WORKER_TOKEN" <<<"$HELP" ||
    { echo "FAIL: \`cloudswarm serve\` does not read CLOUDSWARM_WORKER_TOKEN"; exit 1; }
  echo "ok: $BIN serve takes --bind --profiles-dir --static-dir --state-dir --master --master-bind-host --master-bind-port, CLOUDSWARM_WORKER_TOKEN"
  HELP=$(timeout 20 "$BIN" worker --help 2>/dev/null) || { echo "FAIL: $BIN has no worker command"; exit 1; }
  for flag in --master-host --master-port --state-dir; do
    has "$flag" "$HELP" || { echo "FAIL: \`cloudswarm worker\` has no $flag"; exit 1; }
  done
  grep -q "env: CLOUDSWARM_WORKER_TOKEN" <<<"$HELP" ||
    { echo "FAIL: \`cloudswarm worker\` does not read CLOUDSWARM_WORKER_TOKEN"; exit 1; }
  # The unit passes no profile: clap's usage line names a required option outside brackets.
  if grep -E '^Usage:.* (-f|--profile) <' <<<"$HELP" >/dev/null; then
    echo "FAIL: \`cloudswarm worker\` requires -f PROFILE; the worker unit passes none"
    exit 1
  fi
  echo "ok: $BIN worker takes --master-host --master-port --state-dir, CLOUDSWARM_WORKER_TOKEN, no required -f"
else
  echo "skipped: no built cloudswarm with a serve command at $BIN"
fi
echo "check-cloudformation: all checks passed"
