//! Durations in filters ("90s", "15m", "2h", "7d", "1h30m", "3months") and on
//! pages ("850ms", "12.3s", "4m05s", "2h03m", "3d04h"). Parsed by `humantime`,
//! as the CLI parses them: `m` is minutes, months are `months` or `M`.

use std::time::Duration;

/// Parses a duration the way the CLI does (`humantime`): `90s`, `15m`,
/// `2h`, `7d`, `1h30m`, `3months`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration (examples: 90s, 15m, 2h, 7d)".into());
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("{text:?} is not a duration ({e}; examples: 90s, 15m, 2h, 7d, 3months)")
    })
}

/// Now minus `d`, or an error when that is before any representable time.
pub fn before_now(d: Duration) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .ok_or_else(|| "duration too large".to_owned())
}

/// A short human-readable duration with two significant units at most.
pub fn human(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds();
    if ms < 0 {
        return format!("-{}", human(-d));
    }
    let s = ms / 1000;
    match s {
        _ if ms < 1_000 => format!("{ms}ms"),
        0..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("3months"), parse("3M"));
        assert!(parse("3months").unwrap() > Duration::from_secs(89 * 86_400));
        for bad in ["", "7", "7x", "d", "-1d", "99999999999999999999d", "h1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_two_units_at_most() {
        let ms = chrono::TimeDelta::milliseconds;
        assert_eq!(human(ms(850)), "850ms");
        assert_eq!(human(ms(12_345)), "12.3s");
        assert_eq!(human(ms(245_000)), "4m05s");
        assert_eq!(human(ms(7_380_000)), "2h03m");
        assert_eq!(human(ms(3 * 86_400_000 + 4 * 3_600_000)), "3d04h");
    }
}
