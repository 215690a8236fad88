//! Locust's master/worker wire protocol, as Locust 2.x speaks it (see
//! `locust-protocol.md`): each ZeroMQ payload is msgpack
//! `[type, data, node_id]`. This module encodes and decodes those
//! envelopes, the `spawn` order, and the `stats` report: Locust's fields
//! (millisecond buckets rounded as Python rounds them, errors keyed as
//! Locust keys them) so a stock master counts them, plus each entry's exact
//! histogram (its recorded values, sparse) and cloudswarm's own figures under a `cloudswarm` key that
//! a stock master ignores, so cloudswarm's master merges them exactly.

use std::collections::BTreeMap;

use rmpv::Value;

use super::msgpack::{self, Head, Reader, V};
use sha2::{Digest, Sha256};

use crate::naming::RunId;
use crate::resources::{Kind, KindCounts};
use crate::stats::{Delta, Entry, ErrorStat, StatsData};

/// What a worker sends as its version in `client_ready`: Locust masters
/// accept `-1` without comparing versions.
pub const VERSION_ANY: i64 = -1;
/// The extension key: in a stats report, in each entry, in `spawn`, and in
/// the `stop` of the worker told to sweep for missing ones (`sweep_for`).
pub const EXT: &str = "cloudswarm";
/// Largest payload either side accepts (a stats report of a few hundred
/// entries with their histograms is far below it).
pub const MAX_PAYLOAD: usize = 16 << 20;

/// One message: its type, its data, and the worker's node id (in both directions).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: String,
    pub data: Value,
    pub node_id: String,
}

impl Message {
    pub fn new(kind: &str, data: Value, node_id: &str) -> Message {
        Message {
            kind: kind.to_string(),
            data,
            node_id: node_id.to_string(),
        }
    }

    /// The msgpack payload: `[type, data, node_id]`.
    pub fn encode(&self) -> Vec<u8> {
        envelope(&self.kind, &self.data, &self.node_id)
    }

    /// Reads a payload; says what is wrong with a malformed one.
    pub fn decode(bytes: &[u8]) -> Result<Message, String> {
        if bytes.len() > MAX_PAYLOAD {
            return Err(format!("message of {} bytes is too large", bytes.len()));
        }
        let mut rd = bytes;
        let v = rmpv::decode::read_value_with_max_depth(&mut rd, 16)
            .map_err(|e| format!("not msgpack: {e}"))?;
        if !rd.is_empty() {
            return Err(format!("{} bytes after the message", rd.len()));
        }
        let Value::Array(mut parts) = v else {
            return Err("not a [type, data, node_id] array".into());
        };
        if parts.len() != 3 {
            return Err(format!(
                "{} elements, expected [type, data, node_id]",
                parts.len()
            ));
        }
        let node_id = match parts.pop() {
            Some(Value::String(s)) => s.into_str().ok_or("node id is not UTF-8")?,
            _ => return Err("node id is not a string".into()),
        };
        let data = parts.pop().unwrap_or(Value::Nil);
        let kind = match parts.pop() {
            Some(Value::String(s)) => s.into_str().ok_or("type is not UTF-8")?,
            _ => return Err("type is not a string".into()),
        };
        Ok(Message {
            kind,
            data,
            node_id,
        })
    }
}

/// The msgpack payload `[type, data, node_id]`, written straight from
/// its parts (the bytes `Message::encode` gives, without copying `data`).
pub fn envelope(kind: &str, data: &Value, node_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(kind.len() + node_id.len() + 16);
    out.push(0x93);
    put_str(&mut out, kind);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, data);
    put_str(&mut out, node_id);
    out
}

/// A msgpack string with the shortest header (as `rmp` writes it).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65_536 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// A frame from a worker, read in place: the envelope's type and node id
/// borrowed from the frame, and its data read as its type needs (a
/// report or a heartbeat straight into their figures, anything else into
/// a `Value`). Refused exactly when [`Message::decode`] refuses the frame
/// or, for `stats`, when [`Report::parse`] refuses its data.
#[derive(Debug)]
pub struct Incoming<'a> {
    pub kind: &'a str,
    pub node_id: &'a str,
    pub body: Body<'a>,
}

/// The data of an [`Incoming`] frame.
#[derive(Debug)]
pub enum Body<'a> {
    Stats(Box<Report>),
    Heartbeat(Heartbeat<'a>),
    Other(Value),
}

/// A worker's heartbeat: its state and load.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat<'a> {
    /// As sent (not yet cut to the 20 characters a master keeps).
    pub state: &'a str,
    /// Finite, else 0.
    pub cpu: f64,
    pub mem: u64,
}

/// The depth `Message::decode` allows a frame (rmpv's count).
const MAX_DEPTH: u16 = 16;

impl<'a> Incoming<'a> {
    /// Reads a worker's frame; says what is wrong with a malformed one (or
    /// with a malformed report).
    pub fn decode(bytes: &'a [u8]) -> Result<Incoming<'a>, String> {
        use super::msgpack::{Head, Reader};
        if bytes.len() > MAX_PAYLOAD {
            return Err(format!("message of {} bytes is too large", bytes.len()));
        }
        let bad = |e: super::msgpack::Error| format!("not msgpack: {e}");
        let mut rd = Reader::new(bytes);
        let depth = match rd.head(MAX_DEPTH).map_err(bad)? {
            Head::Array { len: 3, depth } => depth,
            Head::Array { len, depth } => {
                // As rmpv would, read it all before saying what is wrong.
                for _ in 0..len {
                    rd.skip(depth).map_err(bad)?;
                }
                return Err(format!("{len} elements, expected [type, data, node_id]"));
            }
            _ => return Err("not a [type, data, node_id] array".into()),
        };
        let kind = rd.value(depth).map_err(bad)?;
        let kind = match kind.str_bytes() {
            Some(b) => std::str::from_utf8(b).map_err(|_| "type is not UTF-8")?,
            None => return Err("type is not a string".into()),
        };
        let body = match kind {
            "stats" => Body::Stats(Box::new(Report::read(&mut rd, depth)?)),
            "heartbeat" => Body::Heartbeat(Heartbeat::read(rd.value(depth).map_err(bad)?)),
            _ => {
                let v = rmpv::decode::read_value_with_max_depth(&mut rd.rest, depth as usize)
                    .map_err(|e| format!("not msgpack: {e}"))?;
                Body::Other(v)
            }
        };
        let node_id = match rd.value(depth).map_err(bad)?.str_bytes() {
            Some(b) => std::str::from_utf8(b).map_err(|_| "node id is not UTF-8")?,
            None => return Err("node id is not a string".into()),
        };
        if !rd.rest.is_empty() {
            return Err(format!("{} bytes after the message", rd.rest.len()));
        }
        Ok(Incoming {
            kind,
            node_id,
            body,
        })
    }
}

impl<'a> Heartbeat<'a> {
    fn read(data: super::msgpack::V<'a>) -> Heartbeat<'a> {
        let [state, cpu, mem] = match data.map() {
            Some(m) => m.fields(["state", "current_cpu_usage", "current_memory_usage"]),
            None => [None; 3],
        };
        Heartbeat {
            state: state.and_then(|v| v.as_str()).unwrap_or(""),
            cpu: cpu
                .and_then(|v| v.num())
                .filter(|c| c.is_finite())
                .unwrap_or(0.0),
            mem: mem.and_then(|v| v.count()).unwrap_or(0),
        }
    }
}

/// A msgpack map with string keys, in the given order.
pub fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// The value under string key `key` of a map, if any.
pub fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Map(m) => m
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// A number of either msgpack kind (Python sends ints or floats) as f64.
pub fn num(v: &Value) -> Option<f64> {
    match v {
        Value::F64(f) => Some(*f),
        Value::F32(f) => Some(*f as f64),
        Value::Integer(i) => i.as_f64(),
        _ => None,
    }
}

/// A non-negative count.
pub fn count(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => i.as_u64(),
        Value::F64(f) if *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19 => Some(*f as u64),
        _ => None,
    }
}

/// A `spawn` order: absolute users per class for this worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Spawn {
    pub timestamp: f64,
    pub classes: Vec<(String, u64)>,
    /// Seconds users may take to finish their task when stopped (nil: 0).
    pub stop_timeout: f64,
    /// The run to work under (cloudswarm's master says; a stock master does not).
    pub run_id: Option<RunId>,
    /// The profile to run, (name, TOML text): cloudswarm's master sends it.
    pub profile: Option<(String, String)>,
    /// This worker's share of the open classes' arrival rates (per
    /// second), by class: cloudswarm's master sends it; a class left out
    /// keeps the rate it has (at first, the profile's).
    pub arrival_rates: Vec<(String, f64)>,
}

