//! Times as the store writes them: UTC, RFC 3339 with nanoseconds, which sort as text.

/// Now, as the store writes times: UTC, RFC 3339, nanoseconds.
pub fn timestamp() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, time) = date_time(since.as_secs());
    format!("{date}T{time}.{:09}Z", since.subsec_nanos())
}

/// A stored time as `ps` shows it: `2025-01-31 09:15:02` (UTC).
pub fn show_time(timestamp: &str) -> String {
    timestamp.get(..19).unwrap_or(timestamp).replacen('T', " ", 1)
}

/// `YYYY-MM-DD` and `hh:mm:ss` of a time in seconds since the epoch, in UTC (the days to
/// a civil date as in Howard Hinnant's `civil_from_days`).
fn date_time(seconds: u64) -> (String, String) {
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let time = format!("{:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60);
    (format!("{year:04}-{month:02}-{day:02}"), time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date_time(0), ("1970-01-01".to_string(), "00:00:00".to_string()));
        assert_eq!(date_time(951_782_400 + 3661), ("2000-02-29".into(), "01:01:01".into()));
        assert_eq!(date_time(1_767_225_599), ("2025-12-31".into(), "23:59:59".into()));
        let now = timestamp();
        assert_eq!((now.len(), &now[10..11], &now[29..]), (30, "T", "Z"));
        assert_eq!(show_time("2025-01-31T09:15:02.123456789Z"), "2025-01-31 09:15:02");
    }
}
