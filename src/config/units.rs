//! The human duration and size syntax of the config file, both ways: parse for the file (and the
//! command line), format for `check-config`, in one place so the two can never drift apart.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses `"500ms"`, `"1m30s"`, `"1.5s"`, `"1h 30m"` or `"0"`; units ns, us (µs), ms, s, m, h, d.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = split_number(rest)?;
        let unit_len = after
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3_600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            _ => return None,
        };
        nanos = nanos.checked_add(scale_decimal(number, scale)?)?;
        rest = tail.trim_start();
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    // The remainder is below 10^9, so it fits.
    Some(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// Parses `"16MiB"`, `"64 KiB"`, `"1MB"` (10^6), `"512B"` or `"1048576"`; units are
/// case-insensitive, fractions round down to whole bytes.
pub fn parse_size(text: &str) -> Option<usize> {
    let (number, unit) = split_number(text.trim())?;
    let scale: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    usize::try_from(scale_decimal(number, scale)?).ok()
}

/// Splits a leading unsigned decimal (`"1.5"`) from the rest; `None` if there is none.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, rest) = s.split_at(end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let dots = number.len() - digits;
    (digits > 0 && dots <= 1).then_some((number, rest))
}

/// `number × scale` in integers, so `"0.1s"` is exactly 100ms; digits beyond 18 decimals are
/// dropped (they are far below a nanosecond or a byte).
fn scale_decimal(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let frac = &frac[..frac.len().min(18)];
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int.checked_mul(scale)?;
    if !frac.is_empty() {
        let frac_value: u128 = frac.parse().ok()?;
        let denominator = 10u128.pow(frac.len() as u32);
        total = total.checked_add(frac_value.checked_mul(scale)? / denominator)?;
    }
    Some(total)
}

/// Formats a duration in the syntax `parse_duration` reads, exactly (`"1m30s"`, `"500ms"`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut nanos = d.as_nanos();
    let mut out = String::new();
    for (unit, scale) in [
        ("d", 86_400 * NANOS_PER_SEC),
        ("h", 3_600 * NANOS_PER_SEC),
        ("m", 60 * NANOS_PER_SEC),
        ("s", NANOS_PER_SEC),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        if nanos >= scale {
            out.push_str(&format!("{}{unit}", nanos / scale));
            nanos %= scale;
        }
    }
    out
}

/// Formats a size in the syntax `parse_size` reads, exactly (`"16MiB"`, `"1MB"`, `"1500B"`).
pub fn format_size(bytes: usize) -> String {
    let n = bytes as u128;
    for (unit, scale) in [
        ("TiB", 1u128 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("kB", 1_000),
    ] {
        if n >= scale && n.is_multiple_of(scale) {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(ms(500)));
        assert_eq!(parse_duration("20s"), Some(ms(20_000)));
        assert_eq!(parse_duration("5m"), Some(ms(300_000)));
        assert_eq!(parse_duration("1h"), Some(ms(3_600_000)));
        assert_eq!(parse_duration("1m30s"), Some(ms(90_000)));
        assert_eq!(parse_duration("1h 30m"), Some(ms(5_400_000)));
        assert_eq!(parse_duration("1.5s"), Some(ms(1_500)));
        assert_eq!(parse_duration("0.1s"), Some(ms(100)));
        assert_eq!(parse_duration("2d"), Some(ms(172_800_000)));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_duration(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in [
            "",
            "10",
            "ten seconds",
            "s",
            "1.2.3s",
            "-1s",
            "5 sec",
            "1x",
            "1s2",
            "99999999999999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("1MB"), Some(1_000_000));
        assert_eq!(parse_size("1 kib"), Some(1024));
        assert_eq!(parse_size("1.5KiB"), Some(1536));
        assert_eq!(parse_size("1048576"), Some(1_048_576));
        for bad in ["", "MiB", "16 MiBs", "-1", "1.2.3B", "16Mi"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for d in [ms(500), ms(90_000), ms(1_500), ms(3_600_000), ms(1)] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        assert_eq!(format_duration(ms(90_000)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for n in [16 << 20, 1_000_000, 1500, 1, 64 << 10] {
            assert_eq!(parse_size(&format_size(n)), Some(n));
        }
        assert_eq!(format_size(16 << 20), "16MiB");
        assert_eq!(format_size(1_000_000), "1MB");
        assert_eq!(format_size(1500), "1500B");
    }
}