impl Spawn {
    pub fn parse(data: &Value) -> Result<Spawn, String> {
        let timestamp = get(data, "timestamp")
            .and_then(num)
            .filter(|t| t.is_finite())
            .ok_or("spawn without a timestamp")?;
        let Some(Value::Map(m)) = get(data, "user_classes_count") else {
            return Err("spawn without user_classes_count".into());
        };
        let mut classes = Vec::with_capacity(m.len());
        for (k, v) in m {
            let name = k.as_str().ok_or("a class name is not a string")?;
            let n = count(v).ok_or_else(|| format!("class `{name}`: count is not a number"))?;
            classes.push((name.to_string(), n));
        }
        let stop_timeout = get(data, "stop_timeout")
            .and_then(num)
            .filter(|t| t.is_finite() && *t >= 0.0)
            .unwrap_or(0.0);
        let ext = get(data, EXT);
        let run_id = match ext.and_then(|e| get(e, "run_id")) {
            Some(v) => Some(RunId::parse(v.as_str().ok_or("run id is not a string")?)?),
            None => None,
        };
        let profile = match ext.and_then(|e| get(e, "profile")) {
            Some(p) => {
                let s = |k: &str| get(p, k).and_then(Value::as_str).map(str::to_string);
                Some((
                    s("name").ok_or("profile without a name")?,
                    s("text").ok_or("profile without its text")?,
                ))
            }
            None => None,
        };
        let mut arrival_rates = vec![];
        match ext.and_then(|e| get(e, "arrival_rates")) {
            Some(Value::Map(m)) => {
                for (k, v) in m {
                    let name = k
                        .as_str()
                        .ok_or("an arrival rate's class is not a string")?;
                    let r = num(v)
                        .filter(|r| r.is_finite() && *r > 0.0)
                        .ok_or_else(|| format!("class `{name}`: arrival rate is not above 0"))?;
                    arrival_rates.push((name.to_string(), r));
                }
            }
            Some(_) => return Err("arrival_rates is not a map".into()),
            None => {}
        }
        Ok(Spawn {
            timestamp,
            classes,
            stop_timeout,
            run_id,
            profile,
            arrival_rates,
        })
    }

    /// The message data, as a Locust master sends it (plus the run id).
    pub fn to_value(&self) -> Value {
        let mut pairs = vec![
            ("timestamp", Value::F64(self.timestamp)),
            (
                "user_classes_count",
                Value::Map(
                    self.classes
                        .iter()
                        .map(|(c, n)| (Value::from(c.as_str()), Value::from(*n)))
                        .collect(),
                ),
            ),
            ("host", Value::Nil),
            ("stop_timeout", Value::F64(self.stop_timeout)),
            ("parsed_options", Value::Map(vec![])),
        ];
        let mut ext = vec![];
        if let Some(r) = &self.run_id {
            ext.push(("run_id", Value::from(r.as_str())));
        }
        if let Some((name, text)) = &self.profile {
            ext.push((
                "profile",
                map([
                    ("name", Value::from(name.as_str())),
                    ("text", Value::from(text.as_str())),
                ]),
            ));
        }
        if !self.arrival_rates.is_empty() {
            ext.push((
                "arrival_rates",
                Value::Map(
                    self.arrival_rates
                        .iter()
                        .map(|(c, r)| (Value::from(c.as_str()), Value::F64(*r)))
                        .collect(),
                ),
            ));
        }
        if !ext.is_empty() {
            pairs.push((EXT, map(ext)));
        }
        map(pairs)
    }
}

/// Python's `round` (half to even) as Locust applies it to a response time
/// in ms: whole ms below 100, then 2, then 3 significant digits.
pub fn locust_bucket(ms: f64) -> u64 {
    let step = if ms < 100.0 {
        1.0
    } else if ms < 1000.0 {
        10.0
    } else if ms < 10_000.0 {
        100.0
    } else {
        1000.0
    };
    ((ms / step).round_ties_even() * step).max(0.0) as u64
}

