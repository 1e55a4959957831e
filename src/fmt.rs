//! Human formatting shared by logs, status and the CLI.

use std::time::Duration;

/// `1.5s`, `250ms`, `2m30s`: the same style the config accepts.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}µs", d.as_micros())
        };
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        let frac = ms % 1000;
        return if frac == 0 {
            format!("{secs}s")
        } else {
            format!("{:.1}s", d.as_secs_f64())
        };
    }
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_secs(2)), "2s");
        assert_eq!(duration(Duration::from_secs(150)), "2m30s");
        assert_eq!(duration(Duration::from_secs(3600)), "1h");
    }
}
