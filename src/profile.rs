//! Profiles: the TOML files in `profiles/` that describe weighted user classes,
//! their weighted tasks (single ops or ordered sequences), wait times (or,
//! for an open class, an arrival rate) and op parameters. Parsing validates everything up front and reports problems with
//! the file, line and column, so `cloudswarm check` and `run` fail early.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::ops::Op;

/// A validated profile, ready for the engine.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub users: Vec<UserClass>,
    /// SLA expressions (`sla = [...]`), as written: `output::sla` parses
    /// them (the grammar lives there); their place is kept for its errors.
    pub slas: Vec<ProfileSla>,
}

/// One SLA expression of a profile and where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileSla {
    pub text: String,
    pub line: usize,
    pub column: usize,
}

/// Most SLAs a profile (or a run) may have, and the longest one: each is a
/// label of a Prometheus gauge and a row in every report.
pub const MAX_SLAS: usize = 100;
pub const MAX_SLA_LEN: usize = 200;

/// One kind of simulated user.
#[derive(Debug, Clone)]
pub struct UserClass {
    pub name: String,
    /// Relative share of the users (ignored when `fixed_count` is set).
    pub weight: u32,
    /// Exactly this many users of the class, taken before the weighted split.
    pub fixed_count: Option<u32>,
    /// The pause between two tasks of a user (zero for an open class).
    pub wait: WaitTime,
    /// Set for an open class: its task starts arrive at this rate whatever
    /// the latency, and its users are the pool that runs them.
    pub arrival: Option<Arrival>,
    pub tasks: Vec<Task>,
    pub params: Params,
}

/// The arrivals of an open class: task starts per second, and their spacing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Task starts per second, from [`crate::units::MIN_ARRIVAL_RATE`] to
    /// [`crate::units::MAX_ARRIVAL_RATE`].
    pub rate: f64,
    pub process: ArrivalProcess,
}

/// How arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrivalProcess {
    /// Evenly: one every 1/rate seconds.
    Constant,
    /// Exponential gaps of mean 1/rate (a Poisson process).
    Poisson,
}

/// A weighted task: one op, or a sequence of ops run in order.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub weight: u32,
    pub steps: Vec<Op>,
}

/// Longest wait between two tasks (a day); `constant_throughput` may not ask
/// for fewer than one task in this time.
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);
/// Largest task or class weight, and largest `fixed_count`.
pub const MAX_WEIGHT: i64 = 1_000_000;
/// Most user classes in a profile, tasks in a class and steps in a sequence.
pub const MAX_CLASSES: usize = 1_000;
pub const MAX_TASKS: usize = 1_000;
pub const MAX_STEPS: usize = 1_000;
/// Largest object `s3:PutObject` writes and largest multipart part: S3's
/// own limits (5 GiB per PUT and per part). The payload is held in memory.
pub const MAX_OBJECT_SIZE: u64 = 5 << 30;
/// Largest profile file `load` reads.
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// How long a user waits between two tasks (Locust's wait_time functions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WaitTime {
    Constant(Duration),
    Between(Duration, Duration),
    /// Each task starts this long after the previous one started.
    ConstantPacing(Duration),
    /// This many tasks per second per user (pacing of 1/n).
    ConstantThroughput(f64),
}

impl WaitTime {
    /// The pause after a task that started `elapsed` ago. Never panics: a
    /// value that validation would refuse gives at most [`MAX_WAIT`].
    pub fn next_wait(&self, elapsed: Duration, rng: &mut impl rand::Rng) -> Duration {
        let secs = |s: f64| Duration::try_from_secs_f64(s).map_or(MAX_WAIT, |d| d.min(MAX_WAIT));
        match *self {
            WaitTime::Constant(d) => d,
            WaitTime::Between(lo, hi) => {
                if hi <= lo {
                    lo
                } else {
                    secs(rng.random_range(lo.as_secs_f64()..=hi.as_secs_f64()))
                }
            }
            WaitTime::ConstantPacing(p) => p.saturating_sub(elapsed),
            WaitTime::ConstantThroughput(n) => secs(1.0 / n).saturating_sub(elapsed),
        }
    }
}

/// Parameters the ops of a user class use.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// An image id, or `auto` for the first available machine image.
    pub image_id: String,
    pub instance_type: String,
    pub instance_count: i32,
    pub volume_size_gib: i32,
    pub volume_type: Option<String>,
    /// An availability zone, or `auto` for the first one the region lists.
    pub availability_zone: String,
    /// Size of each object `s3:PutObject` writes.
    pub object_size: SizeSpec,
    /// HTTP byte range `s3:GetObject` asks for (`0-1023`), or the whole object.
    pub get_range: Option<String>,
    /// Size of a multipart upload and of its parts.
    pub multipart_size: u64,
    pub part_size: u64,
    /// Objects per `s3:DeleteObjects` call.
    pub delete_batch: usize,
    /// Key pair, security group (id or name) and user data for `ec2:RunInstances`.
    pub key_name: Option<String>,
    pub security_group: Option<String>,
    pub user_data: Option<String>,
    /// Source network of the rule `ec2:AuthorizeSecurityGroupIngress` adds.
    pub ingress_cidr: String,
    pub bucket: BucketMode,
    /// How long a provisioning wait (`ec2:instance-running`...) may take before it fails.
    pub wait_timeout: Duration,
    /// How often a provisioning wait polls the cloud.
    pub poll_interval: Duration,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            image_id: "auto".into(),
            instance_type: "t3.micro".into(),
            instance_count: 1,
            volume_size_gib: 1,
            volume_type: None,
            availability_zone: "auto".into(),
            object_size: SizeSpec::Fixed(1024),
            get_range: None,
            multipart_size: 10 * 1024 * 1024,
            part_size: 5 * 1024 * 1024,
            delete_batch: 10,
            key_name: None,
            security_group: None,
            user_data: None,
            ingress_cidr: "192.0.2.0/24".into(),
            bucket: BucketMode::PerUser,
            wait_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Object sizes: fixed, uniform in a range, or a weighted choice.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeSpec {
    Fixed(u64),
    Range(u64, u64),
    Weighted(Vec<(u64, u32)>),
}

