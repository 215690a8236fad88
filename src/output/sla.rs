//! SLA expressions checked at the end of a run, such as
//! `p95(ec2:RunInstances)<2s`, `failure_rate<1%`, `rps>=100`.
//! Grammar: `METRIC[(ENTRY)] OP VALUE` with OP one of `< <= > >=`.
//! Metrics: `p50 p66 p75 p80 p90 p95 p98 p99 p99.9 p99.99 median avg min max`
//! (times: `250ms`, `2s`, a bare number is ms), `failure_rate`,
//! `throttle_rate` (`1%` or `0.01`), `rps`, `requests`, `failures`, `throttled`.
//! Without `(ENTRY)` a metric applies to the aggregate of all entries.

use std::fmt;

use crate::stats::{EntrySummary, PERCENTILES, Snapshot};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    Percentile(f64),
    Avg,
    Min,
    FailureRate,
    ThrottleRate,
    Rps,
    Requests,
    Failures,
    Throttled,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed SLA.
#[derive(Debug, Clone, PartialEq)]
pub struct Sla {
    text: String,
    metric: Metric,
    entry: Option<String>,
    cmp: Cmp,
    /// In ms for times, a fraction for rates.
    value: f64,
}

impl fmt::Display for Sla {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The outcome of one SLA.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub sla: String,
    pub held: bool,
    pub actual: String,
}

impl Sla {
    /// Parses one expression; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Sla, String> {
        let text: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let bad = |why: &str| format!("SLA `{s}`: {why}");
        let op_at = text
            .find(['<', '>'])
            .ok_or_else(|| bad("needs a comparison: <, <=, > or >="))?;
        let (lhs, rest) = text.split_at(op_at);
        let (cmp, rhs) = if let Some(r) = rest.strip_prefix("<=") {
            (Cmp::Le, r)
        } else if let Some(r) = rest.strip_prefix(">=") {
            (Cmp::Ge, r)
        } else if let Some(r) = rest.strip_prefix('<') {
            (Cmp::Lt, r)
        } else {
            (Cmp::Gt, &rest[1..])
        };
        let (mname, entry) = match lhs.find('(') {
            Some(i) => {
                let e = lhs[i + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| bad("missing `)` after the entry name"))?;
                if e.is_empty() {
                    return Err(bad("empty entry name in ()"));
                }
                (&lhs[..i], Some(e.to_string()))
            }
            None => (lhs, None),
        };
        let metric = match mname {
            "median" => Metric::Percentile(0.5),
            "max" => Metric::Percentile(1.0),
            "avg" => Metric::Avg,
            "min" => Metric::Min,
            "failure_rate" => Metric::FailureRate,
            "throttle_rate" => Metric::ThrottleRate,
            "rps" => Metric::Rps,
            "requests" => Metric::Requests,
            "failures" => Metric::Failures,
            "throttled" => Metric::Throttled,
            p if p.starts_with('p') => {
                let q: f64 = p[1..]
                    .parse::<f64>()
                    .map_err(|_| bad(&format!("unknown metric `{p}`")))?
                    / 100.0;
                if !PERCENTILES.iter().any(|x| (x - q).abs() < 1e-9) {
                    return Err(bad(
                        "percentiles available: p50 p66 p75 p80 p90 p95 p98 p99 p99.9 p99.99",
                    ));
                }
                Metric::Percentile(q)
            }
            other => {
                return Err(bad(&format!(
                    "unknown metric `{other}` (use pNN, median, avg, min, max, failure_rate, throttle_rate, rps, requests, failures, throttled)"
                )));
            }
        };
        let value = match metric {
            Metric::Percentile(_) | Metric::Avg | Metric::Min => {
                parse_ms(rhs).map_err(|e| bad(&e))?
            }
            Metric::FailureRate | Metric::ThrottleRate => {
                let v = match rhs.strip_suffix('%') {
                    Some(p) => p.parse::<f64>().map(|v| v / 100.0),
                    None => rhs.parse::<f64>(),
                }
                .map_err(|_| bad(&format!("`{rhs}` is not a rate (try 1% or 0.01)")))?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(bad("a rate is between 0% and 100%"));
                }
                v
            }
            _ => rhs
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(&format!("`{rhs}` is not a number")))?,
        };
        Ok(Sla {
            text: s.trim().to_string(),
            metric,
            entry,
            cmp,
            value,
        })
    }

    /// The entry the SLA names, if any.
    pub fn entry(&self) -> Option<&str> {
        self.entry.as_deref()
    }

    /// Checks the SLA against final statistics.
    pub fn check(&self, s: &Snapshot) -> Verdict {
        let e: Option<&EntrySummary> = match &self.entry {
            None => Some(&s.total),
            Some(n) => s.entries.iter().find(|e| &e.name == n),
        };
        let Some(e) = e else {
            return Verdict {
                sla: self.text.clone(),
                held: false,
                actual: "no requests recorded for that entry".into(),
            };
        };
        let (actual, shown) = match self.metric {
            Metric::Percentile(q) => {
                let v = e.percentile(q).unwrap_or(0.0);
                (v, format!("{v:.1}ms"))
            }
            Metric::Avg => (e.avg_ms, format!("{:.1}ms", e.avg_ms)),
            Metric::Min => (e.min_ms, format!("{:.1}ms", e.min_ms)),
            Metric::FailureRate => {
                let v = e.failure_ratio();
                (v, format!("{:.3}%", v * 100.0))
            }
            Metric::ThrottleRate => {
                let v = if e.num_requests == 0 {
                    0.0
                } else {
                    e.num_throttled as f64 / e.num_requests as f64
                };
                (v, format!("{:.3}%", v * 100.0))
            }
            Metric::Rps => (e.rps, format!("{:.2}", e.rps)),
            Metric::Requests => (e.num_requests as f64, e.num_requests.to_string()),
            Metric::Failures => (e.num_failures as f64, e.num_failures.to_string()),
            Metric::Throttled => (e.num_throttled as f64, e.num_throttled.to_string()),
        };
        let held = match self.cmp {
            Cmp::Lt => actual < self.value,
            Cmp::Le => actual <= self.value,
            Cmp::Gt => actual > self.value,
            Cmp::Ge => actual >= self.value,
        };
        Verdict {
            sla: self.text.clone(),
            held,
            actual: shown,
        }
    }
}

