//! Sizes (`1KiB`, `4 MiB`, `1kB`) and durations (`30s`, `1h30m`, `500ms`)
//! as profiles and flags write them. Depends on nothing.

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
}
