//! Human units in proxy.toml: durations ("10s", "1m30s", "250ms") and sizes ("64KiB", "1MB").

use std::time::Duration;

/// Parses a duration such as "10s", "1m 30s" or "250ms" (humantime's grammar). Zero is refused:
/// every duration in proxy.toml is a limit, and a zero limit is always a mistake.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write it like \"10s\", \"500ms\" or \"2m\"")
    })?;
    if d.is_zero() {
        return Err(format!(
            "{s:?} is zero; give a positive duration like \"10s\""
        ));
    }
    Ok(d)
}

/// Parses a size such as "16KiB", "1 MiB", "64kb" or "4096" (bytes). KB and KiB both mean 1024,
/// as in nginx: nobody sizes a buffer in powers of ten.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a size; write it like \"16KiB\", \"1MiB\" or \"4096\"");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_duration("ten")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("10").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("16KiB").unwrap(), 16 * 1024);
        assert_eq!(parse_size("1 MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("2gb").unwrap(), 2 << 30);
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("9999999999999GiB").is_err());
    }
}