fn parse_ms(s: &str) -> Result<f64, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v * mult)
        .ok_or_else(|| format!("`{s}` is not a time (try 250ms, 2s, 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Failure;
    use crate::stats::{Bytes, StatsData};
    use std::time::Duration;

    fn snap() -> Snapshot {
        let mut s = StatsData::default();
        for i in 1..=100u64 {
            s.record(
                "ec2:RunInstances",
                Duration::from_millis(i * 10),
                Bytes::default(),
                None,
            );
        }
        let f = Failure::new("RequestLimitExceeded", "slow down");
        s.record(
            "ec2:RunInstances",
            Duration::from_millis(5),
            Bytes::default(),
            Some(&f),
        );
        s.snapshot()
    }

    #[test]
    fn parses_and_checks() {
        let s = snap();
        let held = |e: &str| Sla::parse(e).unwrap().check(&s).held;
        assert!(held("p95(ec2:RunInstances)<2s"));
        assert!(!held("p95(ec2:RunInstances) < 500ms"));
        assert!(held("p50 <= 600"));
        assert!(held("failure_rate<1%"));
        assert!(!held("failure_rate<0.5%"));
        assert!(held("throttled>=1"));
        assert!(held("requests>=101"));
        assert!(held("max(ec2:RunInstances)<=1s"));
        assert!(!held("rps>=1000000"));
        let v = Sla::parse("p99(s3:PutObject)<1s").unwrap().check(&s);
        assert!(!v.held && v.actual.contains("no requests"));
    }

    #[test]
    fn rejects_bad_expressions() {
        for bad in [
            "p95",
            "p42<1s",
            "latency<1s",
            "p95(<1s",
            "failure_rate<abc",
            "p95<fast",
            "rps>=-1",
            "p95()<1s",
        ] {
            assert!(Sla::parse(bad).is_err(), "{bad} should not parse");
        }
        assert!(Sla::parse("p42<1s").unwrap_err().contains("p99.9"));
    }
}