impl SizeSpec {
    /// The size of the next object.
    pub fn sample(&self, rng: &mut impl rand::Rng) -> u64 {
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::Range(a, b) => rng.random_range(*a..=*b),
            SizeSpec::Weighted(v) => {
                let total: u64 = v.iter().map(|(_, w)| *w as u64).sum();
                let mut pick = rng.random_range(0..total);
                for (size, w) in v {
                    if pick < *w as u64 {
                        return *size;
                    }
                    pick -= *w as u64;
                }
                v.last().map_or(0, |x| x.0)
            }
        }
    }

    /// The largest size it can give.
    pub fn max(&self) -> u64 {
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::Range(_, b) => *b,
            SizeSpec::Weighted(v) => v.iter().map(|x| x.0).max().unwrap_or(0),
        }
    }
}

/// Where a user's objects go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketMode {
    /// Each user creates its own bucket on first need.
    PerUser,
    /// All users of the run share one bucket.
    Shared,
}

/// A profile problem, located in its file.
#[derive(Debug)]
pub struct ProfileError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ProfileError {}

// ---- raw TOML shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: RawParams,
    #[serde(default)]
    user: Vec<Spanned<RawUser>>,
    #[serde(default)]
    sla: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    weight: Option<Spanned<i64>>,
    fixed_count: Option<Spanned<i64>>,
    wait: Option<Spanned<RawWait>>,
    arrival_rate: Option<Spanned<RawRate>>,
    arrival: Option<Spanned<String>>,
    #[serde(default)]
    params: RawParams,
    #[serde(default)]
    task: Vec<Spanned<RawTask>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawWait {
    Constant(f64),
    Between([f64; 2]),
    ConstantPacing(f64),
    ConstantThroughput(f64),
}

/// `arrival_rate`: a string such as "20/s"; a bare number is refused with
/// a message (its unit would be a guess).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRate {
    Text(String),
    Number(f64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Option<String>,
    op: Option<Spanned<String>>,
    sequence: Option<Vec<Spanned<String>>>,
    weight: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawSize {
    Text(String),
    Bytes(i64),
    Weighted(std::collections::BTreeMap<String, i64>),
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawParams {
    image_id: Option<String>,
    instance_type: Option<String>,
    instance_count: Option<Spanned<i64>>,
    volume_size_gib: Option<Spanned<i64>>,
    volume_type: Option<String>,
    availability_zone: Option<String>,
    object_size: Option<Spanned<RawSize>>,
    get_range: Option<Spanned<String>>,
    multipart_size: Option<Spanned<String>>,
    part_size: Option<Spanned<String>>,
    delete_batch: Option<Spanned<i64>>,
    key_name: Option<String>,
    security_group: Option<String>,
    user_data: Option<String>,
    ingress_cidr: Option<String>,
    bucket: Option<Spanned<String>>,
    wait_timeout: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
}

impl RawParams {
    /// Field-wise override: values set in `self` win over `base`.
    fn over(self, base: &RawParams) -> RawParams {
        let b = base.clone();
        RawParams {
            image_id: self.image_id.or(b.image_id),
            instance_type: self.instance_type.or(b.instance_type),
            instance_count: self.instance_count.or(b.instance_count),
            volume_size_gib: self.volume_size_gib.or(b.volume_size_gib),
            volume_type: self.volume_type.or(b.volume_type),
            availability_zone: self.availability_zone.or(b.availability_zone),
            object_size: self.object_size.or(b.object_size),
            get_range: self.get_range.or(b.get_range),
            multipart_size: self.multipart_size.or(b.multipart_size),
            part_size: self.part_size.or(b.part_size),
            delete_batch: self.delete_batch.or(b.delete_batch),
            key_name: self.key_name.or(b.key_name),
            security_group: self.security_group.or(b.security_group),
            user_data: self.user_data.or(b.user_data),
            ingress_cidr: self.ingress_cidr.or(b.ingress_cidr),
            bucket: self.bucket.or(b.bucket),
            wait_timeout: self.wait_timeout.or(b.wait_timeout),
            poll_interval: self.poll_interval.or(b.poll_interval),
        }
    }
}

/// Loads and validates a profile file: a regular file of at most
/// [`MAX_PROFILE_BYTES`] (a FIFO, a device or a directory is refused before
/// it is opened, so `/dev/zero` or a pipe cannot fill memory or block).
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let fail = |message: String| ProfileError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        message,
    };
    let text = read_limited(path).map_err(fail)?;
    parse(path, &text)
}

