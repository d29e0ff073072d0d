//! Times on console pages: shown as ISO 8601 (UTC from the server; the page's script turns
//! them into the browser's zone), and typed with date-time pickers (`datetime-local`: the
//! browser's local time, converted with the zone offset the script adds to the form as `tz`,
//! minutes as `Date.getTimezoneOffset()` gives them; UTC without the script).

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// Unix seconds (with a fraction) as ISO 8601 in UTC, e.g. `2026-12-07T10:15:30.562Z`.
pub fn iso(unix: f64) -> Option<String> {
    if !unix.is_finite() {
        return None;
    }
    let nanos = (unix * 1e9).round() as i128;
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    let t = t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000).ok()?;
    t.format(&Rfc3339).ok()
}

/// A time field as the readers and the chart take it (Unix seconds): a number is kept; a
/// picker's `2026-12-07T10:15[:30]` is local time `tz` minutes behind UTC (JavaScript's
/// offset: UTC = local + tz). `None`: empty or unreadable (the field is left out).
pub fn to_unix(v: &str, tz_minutes: i64) -> Option<String> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    if v.parse::<f64>().is_ok() {
        return Some(v.to_string());
    }
    let long = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let short = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let local = PrimitiveDateTime::parse(v, long)
        .or_else(|_| PrimitiveDateTime::parse(v, short))
        .ok()?;
    let utc = local.assume_utc() + time::Duration::minutes(tz_minutes.clamp(-24 * 60, 24 * 60));
    Some(utc.unix_timestamp().to_string())
}

/// A picker's value for a field given as Unix seconds (UTC; the script shows pickers as
/// typed, so this is only for numbers given in a link).
pub fn picker(v: &str) -> String {
    let Ok(secs) = v.trim().parse::<f64>() else {
        return v.to_string();
    };
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_read_as_iso_and_pickers_convert_back() {
        assert_eq!(
            iso(1_796_597_308.562_235_6).as_deref(),
            Some("2026-12-06T22:48:28.562Z")
        );
        assert_eq!(iso(f64::NAN), None);
        assert_eq!(to_unix("1796597308.5", 0).as_deref(), Some("1796597308.5"));
        assert_eq!(to_unix("2026-12-07T00:08", 0).as_deref(), Some("1796602080"));
        // Berlin in winter: getTimezoneOffset() is -60; 01:08 local is 00:08 UTC.
        assert_eq!(to_unix("2026-12-07T01:08", -60).as_deref(), Some("1796602080"));
        assert_eq!(to_unix("2026-12-07T00:08:30", 0).as_deref(), Some("1796602110"));
        assert_eq!(to_unix("yesterday", 0), None);
        assert_eq!(to_unix(" ", 0), None);
        assert_eq!(picker("1796602080"), "2026-12-07T00:08:00");
        assert_eq!(picker("2026-12-07T00:08"), "2026-12-07T00:08");
    }
}
