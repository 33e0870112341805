//! Dates of the simulated clock, as HTTP headers and log records print them.

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 9110 IMF-fixdate, always 29 bytes: `Tue, 14 Nov 2023 22:13:20 GMT`.
pub(super) fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// RFC 3339 with microseconds: `2023-11-14T22:13:20.123456Z`.
pub(super) fn iso_time(unix_us: u64) -> String {
    let secs = unix_us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let s = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        y,
        m,
        d,
        s / 3600,
        s / 60 % 60,
        s % 60,
        unix_us % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::EPOCH_SECS;

    #[test]
    fn dates_format() {
        assert_eq!(http_date(EPOCH_SECS), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            iso_time(EPOCH_SECS * 1_000_000 + 42),
            "2023-11-14T22:13:20.000042Z"
        );
    }
}