/// The text of a regular file of at most [`MAX_PROFILE_BYTES`].
fn read_limited(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let regular = |m: &std::fs::Metadata| -> Result<(), String> {
        if !m.is_file() {
            let kind = kind_of(&m.file_type());
            return Err(format!(
                "cannot read profile: it is {kind}, not a regular file"
            ));
        }
        if m.len() > MAX_PROFILE_BYTES {
            return Err(format!(
                "cannot read profile: it is {} bytes, more than the limit of {MAX_PROFILE_BYTES} (1 MiB)",
                m.len()
            ));
        }
        Ok(())
    };
    // Stat first: opening a FIFO for reading would block until a writer comes.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read profile: {e}"))?;
    regular(&meta)?;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read profile: {e}"))?;
    // The file opened may not be the one looked at, and a file may grow:
    // check again and never read past the limit.
    regular(
        &file
            .metadata()
            .map_err(|e| format!("cannot read profile: {e}"))?,
    )?;
    let mut bytes = Vec::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read profile: {e}"))?;
    if bytes.len() as u64 > MAX_PROFILE_BYTES {
        return Err(format!(
            "cannot read profile: it is more than the limit of {MAX_PROFILE_BYTES} bytes (1 MiB)"
        ));
    }
    String::from_utf8(bytes).map_err(|e| format!("cannot read profile: it is not UTF-8 text ({e})"))
}

