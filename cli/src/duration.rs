//! Durations on the command line, parsed by [`humantime`] ("90s", "15min",
//! "2h", "7days", "6months", "1h 30m"), and durations in output: short ages
//! ("850ms", "12.3s", "4m05s", "2h03m", "3d04h") and, where a user must check
//! what a duration they typed means, words ("7 minutes", "212 days 22 hours").

use std::time::Duration;

/// Parses a duration with [`humantime::parse_duration`]: one or more
/// `<number><unit>` parts ("1h30m", "1.5h"), where a month is 30.44 days and
/// a year 365.25.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    humantime::parse_duration(s).map_err(|e| {
        format!("{text:?} is not a duration: {e} (examples: 90s, 15min, 2h, 7days, 6months; m is minutes, M is months)")
    })
}

/// Now minus `d`, or an error when that is before any representable time.
pub fn before_now(d: Duration) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .ok_or_else(|| "duration too large".to_owned())
}

/// `d` in words, from days down to seconds, at most two units, so that
/// nobody can misread it: "0 seconds", "7 minutes", "1 hour 30 minutes",
/// "213 days 1 hour". Months and years are shown as days (their length in
/// days is what the cutoff uses).
pub fn words(d: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let secs = d.as_secs();
    let count =
        |(_, name): (u64, &str), n: u64| format!("{n} {name}{}", if n == 1 { "" } else { "s" });
    // The largest unit present, and the next one down when not zero
    // ("1 day 5 minutes" would hide that the hours are zero).
    let Some(first) = UNITS.iter().position(|(size, _)| secs >= *size) else {
        return match d.as_millis() {
            0 => "0 seconds".to_owned(),
            ms => format!("{ms} milliseconds"),
        };
    };
    let (size, _) = UNITS[first];
    let mut text = count(UNITS[first], secs / size);
    if let Some(&(next, name)) = UNITS.get(first + 1) {
        let n = secs % size / next;
        if n > 0 {
            text.push(' ');
            text.push_str(&count((next, name), n));
        }
    }
    text
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
        assert_eq!(parse("15min"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        // Months are what a user meant by "7m" when they wrote "7months".
        assert_eq!(parse("7months"), Ok(Duration::from_secs(7 * 2_630_016)));
        assert_eq!(parse("7M"), parse("7months"));
        assert_eq!(parse("1y"), Ok(Duration::from_secs(31_557_600)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "7", "7x", "d", "-1d", "99999999999999999999d", "h1"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn words_leave_no_doubt() {
        let s = Duration::from_secs;
        assert_eq!(words(Duration::ZERO), "0 seconds");
        assert_eq!(words(Duration::from_millis(250)), "250 milliseconds");
        assert_eq!(words(s(1)), "1 second");
        assert_eq!(words(parse("7m").unwrap()), "7 minutes");
        assert_eq!(words(s(5400)), "1 hour 30 minutes");
        assert_eq!(words(s(86_400 + 300)), "1 day");
        assert_eq!(words(s(7 * 86_400)), "7 days");
        assert_eq!(words(parse("7months").unwrap()), "213 days 1 hour");
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