/// Python's `repr` of a str: what Locust hashes into an error's key.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Locust's key of an error: `sha256_hex(f"{method}.{name}.{error!r}")`.
pub fn error_key(method: &str, name: &str, error: &str) -> String {
    let digest = Sha256::digest(format!("{method}.{name}.{}", py_repr(error)).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The service an entry belongs to (`ec2`, `s3`): Locust's "method" column.
fn method_of(name: &str) -> &str {
    name.split(':').next().unwrap_or("")
}

fn int_map(m: &BTreeMap<u64, u64>) -> Value {
    Value::Map(
        m.iter()
            .map(|(k, v)| (Value::from(*k), Value::from(*v)))
            .collect(),
    )
}

/// Most (value, count) pairs one entry of a report may carry (a histogram
/// of cloudswarm's bounds has fewer buckets).
const MAX_VALUES: usize = 40_000;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= ((byte & 0x7f) as u64).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// An entry's recorded values, (µs, count) ascending, as LEB128 varints:
/// the gap from the previous value, then the count.
pub fn encode_values(values: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    let mut prev = 0;
    for &(v, n) in values {
        put_varint(&mut out, v.saturating_sub(prev));
        put_varint(&mut out, n);
        prev = v;
    }
    out
}

/// Reads [`encode_values`]; None for bytes that are not such a list.
pub fn decode_values(mut b: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while !b.is_empty() {
        if out.len() >= MAX_VALUES {
            return None;
        }
        at = at.checked_add(get_varint(&mut b)?)?;
        out.push((at, get_varint(&mut b)?));
    }
    Some(out)
}

/// One entry in Locust's format (its figures since the last report).
fn entry_value(name: &str, method: &str, e: &Entry, start_time: f64) -> Value {
    let n = e.num_requests;
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for v in e.hist.iter_recorded() {
        let ms = e.hist.median_equivalent(v.value_iterated_to()) as f64 / 1000.0;
        *buckets.entry(locust_bucket(ms)).or_default() += v.count_at_value();
    }
    let (mut reqs, mut fails) = (BTreeMap::new(), BTreeMap::new());
    for (sec, r, f) in e.per_second() {
        if r > 0 {
            reqs.insert(sec, r);
        }
        if f > 0 {
            fails.insert(sec, f);
        }
    }
    map([
        ("name", Value::from(name)),
        ("method", Value::from(method)),
        (
            "last_request_timestamp",
            if n > 0 {
                Value::F64(e.last_request)
            } else {
                Value::Nil
            },
        ),
        ("start_time", Value::F64(start_time)),
        ("num_requests", Value::from(n)),
        ("num_none_requests", Value::from(0u64)),
        ("num_failures", Value::from(e.num_failures)),
        (
            "total_response_time",
            Value::F64(e.total_us as f64 / 1000.0),
        ),
        ("max_response_time", Value::F64(e.max_us as f64 / 1000.0)),
        (
            "min_response_time",
            if n > 0 {
                Value::F64(e.min_us as f64 / 1000.0)
            } else {
                Value::Nil
            },
        ),
        (
            "total_content_length",
            Value::from(e.bytes_sent + e.bytes_received),
        ),
        ("response_times", int_map(&buckets)),
        ("num_reqs_per_sec", int_map(&reqs)),
        ("num_fail_per_sec", int_map(&fails)),
        (
            EXT,
            map([
                ("values", Value::Binary(encode_values(&e.values()))),
                ("throttled", Value::from(e.num_throttled)),
                ("total_us", Value::from(e.total_us)),
                ("min_us", Value::from(e.min_us)),
                ("max_us", Value::from(e.max_us)),
                ("sent", Value::from(e.bytes_sent)),
                ("received", Value::from(e.bytes_received)),
                ("first", Value::F64(e.first_request)),
            ]),
        ),
    ])
}

/// What a cloudswarm worker's report says besides figures: its run's
/// resources (counts so far) and, once its clean-up is done, what the
/// cloud still held (`Some(None)`: unknown, the listing failed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holdings {
    pub resources: Vec<(Kind, KindCounts)>,
    /// Creates sent and not yet answered, per kind.
    pub creating: Vec<(Kind, u64)>,
    pub left: Option<Option<u64>>,
}

/// A worker's `stats` report: the figures recorded since the last one, in
/// Locust's format, with cloudswarm's exact figures alongside.
pub fn stats_report(
    delta: &StatsData,
    classes: &[(String, u64)],
    run_id: &str,
    held: &Holdings,
) -> Value {
    let stats: Vec<Value> = delta
        .entries
        .iter()
        .filter(|(_, e)| e.num_requests > 0 || e.num_failures > 0)
        .map(|(name, e)| entry_value(name, method_of(name), e, delta.started))
        .collect();
    let total = entry_value("Aggregated", "", &delta.total(), delta.started);
    let errors = Value::Map(
        delta
            .errors
            .values()
            .map(|err| {
                let method = method_of(&err.name);
                let key = error_key(method, &err.name, &err.code);
                let v = map([
                    ("name", Value::from(err.name.as_str())),
                    ("method", Value::from(method)),
                    ("error", Value::from(err.code.as_str())),
                    ("occurrences", Value::from(err.count)),
                    ("first_seen", Value::F64(err.first_seen)),
                    ("last_seen", Value::F64(err.last_seen)),
                ]);
                (Value::from(key), v)
            })
            .collect(),
    );
    let ours_errors = Value::Array(
        delta
            .errors
            .values()
            .map(|e| {
                map([
                    ("name", Value::from(e.name.as_str())),
                    ("code", Value::from(e.code.as_str())),
                    ("message", Value::from(e.message.as_str())),
                    ("count", Value::from(e.count)),
                    ("throttled", Value::Boolean(e.throttled)),
                    ("first_seen", Value::F64(e.first_seen)),
                    ("last_seen", Value::F64(e.last_seen)),
                ])
            })
            .collect(),
    );
    let capped = Value::Map(
        delta
            .capped
            .iter()
            .map(|(k, n)| (Value::from(k.as_str()), Value::from(*n)))
            .collect(),
    );
    // Arrivals of open classes that found no free user, per class.
    let dropped = Value::Map(
        delta
            .dropped
            .iter()
            .map(|(k, n)| (Value::from(k.as_str()), Value::from(*n)))
            .collect(),
    );
    let users: u64 = classes.iter().map(|(_, n)| n).sum();
    map([
        ("stats", Value::Array(stats)),
        ("stats_total", total),
        ("errors", errors),
        (
            "user_classes_count",
            Value::Map(
                classes
                    .iter()
                    .map(|(c, n)| (Value::from(c.as_str()), Value::from(*n)))
                    .collect(),
            ),
        ),
        ("user_count", Value::from(users)),
        (
            EXT,
            map([
                ("run_id", Value::from(run_id)),
                ("errors", ours_errors),
                ("capped", capped),
                ("dropped", dropped),
                ("user_panics", Value::from(delta.user_panics)),
                (
                    "resources",
                    Value::Map(
                        held.resources
                            .iter()
                            .map(|(k, c)| {
                                let creating = held
                                    .creating
                                    .iter()
                                    .find(|(x, _)| x == k)
                                    .map_or(0, |(_, n)| *n);
                                let v = Value::Array(vec![
                                    Value::from(c.created),
                                    Value::from(c.deleted),
                                    Value::from(c.alive),
                                    Value::from(creating),
                                ]);
                                (Value::from(k.as_str()), v)
                            })
                            .collect(),
                    ),
                ),
                (
                    "left",
                    match held.left {
                        None => Value::Boolean(false),
                        Some(None) => Value::Nil,
                        Some(Some(n)) => Value::from(n),
                    },
                ),
            ]),
        ),
    ])
}

/// What a worker's `stats` report says, read back: figures to add into a
/// run's [`StatsData`] ([`Report::add_to`]).
#[derive(Debug, Default)]
pub struct Report {
    /// Per entry, its figures since the worker's last report.
    pub entries: Vec<(String, Delta)>,
    pub errors: Vec<ErrorStat>,
    pub capped: Vec<(String, u64)>,
    pub dropped: Vec<(String, u64)>,
    pub user_panics: u64,
    /// Users per class on the worker.
    pub classes: Vec<(String, u64)>,
    /// True when every entry came with its exact histogram (a cloudswarm
    /// worker); false when Locust's ms buckets had to stand in.
    pub exact: bool,
    /// The worker's run id (empty: none yet, or not a cloudswarm worker).
    pub run_id: String,
    pub held: Holdings,
}

/// Reads one entry of a report in place (see [`Report::read`]): its name,
/// its figures, and whether they came with their exact histogram.
fn read_entry(rd: &mut Reader<'_>, depth: u16) -> Result<(String, Delta, bool), String> {
    /// The fields read (the first of each, as `get` finds it); Locust's
    /// buckets (at `BUCKETS`) are read as they come, in the one pass.
    const KEYS: [&str; 13] = [
        "name",
        "num_requests",
        "num_failures",
        "last_request_timestamp",
        EXT,
        "response_times",
        "total_response_time",
        "max_response_time",
        "min_response_time",
        "total_content_length",
        "start_time",
        "num_reqs_per_sec",
        "num_fail_per_sec",
    ];
    const BUCKETS: usize = 5;
    let bad = |e: msgpack::Error| format!("not msgpack: {e}");
    let (pairs, d) = match rd.head(depth).map_err(bad)? {
        Head::Map { len, depth } => (len, depth),
        _ => return Err("an entry without a name".into()),
    };
    let mut f: [Option<V<'_>>; 13] = [None; 13];
    let mut buckets: Vec<(u64, u64)> = Vec::new();
    for _ in 0..pairs {
        let k = rd.value(d).map_err(bad)?;
        let slot = k.str_bytes().and_then(|k| msgpack::key_index(&KEYS, k));
        match slot.filter(|&i| f[i].is_none()) {
            Some(BUCKETS) => match rd.head(d).map_err(bad)? {
                Head::Map { len, depth: bd } => {
                    f[BUCKETS] = Some(V::Nil);
                    buckets.reserve(len.min(MAX_VALUES).min(rd.rest.len() / 2));
                    for i in 0..len {
                        let at = rd.value(bd).map_err(bad)?;
                        let n = rd.value(bd).map_err(bad)?;
                        if i >= MAX_VALUES {
                            continue;
                        }
                        let (Some(at), Some(n)) = (at.num(), n.count()) else {
                            continue;
                        };
                        if at.is_finite() {
                            buckets.push(((at.max(0.0) * 1000.0) as u64, n));
                        }
                    }
                }
                Head::Array { len, depth: bd } => {
                    f[BUCKETS] = Some(V::Nil);
                    for _ in 0..len {
                        rd.skip(bd).map_err(bad)?;
                    }
                }
                Head::Scalar(v) => f[BUCKETS] = Some(v),
            },
            Some(i) => f[i] = Some(rd.value(d).map_err(bad)?),
            None => rd.skip(d).map_err(bad)?,
        }
    }
    let [
        name,
        requests,
        failures,
        last,
        ext,
        _,
        total_ms,
        max_ms,
        min_ms,
        content,
        start,
        reqs,
        fails,
    ] = f;
    let name = name
        .and_then(|v| v.as_str())
        .ok_or("an entry without a name")?;
    if name.len() > 200 {
        return Err("an entry name longer than 200 bytes".into());
    }
    let c = |v: Option<V<'_>>| v.and_then(|v| v.count()).unwrap_or(0);
    let time = |v: Option<V<'_>>| v.and_then(|v| v.num()).filter(|t| t.is_finite());
    let mut d = Delta {
        requests: c(requests),
        failures: c(failures),
        last: time(last).unwrap_or(0.0),
        ..Delta::default()
    };
    let x = ext.and_then(|x| x.map()).map(|m| {
        m.fields([
            "values",
            "throttled",
            "total_us",
            "min_us",
            "max_us",
            "sent",
            "received",
            "first",
        ])
    });
    let values = x
        .and_then(|x| match x[0] {
            Some(V::Bin(b)) => decode_values(b),
            _ => None,
        })
        .filter(|vals| vals.iter().map(|p| p.1).sum::<u64>() == d.requests);
    let exact = values.is_some();
    match (values, x) {
        (
            Some(vals),
            Some(
                [
                    _,
                    throttled,
                    total_us,
                    min_us,
                    max_us,
                    sent,
                    received,
                    first,
                ],
            ),
        ) => {
            d.values = vals;
            d.throttled = c(throttled);
            d.total_us = c(total_us);
            d.min_us = min_us.and_then(|v| v.count()).unwrap_or(u64::MAX);
            d.max_us = c(max_us);
            d.sent = c(sent);
            d.received = c(received);
            d.first = time(first).unwrap_or(d.last);
        }
        _ => {
            // A worker that is not cloudswarm: its ms buckets stand in.
            let ms = |v: Option<V<'_>>| {
                v.and_then(|v| v.num())
                    .filter(|f| f.is_finite() && *f >= 0.0)
            };
            d.values = buckets;
            d.total_us = (ms(total_ms).unwrap_or(0.0) * 1000.0) as u64;
            d.max_us = (ms(max_ms).unwrap_or(0.0) * 1000.0) as u64;
            d.min_us = ms(min_ms).map_or(u64::MAX, |m| (m * 1000.0) as u64);
            d.received = c(content);
            d.first = time(start).unwrap_or(d.last);
        }
    }
    // Per second, as a map (later keys win) of at most 64 pairs read.
    let per = |v: Option<V<'_>>, out: &mut Vec<(u64, u64)>| {
        if let Some(V::Map(m)) = v {
            out.extend(
                m.pairs()
                    .filter_map(|(s, n)| Some((s.count()?, n.count()?)))
                    .take(64),
            );
            // Stable: of equal seconds, the last read stays last.
            out.sort_by_key(|p| p.0);
            let mut keep = 0;
            for i in 0..out.len() {
                if i + 1 < out.len() && out[i + 1].0 == out[i].0 {
                    continue;
                }
                out[keep] = out[i];
                keep += 1;
            }
            out.truncate(keep);
        }
    };
    let (mut r, mut f) = (Vec::new(), Vec::new());
    per(reqs, &mut r);
    per(fails, &mut f);
    d.per_sec = r
        .into_iter()
        .map(|(sec, n)| {
            let failed = f.binary_search_by_key(&sec, |p| p.0).map_or(0, |i| f[i].1);
            (sec, n, failed)
        })
        .collect();
    Ok((name.to_string(), d, exact))
}

