//! Sizes (`1KiB`, `4 MiB`, `1kB`), durations (`30s`, `1h30m`, `500ms`) and
//! arrival rates (`20/s`, `90/min`) as profiles and flags write them.
//! Depends on nothing.

use std::time::Duration;

/// Parses a size such as `1024`, `1KiB`, `4 MiB`, `1kB` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = size_bytes(s)?;
    if !(0.0..=5e12).contains(&bytes) {
        return Err(format!("size `{s}` is out of range (0 to 5 TB)"));
    }
    Ok(bytes.round() as u64)
}

/// A size's number times its unit, unchecked.
pub fn size_bytes(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 1024, 1KiB, 4MiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}` (use B, KiB, MiB, GiB, kB, MB, GB)"
            ));
        }
    };
    Ok(n * mult)
}

/// Parses a duration such as `30s`, `2m`, `1h30m`, `500ms`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // A year is more than any run, wait or timeout needs.
    const MAX: Duration = Duration::from_secs(365 * 24 * 3600);
    let d = if let Ok(secs) = t.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        humantime::parse_duration(t)
            .map_err(|e| format!("`{s}` is not a duration (try 30s, 2m, 1h30m): {e}"))?
    };
    if d > MAX {
        return Err(format!("`{s}` is longer than a year"));
    }
    Ok(d)
}

/// Fewest arrivals per second a rate may ask for: one a day.
pub const MIN_ARRIVAL_RATE: f64 = 1.0 / 86_400.0;
/// Most arrivals per second a rate may ask for.
pub const MAX_ARRIVAL_RATE: f64 = 1_000_000.0;

/// Parses an arrival rate such as `20/s`, `90/min` or `500/h` into arrivals
/// per second, from [`MIN_ARRIVAL_RATE`] to [`MAX_ARRIVAL_RATE`].
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let Some((num, unit)) = t.split_once('/') else {
        return Err(format!(
            "`{s}` is not a rate: write a number per unit, such as 20/s, 90/min or 500/h"
        ));
    };
    let n: f64 = num.trim().parse().map_err(|_| {
        format!(
            "`{s}` is not a rate: `{}` is not a number (write 20/s, 90/min or 500/h)",
            num.trim()
        )
    })?;
    let per: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => {
            return Err(format!(
                "unknown rate unit `/{other}` in `{s}` (use /s, /min or /h)"
            ));
        }
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!(
            "the rate `{s}` must be above zero (to stop arrivals, stop the run)"
        ));
    }
    let r = n / per;
    if !(MIN_ARRIVAL_RATE..=MAX_ARRIVAL_RATE).contains(&r) {
        return Err(format!(
            "the rate `{s}` is out of range: from one a day (0.0417/h) to 1000000/s"
        ));
    }
    Ok(r)
}

/// A rate in arrivals per second as people read it: `20/s`, `1.5/min`.
pub fn format_rate(r: f64) -> String {
    let short = |v: f64| {
        let t = format!("{v:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if r >= 1.0 {
        format!("{}/s", short(r))
    } else if r * 60.0 >= 1.0 {
        format!("{}/min", short(r * 60.0))
    } else {
        format!("{}/h", short(r * 3600.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("1 kB").unwrap(), 1000);
        assert_eq!(parse_size("2MiB").unwrap(), 2 * 1024 * 1024);
        assert_eq!(parse_size("17").unwrap(), 17);
        assert!(parse_size("-1").is_err());
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1e30").is_err(), "no panic on huge numbers");
        assert!(parse_duration("9999999999h").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20/s").unwrap(), 20.0);
        assert_eq!(parse_rate(" 90 / min ").unwrap(), 1.5);
        assert_eq!(parse_rate("3600/h").unwrap(), 1.0);
        assert_eq!(parse_rate("0.5/sec").unwrap(), 0.5);
        assert_eq!(parse_rate("1000000/s").unwrap(), 1e6);
        for (bad, says) in [
            ("0/s", "must be above zero"),
            ("-5/s", "must be above zero"),
            ("nan/s", "must be above zero"),
            ("20", "is not a rate"),
            ("20/fortnight", "unknown rate unit `/fortnight`"),
            ("x/s", "`x` is not a number"),
            ("1000001/s", "out of range"),
            ("1/h", ""),
        ] {
            match parse_rate(bad) {
                Err(e) => assert!(!says.is_empty() && e.contains(says), "{bad}: {e}"),
                Ok(r) => assert!(says.is_empty(), "{bad} gave {r}"),
            }
        }
        assert!(parse_rate("0.01/h").unwrap_err().contains("one a day"));
        assert_eq!(format_rate(20.0), "20/s");
        assert_eq!(format_rate(1.5), "1.5/s");
        assert_eq!(format_rate(0.5), "30/min");
        assert_eq!(format_rate(1.0 / 3600.0), "1/h");
    }
}