/// "a FIFO", "a directory"...: what a file that is not regular is.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// Parses and validates profile text; `path` is used for messages and the name.
/// Long on purpose: one pass over the document, class by class and task by
/// task, each check naming file:line:column; the parameters are checked in
/// [`build_params`].
pub fn parse(path: &Path, text: &str) -> Result<Profile, ProfileError> {
    let locate = |span: Option<std::ops::Range<usize>>, message: String| {
        let (line, column) = match span {
            Some(r) => {
                let (l, c) = line_col(text, r.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ProfileError {
            file: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let raw: RawProfile = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        locate(e.span(), msg)
    })?;

    if raw.user.is_empty() {
        return Err(locate(
            None,
            "the profile has no user classes: add at least one [[user]] table".into(),
        ));
    }
    if raw.user.len() > MAX_CLASSES {
        return Err(locate(
            Some(raw.user[MAX_CLASSES].span()),
            format!(
                "the profile has {} user classes; at most {MAX_CLASSES}",
                raw.user.len()
            ),
        ));
    }
    let mut users = Vec::new();
    let mut names = std::collections::HashSet::new();
    for su in raw.user {
        let user_span = su.span();
        let u = su.into_inner();
        let name = u.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(locate(Some(u.name.span()), "user name is empty".into()));
        }
        if !names.insert(name.clone()) {
            return Err(locate(
                Some(u.name.span()),
                format!("user class `{name}` is defined twice"),
            ));
        }
        let weight = match &u.weight {
            Some(w) => positive(w, "weight", &locate)?,
            None => 1,
        };
        let fixed_count = match &u.fixed_count {
            Some(w) => {
                let v = *w.get_ref();
                if !(0..=MAX_WEIGHT).contains(&v) {
                    return Err(locate(
                        Some(w.span()),
                        format!("fixed_count must be between 0 and {MAX_WEIGHT}, got {v}"),
                    ));
                }
                Some(v as u32)
            }
            None => None,
        };
        let arrival = arrival(&name, u.arrival_rate, u.arrival, u.wait.is_some(), &locate)?;
        let wait = match u.wait {
            None => WaitTime::Constant(Duration::ZERO),
            Some(w) => {
                let span = w.span();
                wait_time(w.into_inner()).map_err(|m| locate(Some(span), m))?
            }
        };
        let params = build_params(u.params.over(&raw.params), &locate)?;
        if u.task.is_empty() {
            return Err(locate(
                Some(user_span),
                format!("user class `{name}` has no tasks: add a [[user.task]] table"),
            ));
        }
        if u.task.len() > MAX_TASKS {
            return Err(locate(
                Some(u.task[MAX_TASKS].span()),
                format!(
                    "user class `{name}` has {} tasks; at most {MAX_TASKS}",
                    u.task.len()
                ),
            ));
        }
        let mut tasks = Vec::new();
        for st in u.task {
            let tspan = st.span();
            let t = st.into_inner();
            let weight = match &t.weight {
                Some(w) => positive(w, "task weight", &locate)?,
                None => 1,
            };
            let steps_raw: Vec<Spanned<String>> = match (t.op, t.sequence) {
                (Some(op), None) => vec![op],
                (None, Some(seq)) if !seq.is_empty() => seq,
                (None, Some(_)) => {
                    return Err(locate(Some(tspan), "the task's sequence is empty".into()));
                }
                (Some(_), Some(_)) => {
                    return Err(locate(
                        Some(tspan),
                        "a task has either `op` or `sequence`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(locate(
                        Some(tspan),
                        "a task needs `op = \"service:Operation\"` or `sequence = [...]`".into(),
                    ));
                }
            };
            if steps_raw.len() > MAX_STEPS {
                return Err(locate(
                    Some(steps_raw[MAX_STEPS].span()),
                    format!(
                        "the sequence has {} steps; at most {MAX_STEPS}",
                        steps_raw.len()
                    ),
                ));
            }
            let mut steps = Vec::new();
            for s in &steps_raw {
                let op = Op::from_name(s.get_ref().trim()).ok_or_else(|| {
                    locate(
                        Some(s.span()),
                        format!(
                            "unknown op `{}`; known ops: {}",
                            s.get_ref(),
                            Op::all()
                                .iter()
                                .map(|o| o.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
                steps.push(op);
            }
            let task_name = t.name.unwrap_or_else(|| {
                steps
                    .iter()
                    .map(|o| o.name())
                    .collect::<Vec<_>>()
                    .join(" > ")
            });
            tasks.push(Task {
                name: task_name,
                weight,
                steps,
            });
        }
        users.push(UserClass {
            name,
            weight,
            fixed_count,
            wait,
            arrival,
            tasks,
            params,
        });
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "profile".into());
    if raw.sla.len() > MAX_SLAS {
        return Err(locate(
            Some(raw.sla[MAX_SLAS].span()),
            format!("the profile has {} SLAs; at most {MAX_SLAS}", raw.sla.len()),
        ));
    }
    let mut slas = Vec::new();
    for s in raw.sla {
        let span = s.span();
        let expr = s.into_inner().trim().to_string();
        if expr.is_empty() {
            return Err(locate(
                Some(span),
                "an SLA is empty (e.g. \"p95(ec2:RunInstances)<2s\")".into(),
            ));
        }
        if expr.len() > MAX_SLA_LEN {
            return Err(locate(
                Some(span),
                format!(
                    "an SLA is {} characters long; at most {MAX_SLA_LEN}",
                    expr.len()
                ),
            ));
        }
        let (line, column) = line_col(text, span.start);
        slas.push(ProfileSla {
            text: expr,
            line,
            column,
        });
    }
    Ok(Profile {
        name,
        description: raw.description,
        users,
        slas,
    })
}

fn positive(
    w: &Spanned<i64>,
    what: &str,
    locate: &impl Fn(Option<std::ops::Range<usize>>, String) -> ProfileError,
) -> Result<u32, ProfileError> {
    let v = *w.get_ref();
    if !(1..=MAX_WEIGHT).contains(&v) {
        return Err(locate(
            Some(w.span()),
            format!("{what} must be a whole number from 1 to {MAX_WEIGHT}, got {v}"),
        ));
    }
    Ok(v as u32)
}

/// A class's `arrival_rate` and `arrival`, checked: a rate with a unit in
/// bounds, a known spacing, no `arrival` without a rate and no `wait` with
/// one (an open class's users wait for arrivals, not for a wait time).
fn arrival(
    class: &str,
    rate: Option<Spanned<RawRate>>,
    process: Option<Spanned<String>>,
    has_wait: bool,
    locate: &impl Fn(Option<std::ops::Range<usize>>, String) -> ProfileError,
) -> Result<Option<Arrival>, ProfileError> {
    let Some(rate) = rate else {
        if let Some(p) = process {
            return Err(locate(
                Some(p.span()),
                format!(
                    "user class `{class}` sets `arrival` without `arrival_rate`: add arrival_rate = \"20/s\" (or remove arrival)"
                ),
            ));
        }
        return Ok(None);
    };
    let span = rate.span();
    if has_wait {
        return Err(locate(
            Some(span),
            format!(
                "user class `{class}` has both `wait` and `arrival_rate`: an open class's task starts arrive at its rate, so it has no wait time (remove one of them)"
            ),
        ));
    }
    let per_second = match rate.into_inner() {
        RawRate::Text(t) => crate::units::parse_rate(&t),
        RawRate::Number(n) => Err(format!(
            "arrival_rate needs a unit: write \"{n}/s\" or \"{n}/min\""
        )),
    }
    .map_err(|m| locate(Some(span.clone()), format!("user class `{class}`: {m}")))?;
    let process = match process {
        None => ArrivalProcess::Constant,
        Some(p) => match p.get_ref().trim() {
            "constant" => ArrivalProcess::Constant,
            "poisson" => ArrivalProcess::Poisson,
            other => {
                return Err(locate(
                    Some(p.span()),
                    format!(
                        "user class `{class}`: arrival must be \"constant\" (even spacing) or \"poisson\" (exponential gaps), got \"{other}\""
                    ),
                ));
            }
        },
    };
    Ok(Some(Arrival {
        rate: per_second,
        process,
    }))
}

fn wait_time(w: RawWait) -> Result<WaitTime, String> {
    let max = MAX_WAIT.as_secs_f64();
    let secs = |v: f64, what: &str| {
        if v.is_finite() && (0.0..=max).contains(&v) {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(format!(
                "{what} must be between 0 and {max} seconds (a day), got {v}"
            ))
        }
    };
    Ok(match w {
        RawWait::Constant(v) => WaitTime::Constant(secs(v, "wait.constant")?),
        RawWait::Between([a, b]) => {
            let (lo, hi) = (secs(a, "wait.between")?, secs(b, "wait.between")?);
            if lo > hi {
                return Err(format!(
                    "wait.between needs [min, max] with min <= max, got [{a}, {b}]"
                ));
            }
            WaitTime::Between(lo, hi)
        }
        RawWait::ConstantPacing(v) => WaitTime::ConstantPacing(secs(v, "wait.constant_pacing")?),
        RawWait::ConstantThroughput(v) => {
            // Its pacing, 1/v seconds, must be a day at most.
            let min = 1.0 / max;
            if !(v.is_finite() && v >= min && v <= 1e6) {
                return Err(format!(
                    "wait.constant_throughput must be from {min:.7} (one task a day) to 1000000 tasks per second, got {v}"
                ));
            }
            WaitTime::ConstantThroughput(v)
        }
    })
}

/// The parameters of a class (or the defaults), each checked against its
/// bound. Long on purpose: one short block per parameter, in the order the
/// README's table lists them.
fn build_params(
    raw: RawParams,
    locate: &impl Fn(Option<std::ops::Range<usize>>, String) -> ProfileError,
) -> Result<Params, ProfileError> {
    let mut p = Params::default();
    if let Some(v) = raw.image_id {
        p.image_id = v;
    }
    if let Some(v) = raw.instance_type {
        p.instance_type = v;
    }
    if let Some(v) = raw.instance_count {
        let n = *v.get_ref();
        if !(1..=100).contains(&n) {
            return Err(locate(
                Some(v.span()),
                format!("instance_count must be from 1 to 100, got {n}"),
            ));
        }
        p.instance_count = n as i32;
    }
    if let Some(v) = raw.volume_size_gib {
        let n = *v.get_ref();
        if !(1..=16_384).contains(&n) {
            return Err(locate(
                Some(v.span()),
                format!("volume_size_gib must be from 1 to 16384, got {n}"),
            ));
        }
        p.volume_size_gib = n as i32;
    }
    p.volume_type = raw.volume_type;
    if let Some(v) = raw.availability_zone {
        p.availability_zone = v;
    }
    if let Some(v) = raw.object_size {
        let span = v.span();
        p.object_size = size_spec(v.into_inner()).map_err(|m| locate(Some(span), m))?;
    }
    if let Some(v) = raw.get_range {
        let r = v.get_ref().trim();
        let ok = r.split_once('-').is_some_and(|(a, b)| {
            a.parse::<u64>().is_ok()
                && (b.is_empty() || b.parse::<u64>().is_ok_and(|e| e >= a.parse().unwrap_or(0)))
        });
        if !ok {
            return Err(locate(
                Some(v.span()),
                format!(
                    "get_range must be FIRST-LAST bytes such as \"0-1023\" or \"512-\", got \"{r}\""
                ),
            ));
        }
        p.get_range = Some(r.to_string());
    }
    let parts_span = raw
        .part_size
        .as_ref()
        .or(raw.multipart_size.as_ref())
        .map(|v| v.span());
    if let Some(v) = raw.multipart_size {
        p.multipart_size =
            crate::units::parse_size(v.get_ref()).map_err(|m| locate(Some(v.span()), m))?;
    }
    if let Some(v) = raw.part_size {
        p.part_size =
            crate::units::parse_size(v.get_ref()).map_err(|m| locate(Some(v.span()), m))?;
        if p.part_size == 0 || p.part_size > MAX_OBJECT_SIZE {
            return Err(locate(
                Some(v.span()),
                format!(
                    "part_size must be above 0 and at most 5GiB (S3's largest part), got `{}`",
                    v.get_ref()
                ),
            ));
        }
    }
    let parts = p.multipart_size.div_ceil(p.part_size.max(1));
    if parts > 10_000 {
        return Err(locate(
            parts_span,
            format!(
                "multipart_size / part_size gives {parts} parts; S3 takes at most 10000 (raise part_size)"
            ),
        ));
    }
    if let Some(v) = raw.delete_batch {
        let n = *v.get_ref();
        if !(1..=1000).contains(&n) {
            return Err(locate(
                Some(v.span()),
                format!("delete_batch must be from 1 to 1000, got {n}"),
            ));
        }
        p.delete_batch = n as usize;
    }
    p.key_name = raw.key_name;
    p.security_group = raw.security_group;
    p.user_data = raw.user_data;
    if let Some(v) = raw.ingress_cidr {
        p.ingress_cidr = v;
    }
    if let Some(v) = raw.bucket {
        p.bucket = match v.get_ref().as_str() {
            "per-user" => BucketMode::PerUser,
            "shared" => BucketMode::Shared,
            other => {
                return Err(locate(
                    Some(v.span()),
                    format!("bucket must be \"per-user\" or \"shared\", got \"{other}\""),
                ));
            }
        };
    }
    if let Some(v) = raw.wait_timeout {
        p.wait_timeout =
            crate::units::parse_duration(v.get_ref()).map_err(|m| locate(Some(v.span()), m))?;
    }
    if let Some(v) = raw.poll_interval {
        let d = crate::units::parse_duration(v.get_ref()).map_err(|m| locate(Some(v.span()), m))?;
        if d < Duration::from_millis(50) {
            return Err(locate(
                Some(v.span()),
                "poll_interval must be at least 50ms".into(),
            ));
        }
        p.poll_interval = d;
    }
    Ok(p)
}

/// An object size of at most [`MAX_OBJECT_SIZE`].
fn object_size(s: &str) -> Result<u64, String> {
    let n = crate::units::size_bytes(s)?;
    if !(n >= 0.0 && n.round() <= MAX_OBJECT_SIZE as f64) {
        return Err(format!(
            "object_size `{s}` is more than 5GiB, the most one S3 PUT takes (use s3:MultipartUpload for larger objects)"
        ));
    }
    Ok(n.round() as u64)
}

fn size_spec(raw: RawSize) -> Result<SizeSpec, String> {
    match raw {
        RawSize::Bytes(n) if n < 0 => Err(format!("object_size must not be negative, got {n}")),
        RawSize::Bytes(n) => object_size(&n.to_string()).map(SizeSpec::Fixed),
        RawSize::Text(t) => match t.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (object_size(a)?, object_size(b)?);
                if a > b {
                    return Err(format!("object_size range `{t}` has its bounds swapped"));
                }
                Ok(SizeSpec::Range(a, b))
            }
            None => Ok(SizeSpec::Fixed(object_size(&t)?)),
        },
        RawSize::Weighted(m) => {
            if m.is_empty() {
                return Err("object_size table is empty".into());
            }
            let mut v = Vec::new();
            for (size, w) in m {
                if !(1..=MAX_WEIGHT).contains(&w) {
                    return Err(format!(
                        "object_size weight for `{size}` must be from 1 to {MAX_WEIGHT}, got {w}"
                    ));
                }
                v.push((object_size(&size)?, w as u32));
            }
            Ok(SizeSpec::Weighted(v))
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Profile, ProfileError> {
        parse(Path::new("t.toml"), text)
    }

    #[test]
    fn parses_classes_tasks_sequences_and_params() {
        let prof = p(r#"
            description = "demo"
            [params]
            object_size = "4KiB"
            [[user]]
            name = "compute"
            weight = 3
            wait = { between = [1, 2] }
            params = { instance_type = "m1.small" }
            [[user.task]]
            op = "ec2:DescribeInstances"
            weight = 5
            [[user.task]]
            name = "lifecycle"
            sequence = ["ec2:RunInstances", "ec2:instance-running", "ec2:TerminateInstances"]
            [[user]]
            name = "storage"
            fixed_count = 2
            wait = { constant_throughput = 2.0 }
            [[user.task]]
            op = "s3:PutObject"
        "#)
        .unwrap();
        assert_eq!(prof.users.len(), 2);
        let c = &prof.users[0];
        assert_eq!(c.weight, 3);
        assert_eq!(c.params.instance_type, "m1.small");
        assert_eq!(c.params.object_size, SizeSpec::Fixed(4096));
        assert_eq!(c.tasks[0].weight, 5);
        assert_eq!(c.tasks[1].name, "lifecycle");
        assert_eq!(c.tasks[1].steps.len(), 3);
        assert_eq!(
            c.wait,
            WaitTime::Between(Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(prof.users[1].fixed_count, Some(2));
        assert_eq!(prof.users[1].wait, WaitTime::ConstantThroughput(2.0));
    }

    #[test]
    fn unknown_op_names_line_and_lists_known_ops() {
        let e = p("[[user]]\nname = \"a\"\n[[user.task]]\nop = \"ec2:RunInstance\"\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.toml:4:"), "{s}");
        assert!(s.contains("unknown op `ec2:RunInstance`"), "{s}");
        assert!(s.contains("ec2:RunInstances"), "{s}");
        assert!(s.contains("s3:PutObject"), "{s}");
    }

    #[test]
    fn syntax_and_field_errors_are_located() {
        let e = p("[[user]]\nname = \"a\"\nweight = \"x\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = p("[[user]]\nname = \"a\"\nwieght = 2\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("wieght"), "{e}");
        let e = p("[[user]]\nname = \"a\"\nweight = 0\n[[user.task]]\nop=\"s3:PutObject\"\n")
            .unwrap_err();
        assert!(e.message.contains("weight must be"), "{e}");
        let e = p("[[user]]\nname = \"a\"\n").unwrap_err();
        assert!(e.message.contains("no tasks"), "{e}");
        let e = p("").unwrap_err();
        assert!(e.message.contains("no user classes"), "{e}");
        let e = p("[[user]]\nname=\"a\"\nwait = { between = [5, 1] }\n[[user.task]]\nop=\"s3:PutObject\"\n")
            .unwrap_err();
        assert!(e.message.contains("min <= max"), "{e}");
        let e = p("[[user]]\nname=\"a\"\nparams = { object_size = \"3 parsecs\" }\n[[user.task]]\nop=\"s3:PutObject\"\n")
            .unwrap_err();
        assert!(e.message.contains("unit"), "{e}");
    }

    #[test]
    fn object_size_forms() {
        let prof = |v: &str| {
            p(&format!(
                "[params]\nobject_size = {v}\n[[user]]\nname=\"a\"\n[[user.task]]\nop=\"s3:PutObject\"\n"
            ))
        };
        let sz = |v: &str| prof(v).unwrap().users[0].params.object_size.clone();
        assert_eq!(sz("\"1KiB\""), SizeSpec::Fixed(1024));
        assert_eq!(sz("2048"), SizeSpec::Fixed(2048));
        assert_eq!(sz("\"1KiB..4KiB\""), SizeSpec::Range(1024, 4096));
        let w = sz("{ \"4KiB\" = 70, \"1MiB\" = 30 }");
        assert_eq!(w.max(), 1024 * 1024);
        let mut rng = rand::rng();
        let mut small = 0;
        for _ in 0..1000 {
            let s = w.sample(&mut rng);
            assert!(s == 4096 || s == 1024 * 1024);
            small += (s == 4096) as u32;
        }
        assert!((600..800).contains(&small), "{small}");
        for _ in 0..100 {
            let s = SizeSpec::Range(10, 20).sample(&mut rng);
            assert!((10..=20).contains(&s));
        }
        assert!(
            prof("\"4KiB..1KiB\"")
                .unwrap_err()
                .message
                .contains("swapped")
        );
        assert!(prof("{ \"4KiB\" = 0 }").is_err());
        let e = p("[params]\nget_range = \"abc\"\n[[user]]\nname=\"a\"\n[[user.task]]\nop=\"s3:GetObject\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    /// A profile of one class with one task and the given extra lines.
    fn with(class_lines: &str, params: &str) -> Result<Profile, ProfileError> {
        p(&format!(
            "[params]\n{params}\n[[user]]\nname = \"a\"\n{class_lines}\n[[user.task]]\nop = \"s3:PutObject\"\n"
        ))
    }

    #[test]
    fn every_wait_run_would_compute_is_bounded() {
        let e = with("wait = { constant_throughput = 1e-300 }", "").unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.message
                .contains("wait.constant_throughput must be from 0.0000116 (one task a day)"),
            "{e}"
        );
        for bad in ["5e-324", "0.0", "-1.0", "nan", "inf", "1000000.5"] {
            assert!(with(&format!("wait = {{ constant_throughput = {bad} }}"), "").is_err());
        }
        let slowest = with(
            &format!("wait = {{ constant_throughput = {} }}", 1.0 / 86_400.0),
            "",
        )
        .unwrap()
        .users[0]
            .wait;
        let mut rng = rand::rng();
        assert!(slowest.next_wait(Duration::ZERO, &mut rng) <= MAX_WAIT);
        for bad in ["86400.5", "1e300", "-0.5", "nan"] {
            let e = with(&format!("wait = {{ constant = {bad} }}"), "").unwrap_err();
            assert!(e.message.contains("between 0 and 86400 seconds"), "{e}");
        }
        // Values validation refuses never panic at run time either.
        for w in [
            WaitTime::ConstantThroughput(1e-300),
            WaitTime::ConstantThroughput(0.0),
            WaitTime::ConstantThroughput(f64::NAN),
            WaitTime::Between(Duration::ZERO, Duration::MAX),
        ] {
            assert!(w.next_wait(Duration::ZERO, &mut rng) <= MAX_WAIT, "{w:?}");
        }
    }

    #[test]
    fn counts_and_sizes_are_bounded_with_located_messages() {
        // Task weights at their limit cannot sum past u32: the task count is bounded.
        let task = "[[user.task]]\nop = \"s3:ListBuckets\"\nweight = 1000000\n";
        let text = |n: usize| format!("[[user]]\nname = \"a\"\n{}", task.repeat(n));
        let ok = p(&text(MAX_TASKS)).unwrap();
        let sum: u64 = ok.users[0].tasks.iter().map(|t| t.weight as u64).sum();
        assert!(sum <= u32::MAX as u64, "{sum}");
        let e = p(&text(MAX_TASKS + 1)).unwrap_err();
        assert!(e.message.contains("has 1001 tasks; at most 1000"), "{e}");
        assert_eq!(e.line, Some(3 + 3 * MAX_TASKS), "{e}");

        let seq = |n: usize| {
            format!(
                "[[user]]\nname = \"a\"\n[[user.task]]\nsequence = {:?}\n",
                vec!["s3:ListBuckets"; n]
            )
        };
        assert!(p(&seq(MAX_STEPS)).is_ok());
        let e = p(&seq(MAX_STEPS + 1)).unwrap_err();
        assert!(e.message.contains("1001 steps; at most 1000"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");

        let classes = |n: usize| {
            (0..n)
                .map(|i| format!("[[user]]\nname = \"c{i}\"\n{task}"))
                .collect::<String>()
        };
        assert!(p(&classes(MAX_CLASSES)).is_ok());
        let e = p(&classes(MAX_CLASSES + 1)).unwrap_err();
        assert!(e.message.contains("1001 user classes; at most 1000"), "{e}");

        // Object and part sizes: S3's limits, so a payload is never absurd.
        assert_eq!(
            with("", "object_size = \"5GiB\"").unwrap().users[0]
                .params
                .object_size,
            SizeSpec::Fixed(MAX_OBJECT_SIZE)
        );
        for bad in [
            "\"5368709121\"",
            "5368709121",
            "9223372036854775807",
            "\"1KiB..6GiB\"",
            "{ \"1KiB\" = 1, \"6000GB\" = 1 }",
        ] {
            let e = with("", &format!("object_size = {bad}")).unwrap_err();
            assert_eq!(e.line, Some(2), "{bad}: {e}");
            assert!(e.message.contains("more than 5GiB"), "{bad}: {e}");
        }
        let e = with("", "multipart_size = \"20GiB\"\npart_size = \"6GiB\"").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(
            e.message
                .contains("part_size must be above 0 and at most 5GiB"),
            "{e}"
        );
        let e = with("", "multipart_size = \"5000GB\"\npart_size = \"5MiB\"").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("gives 953675 parts"), "{e}");

        let e = with("weight = 1000001", "").unwrap_err();
        assert!(
            e.message
                .contains("weight must be a whole number from 1 to 1000000"),
            "{e}"
        );
        let e = with("fixed_count = 4294967296", "").unwrap_err();
        assert!(
            e.message
                .contains("fixed_count must be between 0 and 1000000"),
            "{e}"
        );
    }

    #[test]
    fn load_refuses_what_is_not_a_small_regular_file() {
        let e = load(Path::new("/dev/zero")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/dev/zero: cannot read profile: it is a character device"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.message.contains("it is a directory"), "{e}");

        // A FIFO nobody writes to: opening it to read would block. Loaded on
        // another thread so a regression fails the test instead of hanging it.
        let fifo = dir.path().join("fifo.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(load(&fifo).map(|_| ()).map_err(|e| e.message));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("load blocked on a FIFO");
        assert_eq!(
            got.unwrap_err(),
            "cannot read profile: it is a FIFO (named pipe), not a regular file"
        );

        let big = dir.path().join("big.toml");
        let mut text =
            "[[user]]\nname = \"a\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n".to_string();
        let at_limit = MAX_PROFILE_BYTES as usize - text.len();
        text.push_str(&"#".repeat(at_limit - 1));
        text.push('\n');
        std::fs::write(&big, &text).unwrap();
        assert!(load(&big).is_ok(), "exactly 1 MiB is allowed");
        text.push('\n');
        std::fs::write(&big, &text).unwrap();
        let e = load(&big).unwrap_err();
        assert_eq!(
            e.message,
            "cannot read profile: it is 1048577 bytes, more than the limit of 1048576 (1 MiB)"
        );
        std::fs::write(&big, [0xff, 0xfe]).unwrap();
        assert!(load(&big).unwrap_err().message.contains("not UTF-8"));
    }

    #[test]
    fn open_classes_take_an_arrival_rate_and_check_explains_mistakes() {
        let c = with("arrival_rate = \"20/s\"", "").unwrap().users[0].clone();
        assert_eq!(
            c.arrival,
            Some(Arrival {
                rate: 20.0,
                process: ArrivalProcess::Constant
            })
        );
        assert_eq!(c.wait, WaitTime::Constant(Duration::ZERO));
        let c = with("arrival_rate = \"90/min\"\narrival = \"poisson\"", "").unwrap();
        assert_eq!(
            c.users[0].arrival,
            Some(Arrival {
                rate: 1.5,
                process: ArrivalProcess::Poisson
            })
        );
        assert_eq!(with("", "").unwrap().users[0].arrival, None);

        // Both a wait and a rate: located at the rate, naming the class.
        let e = with("wait = { constant = 1 }\narrival_rate = \"20/s\"", "").unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(
            e.message
                .contains("user class `a` has both `wait` and `arrival_rate`"),
            "{e}"
        );
        for (rate, says) in [
            ("\"0/s\"", "must be above zero"),
            ("\"-3/s\"", "must be above zero"),
            ("\"20/fortnight\"", "unknown rate unit `/fortnight`"),
            ("\"20\"", "is not a rate"),
            ("20", "arrival_rate needs a unit: write \"20/s\""),
            ("\"2000000/s\"", "out of range"),
        ] {
            let e = with(&format!("arrival_rate = {rate}"), "").unwrap_err();
            assert_eq!(e.line, Some(5), "{rate}: {e}");
            assert!(e.message.contains("user class `a`"), "{rate}: {e}");
            assert!(e.message.contains(says), "{rate}: {e}");
        }
        let e = with("arrival_rate = \"5/s\"\narrival = \"bursty\"", "").unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(
            e.message
                .contains("arrival must be \"constant\" (even spacing) or \"poisson\""),
            "{e}"
        );
        let e = with("arrival = \"poisson\"", "").unwrap_err();
        assert!(e.message.contains("without `arrival_rate`"), "{e}");
    }

    #[test]
    fn slas_are_kept_with_their_place() {
        let text = "description = \"d\"\nsla = [\"p95(ec2:RunInstances) < 2s\",\n  \"throttle_rate<1%\"]\n\
                    [[user]]\nname = \"a\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n";
        let parsed = p(text).unwrap();
        assert_eq!(
            parsed.slas,
            [
                ProfileSla {
                    text: "p95(ec2:RunInstances) < 2s".into(),
                    line: 2,
                    column: 8
                },
                ProfileSla {
                    text: "throttle_rate<1%".into(),
                    line: 3,
                    column: 3
                }
            ]
        );
        assert!(
            p(&text.replace("sla = [", "sla = [\"  \", "))
                .unwrap_err()
                .message
                .contains("an SLA is empty")
        );
        let e = p(&text.replace("sla = [", "sla = [3, ")).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let long = format!(
            "sla = [\"{}\"]\n[[user]]\nname = \"a\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n",
            "p".repeat(300)
        );
        let e = p(&long).unwrap_err();
        assert!(
            e.message.contains("300 characters long; at most 200"),
            "{e}"
        );
    }

    #[test]
    fn wait_times() {
        let mut rng = rand::rng();
        let pacing = WaitTime::ConstantPacing(Duration::from_secs(10));
        assert_eq!(
            pacing.next_wait(Duration::from_secs(3), &mut rng),
            Duration::from_secs(7)
        );
        assert_eq!(
            pacing.next_wait(Duration::from_secs(30), &mut rng),
            Duration::ZERO
        );
        let thr = WaitTime::ConstantThroughput(4.0);
        assert_eq!(
            thr.next_wait(Duration::from_millis(50), &mut rng),
            Duration::from_millis(200)
        );
        let b = WaitTime::Between(Duration::from_secs(5), Duration::from_secs(10));
        for _ in 0..100 {
            let w = b.next_wait(Duration::ZERO, &mut rng);
            assert!(w >= Duration::from_secs(5) && w <= Duration::from_secs(10));
        }
    }
}