/// Reads one entry of a report held as a `Value` tree (the reader the
/// master used before [`Report::read`]; the tests compare the two).
#[cfg(test)]
fn entry_from(v: &Value) -> Result<(String, Delta, bool), String> {
    let name = get(v, "name")
        .and_then(Value::as_str)
        .ok_or("an entry without a name")?
        .to_string();
    if name.len() > 200 {
        return Err("an entry name longer than 200 bytes".into());
    }
    let c = |k: &str| get(v, k).and_then(count).unwrap_or(0);
    let mut d = Delta {
        requests: c("num_requests"),
        failures: c("num_failures"),
        last: get(v, "last_request_timestamp")
            .and_then(num)
            .filter(|t| t.is_finite())
            .unwrap_or(0.0),
        ..Delta::default()
    };
    let ext = get(v, EXT);
    let values = ext
        .and_then(|x| get(x, "values"))
        .and_then(|h| match h {
            Value::Binary(b) => decode_values(b),
            _ => None,
        })
        .filter(|vals| vals.iter().map(|p| p.1).sum::<u64>() == d.requests);
    let exact = values.is_some();
    match (values, ext) {
        (Some(vals), Some(x)) => {
            let xc = |k: &str| get(x, k).and_then(count).unwrap_or(0);
            d.values = vals;
            d.throttled = xc("throttled");
            d.total_us = xc("total_us");
            d.min_us = get(x, "min_us").and_then(count).unwrap_or(u64::MAX);
            d.max_us = xc("max_us");
            d.sent = xc("sent");
            d.received = xc("received");
            d.first = get(x, "first")
                .and_then(num)
                .filter(|t| t.is_finite())
                .unwrap_or(d.last);
        }
        _ => {
            // A worker that is not cloudswarm: its ms buckets stand in.
            let ms = |k: &str| {
                get(v, k)
                    .and_then(num)
                    .filter(|f| f.is_finite() && *f >= 0.0)
            };
            if let Some(Value::Map(b)) = get(v, "response_times") {
                for (k, n) in b.iter().take(MAX_VALUES) {
                    let (Some(at), Some(n)) = (num(k), count(n)) else {
                        continue;
                    };
                    if at.is_finite() {
                        d.values.push(((at.max(0.0) * 1000.0) as u64, n));
                    }
                }
            }
            d.total_us = (ms("total_response_time").unwrap_or(0.0) * 1000.0) as u64;
            d.max_us = (ms("max_response_time").unwrap_or(0.0) * 1000.0) as u64;
            d.min_us = ms("min_response_time").map_or(u64::MAX, |m| (m * 1000.0) as u64);
            d.received = c("total_content_length");
            d.first = get(v, "start_time")
                .and_then(num)
                .filter(|t| t.is_finite())
                .unwrap_or(d.last);
        }
    }
    let per = |k: &str| -> BTreeMap<u64, u64> {
        match get(v, k) {
            Some(Value::Map(m)) => m
                .iter()
                .filter_map(|(s, n)| Some((count(s)?, count(n)?)))
                .take(64)
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let fails = per("num_fail_per_sec");
    d.per_sec = per("num_reqs_per_sec")
        .into_iter()
        .map(|(sec, r)| (sec, r, fails.get(&sec).copied().unwrap_or(0)))
        .collect();
    Ok((name, d, exact))
}

impl Report {
    /// Reads a `stats` report held as a `Value` tree (from a cloudswarm
    /// worker or a stock one): what [`Report::read`] does in place, kept
    /// for the tests to compare against.
    #[cfg(test)]
    pub fn parse(data: &Value) -> Result<Report, String> {
        let mut stats = Report::default();
        let Some(Value::Array(entries)) = get(data, "stats") else {
            return Err("stats without a `stats` list".into());
        };
        if entries.len() > 10_000 {
            return Err(format!("{} entries in one report", entries.len()));
        }
        let mut exact = true;
        for v in entries {
            let (name, d, x) = entry_from(v)?;
            exact &= x;
            stats.entries.push((name, d));
        }
        let ext = get(data, EXT);
        match ext.and_then(|x| get(x, "errors")) {
            Some(Value::Array(errs)) => {
                for v in errs.iter().take(10_000) {
                    let s = |k: &str| get(v, k).and_then(Value::as_str).unwrap_or("").to_string();
                    let f = |k: &str| get(v, k).and_then(num).unwrap_or(0.0);
                    stats.errors.push(ErrorStat {
                        name: s("name"),
                        code: s("code"),
                        message: s("message"),
                        count: get(v, "count").and_then(count).unwrap_or(0),
                        throttled: get(v, "throttled")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        first_seen: f("first_seen"),
                        last_seen: f("last_seen"),
                    });
                }
            }
            _ => {
                if let Some(Value::Map(errs)) = get(data, "errors") {
                    for (_, v) in errs.iter().take(10_000) {
                        let s =
                            |k: &str| get(v, k).and_then(Value::as_str).unwrap_or("").to_string();
                        let f = |k: &str| get(v, k).and_then(num).unwrap_or(0.0);
                        let error = s("error");
                        stats.errors.push(ErrorStat {
                            name: s("name"),
                            code: error.clone(),
                            message: error,
                            count: get(v, "occurrences").and_then(count).unwrap_or(0),
                            throttled: false,
                            first_seen: f("first_seen"),
                            last_seen: f("last_seen"),
                        });
                    }
                }
            }
        }
        if let Some(x) = ext {
            if let Some(Value::Map(m)) = get(x, "capped") {
                for (k, n) in m.iter().take(1000) {
                    if let (Some(k), Some(n)) = (k.as_str(), count(n)) {
                        stats.capped.push((k.to_string(), n));
                    }
                }
            }
            if let Some(Value::Map(m)) = get(x, "dropped") {
                for (k, n) in m.iter().take(1000) {
                    if let (Some(k), Some(n)) = (k.as_str(), count(n)) {
                        stats.dropped.push((k.to_string(), n));
                    }
                }
            }
            stats.user_panics = get(x, "user_panics").and_then(count).unwrap_or(0);
        }
        let mut held = Holdings::default();
        let mut run_id = String::new();
        if let Some(x) = ext {
            run_id = get(x, "run_id")
                .and_then(Value::as_str)
                .filter(|r| RunId::parse(r).is_ok())
                .unwrap_or("")
                .to_string();
            if let Some(Value::Map(m)) = get(x, "resources") {
                for (k, v) in m {
                    let Some(kind) = k
                        .as_str()
                        .and_then(|k| Kind::ALL.into_iter().find(|x| x.as_str() == k))
                    else {
                        continue;
                    };
                    let Value::Array(a) = v else { continue };
                    let n = |i: usize| a.get(i).and_then(count).unwrap_or(0);
                    held.resources.push((
                        kind,
                        KindCounts {
                            created: n(0),
                            deleted: n(1),
                            alive: n(2),
                        },
                    ));
                    held.creating.push((kind, n(3)));
                }
            }
            held.left = match get(x, "left") {
                Some(Value::Nil) => Some(None),
                Some(v) => count(v).map(Some),
                None => None,
            };
        }
        let classes = match get(data, "user_classes_count") {
            Some(Value::Map(m)) => m
                .iter()
                .take(1000)
                .filter_map(|(k, n)| Some((k.as_str()?.to_string(), count(n)?)))
                .collect(),
            _ => vec![],
        };
        stats.classes = classes;
        stats.exact = exact;
        stats.run_id = run_id;
        stats.held = held;
        Ok(stats)
    }

    /// Reads a `stats` report in place from `rd` (the data of a frame,
    /// with `depth` left), as [`Report::parse`] reads its `Value` tree: the
    /// same figures, refused for the same reasons; malformed msgpack is
    /// refused too. Entries go straight into their figures, and fields a
    /// master does not use are stepped over.
    pub fn read(rd: &mut Reader<'_>, depth: u16) -> Result<Report, String> {
        let bad = |e: msgpack::Error| format!("not msgpack: {e}");
        let (pairs, d) = match rd.head(depth).map_err(bad)? {
            Head::Map { len, depth } => (len, depth),
            _ => return Err("stats without a `stats` list".into()),
        };
        let mut stats = Report::default();
        let mut exact = true;
        let mut seen = false;
        let (mut ext, mut errors, mut classes) = (None, None, None);
        for _ in 0..pairs {
            let k = rd.value(d).map_err(bad)?;
            match k.str_bytes() {
                Some(b"stats") if !seen => {
                    seen = true;
                    let (n, ed) = match rd.head(d).map_err(bad)? {
                        Head::Array { len, depth } => (len, depth),
                        _ => return Err("stats without a `stats` list".into()),
                    };
                    if n > 10_000 {
                        return Err(format!("{n} entries in one report"));
                    }
                    stats.entries.reserve(n.min(rd.rest.len()));
                    for _ in 0..n {
                        let (name, delta, x) = read_entry(rd, ed)?;
                        exact &= x;
                        stats.entries.push((name, delta));
                    }
                }
                Some(b"cloudswarm") if ext.is_none() => ext = Some(rd.value(d).map_err(bad)?),
                Some(b"errors") if errors.is_none() => errors = Some(rd.value(d).map_err(bad)?),
                Some(b"user_classes_count") if classes.is_none() => {
                    classes = Some(rd.value(d).map_err(bad)?)
                }
                _ => rd.skip(d).map_err(bad)?,
            }
        }
        if !seen {
            return Err("stats without a `stats` list".into());
        }
        let [x_errors, capped, dropped, panics, run_id, resources, left] =
            match ext.and_then(|x| x.map()) {
                Some(m) => m.fields([
                    "errors",
                    "capped",
                    "dropped",
                    "user_panics",
                    "run_id",
                    "resources",
                    "left",
                ]),
                None => [None; 7],
            };
        let s = |v: Option<V<'_>>| v.and_then(|v| v.as_str()).unwrap_or("").to_string();
        let f = |v: Option<V<'_>>| v.and_then(|v| v.num()).unwrap_or(0.0);
        match x_errors {
            Some(V::Array(errs)) => {
                for v in errs.items().take(10_000) {
                    let [name, code, message, n, throttled, first, last] = match v.map() {
                        Some(m) => m.fields([
                            "name",
                            "code",
                            "message",
                            "count",
                            "throttled",
                            "first_seen",
                            "last_seen",
                        ]),
                        None => [None; 7],
                    };
                    stats.errors.push(ErrorStat {
                        name: s(name),
                        code: s(code),
                        message: s(message),
                        count: n.and_then(|v| v.count()).unwrap_or(0),
                        throttled: throttled.and_then(|v| v.as_bool()).unwrap_or(false),
                        first_seen: f(first),
                        last_seen: f(last),
                    });
                }
            }
            _ => {
                if let Some(V::Map(errs)) = errors {
                    for (_, v) in errs.pairs().take(10_000) {
                        let [name, error, n, first, last] = match v.map() {
                            Some(m) => m.fields([
                                "name",
                                "error",
                                "occurrences",
                                "first_seen",
                                "last_seen",
                            ]),
                            None => [None; 5],
                        };
                        let error = s(error);
                        stats.errors.push(ErrorStat {
                            name: s(name),
                            code: error.clone(),
                            message: error,
                            count: n.and_then(|v| v.count()).unwrap_or(0),
                            throttled: false,
                            first_seen: f(first),
                            last_seen: f(last),
                        });
                    }
                }
            }
        }
        let named = |v: Option<V<'_>>, out: &mut Vec<(String, u64)>| {
            if let Some(V::Map(m)) = v {
                for (k, n) in m.pairs().take(1000) {
                    if let (Some(k), Some(n)) = (k.as_str(), n.count()) {
                        out.push((k.to_string(), n));
                    }
                }
            }
        };
        named(capped, &mut stats.capped);
        named(dropped, &mut stats.dropped);
        stats.user_panics = panics.and_then(|v| v.count()).unwrap_or(0);
        if ext.is_some() {
            stats.run_id = run_id
                .and_then(|v| v.as_str())
                .filter(|r| RunId::parse(r).is_ok())
                .unwrap_or("")
                .to_string();
            if let Some(V::Map(m)) = resources {
                for (k, v) in m.pairs() {
                    let Some(kind) = k
                        .as_str()
                        .and_then(|k| Kind::ALL.into_iter().find(|x| x.as_str() == k))
                    else {
                        continue;
                    };
                    let Some(a) = v.array() else { continue };
                    let mut n = [0u64; 4];
                    for (slot, v) in n.iter_mut().zip(a.items()) {
                        *slot = v.count().unwrap_or(0);
                    }
                    stats.held.resources.push((
                        kind,
                        KindCounts {
                            created: n[0],
                            deleted: n[1],
                            alive: n[2],
                        },
                    ));
                    stats.held.creating.push((kind, n[3]));
                }
            }
            stats.held.left = match left {
                Some(V::Nil) => Some(None),
                Some(v) => v.count().map(Some),
                None => None,
            };
        }
        if let Some(V::Map(m)) = classes {
            for (k, n) in m.pairs().take(1000) {
                if let (Some(k), Some(n)) = (k.as_str(), n.count()) {
                    stats.classes.push((k.to_string(), n));
                }
            }
        }
        stats.exact = exact;
        Ok(stats)
    }

    /// Adds the report's figures into a run's statistics.
    pub fn add_to(&self, s: &mut StatsData) {
        for (name, d) in &self.entries {
            s.add_delta(name, d);
        }
        for e in &self.errors {
            s.add_error(e.clone());
        }
        for (k, n) in &self.capped {
            *s.capped.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &self.dropped {
            s.count_dropped(k, *n);
        }
        s.user_panics += self.user_panics;
    }

    /// Requests and failures the report adds to the aggregate (request
    /// entries only, as the aggregate counts them).
    pub fn totals(&self) -> (u64, u64) {
        self.entries
            .iter()
            .filter(|(n, _)| {
                crate::ops::entry_kind(n).unwrap_or(crate::ops::EntryKind::Request)
                    == crate::ops::EntryKind::Request
            })
            .fold((0, 0), |(r, f), (_, d)| (r + d.requests, f + d.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Failure;
    use crate::stats::Bytes;
    use std::time::Duration;

    #[test]
    fn a_spawn_carries_arrival_rates_and_bad_ones_are_named() {
        let spawn = Spawn {
            timestamp: 12.5,
            classes: vec![("api".into(), 3), ("batch".into(), 1)],
            stop_timeout: 2.0,
            run_id: Some(RunId::parse("k3x9q2ab").unwrap()),
            profile: Some(("p".into(), "[[user]]".into())),
            arrival_rates: vec![("api".into(), 7.5)],
        };
        let back = Spawn::parse(&spawn.to_value()).unwrap();
        assert_eq!(back.arrival_rates, [("api".to_string(), 7.5)]);
        assert_eq!(back.classes, spawn.classes);
        // A stock master's spawn has none: the classes keep their rates.
        let stock = Spawn {
            arrival_rates: vec![],
            run_id: None,
            profile: None,
            ..spawn.clone()
        };
        assert!(
            Spawn::parse(&stock.to_value())
                .unwrap()
                .arrival_rates
                .is_empty()
        );
        for (bad, says) in [
            (Value::F64(0.0), "not above 0"),
            (Value::F64(f64::NAN), "not above 0"),
            (Value::from("fast"), "not above 0"),
        ] {
            let mut v = spawn.to_value();
            let Value::Map(top) = &mut v else { panic!() };
            let ext = top
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(EXT))
                .unwrap();
            ext.1 = map([("arrival_rates", map([("api", bad)]))]);
            let e = Spawn::parse(&v).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let mut v = spawn.to_value();
        let Value::Map(top) = &mut v else { panic!() };
        let ext = top
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(EXT))
            .unwrap();
        ext.1 = map([("arrival_rates", Value::from(3))]);
        assert!(Spawn::parse(&v).unwrap_err().contains("not a map"));
    }

    #[test]
    fn buckets_round_half_to_even_as_python_does() {
        // The examples of locust-protocol.md, checked against Python.
        for (ms, want) in [
            (0.5, 0),
            (2.5, 2),
            (99.5, 100),
            (105.0, 100),
            (115.0, 120),
            (125.0, 120),
            (147.0, 150),
            (995.0, 1000),
            (1050.0, 1000),
            (1150.0, 1200),
            (3432.0, 3400),
            (10500.0, 10000),
            (58760.0, 59000),
        ] {
            assert_eq!(locust_bucket(ms), want, "{ms}");
        }
    }

    #[test]
    fn error_keys_hash_python_reprs() {
        assert_eq!(py_repr("boom"), "'boom'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(py_repr("x\ny\\"), "'x\\ny\\\\'");
        // sha256("FAKE./tiny.'boom'"), as Python's hashlib computes it.
        assert_eq!(
            error_key("FAKE", "/tiny", "boom"),
            "26009be27c8b0b2e5d0dbb4e2b368a91fda6ca70c8cf097989a317704c473bb8"
        );
    }

    #[test]
    fn envelopes_round_trip_and_bad_ones_are_named() {
        let m = Message::new("heartbeat", map([("state", Value::from("ready"))]), "h_1");
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        assert!(
            Message::decode(&[0x93, 0xa1])
                .unwrap_err()
                .contains("msgpack")
        );
        assert!(Message::decode(&[0xc1]).is_err());
        let bin_type = rmpv::Value::Array(vec![
            Value::Binary(b"ack".to_vec()),
            Value::Nil,
            Value::from("n"),
        ]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &bin_type).unwrap();
        assert_eq!(Message::decode(&b).unwrap_err(), "type is not a string");
        let two = Value::Array(vec![Value::from("a"), Value::Nil]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &two).unwrap();
        assert!(Message::decode(&b).unwrap_err().contains("2 elements"));
    }

    #[test]
    fn a_report_carries_exact_histograms_back() {
        let mut d = StatsData::default();
        for ms in [3u64, 7, 120, 1500] {
            d.record(
                "s3:PutObject",
                Duration::from_millis(ms),
                Bytes {
                    sent: 10,
                    received: 0,
                },
                None,
            );
        }
        let f = Failure::new("SlowDown", "please");
        assert!(f.throttled);
        d.record(
            "s3:GetObject",
            Duration::from_millis(5),
            Bytes::default(),
            Some(&f),
        );
        d.count_dropped("api", 7);
        let held = Holdings {
            resources: vec![(
                Kind::Bucket,
                KindCounts {
                    created: 2,
                    deleted: 1,
                    alive: 1,
                },
            )],
            creating: vec![(Kind::Bucket, 1)],
            left: Some(Some(0)),
        };
        let v = stats_report(&d, &[("storage".into(), 3)], "abc", &held);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &v).unwrap();
        let back = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let r = Report::parse(&back).unwrap();
        assert!(r.exact);
        assert_eq!((r.run_id.as_str(), &r.held), ("abc", &held));
        assert_eq!(r.classes, vec![("storage".to_string(), 3)]);
        // Added into a run's figures, the report gives back what was recorded.
        let mut merged = StatsData::default();
        r.add_to(&mut merged);
        r.add_to(&mut merged);
        let put = &merged.entries["s3:PutObject"];
        assert_eq!(put.num_requests, 8);
        assert_eq!(put.max_us, 1_500_000);
        assert_eq!(put.hist.len(), 8);
        assert_eq!(put.bytes_sent, 80);
        let orig = &d.entries["s3:PutObject"];
        for q in [0.25, 0.5, 0.75, 1.0] {
            assert_eq!(
                put.hist.value_at_quantile(q),
                orig.hist.value_at_quantile(q),
                "exact at {q}"
            );
        }
        let got = &merged.entries["s3:GetObject"];
        assert_eq!((got.num_failures, got.num_throttled), (2, 2));
        assert_eq!(r.totals(), (5, 1));
        let e = merged.errors.values().next().unwrap();
        assert_eq!(
            (e.code.as_str(), e.message.as_str(), e.count),
            ("SlowDown", "please", 2)
        );
        assert_eq!(merged.dropped.get("api"), Some(&14), "arrivals dropped");
        // Locust's view: ms buckets and per-second counts.
        let entry = match get_entry(&back, "s3:PutObject") {
            Some(e) => e,
            None => panic!("no entry"),
        };
        let Some(Value::Map(b)) = get(entry, "response_times") else {
            panic!("no buckets")
        };
        let keys: Vec<u64> = b.iter().map(|(k, _)| k.as_u64().unwrap()).collect();
        assert_eq!(keys, vec![3, 7, 120, 1500]);
    }

    fn get_entry<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
        match get(report, "stats")? {
            Value::Array(a) => a
                .iter()
                .find(|e| get(e, "name").and_then(Value::as_str) == Some(name)),
            _ => None,
        }
    }

    #[test]
    fn values_round_trip_and_garbage_is_refused() {
        let v = vec![(1, 3), (250, 1), (1_500_000, 2), (3_600_000_000, 1)];
        assert_eq!(decode_values(&encode_values(&v)), Some(v));
        assert_eq!(decode_values(&[]), Some(vec![]));
        // A varint that never ends, one that overflows, a count missing.
        assert_eq!(decode_values(&[0x80, 0x80]), None);
        assert_eq!(decode_values(&[0xff; 11]), None);
        assert_eq!(decode_values(&[5]), None);
        // More pairs than any histogram of ours has buckets.
        let many: Vec<(u64, u64)> = (1..=40_001).map(|i| (i, 1)).collect();
        assert_eq!(decode_values(&encode_values(&many)), None);
    }

    /// A Locust worker's report, as `bench/flood.py` (and Locust) sends it:
    /// integer bucket keys, per-second maps, errors keyed by hash.
    fn locust_report(seed: u64) -> Value {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let entry = |rng: &mut rand::rngs::StdRng, name: &str| {
            let buckets: Vec<(Value, Value)> = (0..rng.random_range(0..45))
                .map(|i| {
                    (
                        Value::from(i * 7 + rng.random_range(1..7u64)),
                        Value::from(rng.random_range(1..20u64)),
                    )
                })
                .collect();
            let n: u64 = buckets.iter().map(|(_, n)| n.as_u64().unwrap()).sum();
            map([
                ("name", Value::from(name)),
                ("method", Value::from("ec2")),
                ("last_request_timestamp", Value::F64(1.7e9 + 0.25)),
                ("start_time", Value::F64(1.7e9 - 3.0)),
                ("num_requests", Value::from(n)),
                ("num_none_requests", Value::from(0)),
                ("num_failures", Value::from(rng.random_range(0..3u64))),
                ("total_response_time", Value::F64(1234.5)),
                ("max_response_time", Value::F64(99.0)),
                ("min_response_time", Value::from(1)),
                ("total_content_length", Value::from(n * 1024)),
                ("response_times", Value::Map(buckets)),
                (
                    "num_reqs_per_sec",
                    Value::Map(vec![
                        (Value::from(1_700_000_001u64), Value::from(n / 2)),
                        (Value::from(1_700_000_000u64), Value::from(n - n / 2)),
                    ]),
                ),
                (
                    "num_fail_per_sec",
                    Value::Map(vec![(Value::from(1_700_000_000u64), Value::from(1))]),
                ),
            ])
        };
        let stats: Vec<Value> = (0..rng.random_range(1..14))
            .map(|i| entry(&mut rng, &format!("ec2:Op{i}")))
            .collect();
        map([
            ("stats", Value::Array(stats)),
            ("stats_total", entry(&mut rng, "Aggregated")),
            (
                "errors",
                map([(
                    "abc",
                    map([
                        ("name", Value::from("ec2:Op1")),
                        ("method", Value::from("ec2")),
                        ("error", Value::from("boom")),
                        ("occurrences", Value::from(3)),
                        ("first_seen", Value::F64(1.0)),
                    ]),
                )]),
            ),
            ("user_classes_count", map([("storage", Value::from(5))])),
            ("user_count", Value::from(5)),
        ])
    }

    /// A cloudswarm worker's report, with every extension field.
    fn cloudswarm_report() -> Value {
        let mut d = StatsData::default();
        for ms in [3u64, 7, 120, 1500, 7] {
            d.record(
                "s3:PutObject",
                Duration::from_millis(ms),
                Bytes {
                    sent: 10,
                    received: 3,
                },
                None,
            );
        }
        let f = Failure::new("SlowDown", "please");
        d.record(
            "s3:GetObject",
            Duration::from_millis(5),
            Bytes::default(),
            Some(&f),
        );
        d.count_dropped("api", 7);
        d.count_capped("ec2:RunInstances");
        d.user_panics = 2;
        let held = Holdings {
            resources: vec![(
                Kind::Bucket,
                KindCounts {
                    created: 2,
                    deleted: 1,
                    alive: 1,
                },
            )],
            creating: vec![(Kind::Bucket, 1)],
            left: Some(None),
        };
        let run_id = crate::naming::RunId::new();
        stats_report(&d, &[("storage".into(), 3)], run_id.as_str(), &held)
    }

    /// What the master made of a frame before it read frames in place:
    /// decoded into a `Value`, then a report or a heartbeat read from that.
    fn the_old_way(b: &[u8]) -> Result<String, String> {
        let m = Message::decode(b)?;
        let body = match m.kind.as_str() {
            "stats" => format!("{:?}", Report::parse(&m.data)?),
            "heartbeat" => format!(
                "{:?}",
                (
                    get(&m.data, "state").and_then(Value::as_str).unwrap_or(""),
                    get(&m.data, "current_cpu_usage")
                        .and_then(num)
                        .filter(|c| c.is_finite())
                        .unwrap_or(0.0),
                    get(&m.data, "current_memory_usage")
                        .and_then(count)
                        .unwrap_or(0),
                )
            ),
            _ => format!("{:?}", m.data),
        };
        Ok(format!("{} {} {body}", m.kind, m.node_id))
    }

    fn the_new_way(b: &[u8]) -> Result<String, String> {
        let m = Incoming::decode(b)?;
        let body = match &m.body {
            Body::Stats(r) => format!("{r:?}"),
            Body::Heartbeat(h) => format!("{:?}", (h.state, h.cpu, h.mem)),
            Body::Other(v) => format!("{v:?}"),
        };
        Ok(format!("{} {} {body}", m.kind, m.node_id))
    }

    fn same_verdict(b: &[u8]) {
        let (old, new) = (the_old_way(b), the_new_way(b));
        assert_eq!(old.is_ok(), new.is_ok(), "{old:?}\n{new:?}\n{b:x?}");
        if old.is_ok() {
            assert_eq!(old, new);
        }
    }

    /// A value of another kind, for a field.
    fn odd_value(rng: &mut impl rand::Rng) -> Value {
        match rng.random_range(0..10) {
            0 => Value::Nil,
            1 => Value::from(-7),
            2 => Value::F64(f64::NAN),
            3 => Value::F64(-2.5),
            4 => Value::F32(3.0),
            5 => Value::from("text"),
            6 => Value::Binary(vec![0x80; 3]),
            7 => Value::Array(vec![Value::from(1), Value::from("x")]),
            8 => Value::Map(vec![(Value::from(1), Value::from(2))]),
            _ => Value::F64(1e30),
        }
    }

    /// Changes one place of `v`: a value of another kind, a key dropped
    /// or repeated, an item dropped.
    fn mutate(v: &mut Value, rng: &mut impl rand::Rng) {
        match v {
            Value::Map(m) if !m.is_empty() && rng.random_range(0..3) > 0 => {
                let i = rng.random_range(0..m.len());
                match rng.random_range(0..6) {
                    0 => {
                        m.remove(i);
                    }
                    1 => {
                        let dup = (m[i].0.clone(), odd_value(rng));
                        m.insert(rng.random_range(0..=m.len()), dup);
                    }
                    2 => m[i].0 = odd_value(rng),
                    _ => mutate(&mut m[i].1, rng),
                }
            }
            Value::Array(a) if !a.is_empty() && rng.random_range(0..3) > 0 => {
                let i = rng.random_range(0..a.len());
                if rng.random_range(0..4) == 0 {
                    a.remove(i);
                } else {
                    mutate(&mut a[i], rng);
                }
            }
            _ => *v = odd_value(rng),
        }
    }

    #[test]
    fn frames_read_in_place_match_the_value_tree_reader_on_good_and_broken_input() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let heartbeat = map([
            ("state", Value::from("running")),
            ("current_cpu_usage", Value::F64(12.5)),
            ("current_memory_usage", Value::from(150_000_000u64)),
        ]);
        let ours = cloudswarm_report();
        let mut bases = vec![
            Message::new("stats", ours.clone(), "w1"),
            Message::new("heartbeat", heartbeat, "w1"),
            Message::new("client_ready", Value::from(-1), "w1"),
            Message::new(
                "spawning_complete",
                map([("user_classes_count", map([("a", Value::from(1))]))]),
                "w1",
            ),
        ];
        for seed in 0..5 {
            bases.push(Message::new("stats", locust_report(seed), "sim_1"));
        }
        // Unchanged, every frame reads the same both ways, and exactly.
        for m in &bases {
            let b = m.encode();
            assert!(the_new_way(&b).is_ok(), "{m:?}");
            same_verdict(&b);
        }
        let exact = |b: &[u8]| match Incoming::decode(b).unwrap().body {
            Body::Stats(r) => r.exact,
            _ => panic!("not a report"),
        };
        assert!(exact(&bases[0].encode()));
        assert!(!exact(&bases[4].encode()));
        for round in 0..4000 {
            let mut m = bases[round % bases.len()].clone();
            match rng.random_range(0..4) {
                // The data changed in one to three places.
                0 | 1 => {
                    for _ in 0..rng.random_range(1..4) {
                        mutate(&mut m.data, &mut rng);
                    }
                    same_verdict(&m.encode());
                }
                // Truncated.
                2 => {
                    let b = m.encode();
                    same_verdict(&b[..rng.random_range(0..b.len())]);
                }
                // Bytes flipped.
                _ => {
                    let mut b = m.encode();
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..b.len());
                        b[i] = rng.random();
                    }
                    same_verdict(&b);
                }
            }
        }
    }

    #[test]
    fn bad_envelopes_are_refused_in_place_too() {
        let enc = |v: &Value| {
            let mut b = Vec::new();
            rmpv::encode::write_value(&mut b, v).unwrap();
            b
        };
        let mut frames = vec![
            vec![],
            vec![0xc1],
            vec![0x93, 0xa1],
            enc(&Value::Array(vec![Value::from("a"), Value::Nil])),
            enc(&Value::Array(vec![
                Value::Binary(b"ack".to_vec()),
                Value::Nil,
                Value::from("n"),
            ])),
            enc(&Value::Array(vec![
                Value::from("stats"),
                Value::Nil,
                Value::from(3),
            ])),
            // A type and a node id that are not UTF-8.
            vec![0x93, 0xa2, 0xff, 0xfe, 0xc0, 0xa1, b'n'],
            vec![
                0x93, 0xa9, b'h', b'e', b'a', b'r', b't', b'b', b'e', b'a', b't', 0xc0, 0xa1, 0xff,
            ],
            // Bytes after the envelope.
            [
                Message::new("heartbeat", Value::Nil, "n").encode(),
                vec![0xc0],
            ]
            .concat(),
            // Four elements; a map; deeper than 16 levels.
            enc(&Value::Array(vec![Value::Nil; 4])),
            enc(&map([("stats", Value::Nil)])),
        ];
        let mut deep = Value::Nil;
        for _ in 0..20 {
            deep = Value::Array(vec![deep]);
        }
        for kind in ["stats", "heartbeat", "exception"] {
            frames.push(Message::new(kind, deep.clone(), "n").encode());
        }
        // Entries: not maps, unnamed, too many, a name too long.
        for stats in [
            Value::Array(vec![Value::from(1)]),
            Value::Array(vec![map([("num_requests", Value::from(1))])]),
            Value::Array(vec![Value::Nil; 10_001]),
            Value::Array(vec![map([("name", Value::from("n".repeat(201)))])]),
            Value::from("x"),
        ] {
            frames.push(Message::new("stats", map([("stats", stats)]), "n").encode());
        }
        frames.push(Message::new("stats", map([("errors", Value::Nil)]), "n").encode());
        for b in &frames {
            assert!(the_new_way(b).is_err(), "{b:x?}");
            same_verdict(b);
        }
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(Incoming::decode(&big).unwrap_err().contains("too large"));
    }

    #[test]
    fn envelopes_are_written_as_rmpv_writes_them() {
        for n in [0, 1, 31, 32, 255, 256, 65_535, 65_536] {
            let s = "k".repeat(n);
            for data in [Value::Nil, map([("index", Value::from(3))])] {
                let want = {
                    let v = Value::Array(vec![
                        Value::from(s.as_str()),
                        data.clone(),
                        Value::from(s.as_str()),
                    ]);
                    let mut b = Vec::new();
                    rmpv::encode::write_value(&mut b, &v).unwrap();
                    b
                };
                assert_eq!(envelope(&s, &data, &s), want, "{n}");
            }
        }
    }
}
