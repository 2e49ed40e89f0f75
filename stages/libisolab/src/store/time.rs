//! Times as the store writes them: UTC, RFC 3339 with nanoseconds, which sort as text.

/// Now, as the store writes times: UTC, RFC 3339, nanoseconds (`2025-01-31T09:15:02.123456789Z`).
pub fn timestamp() -> String {
    rfc3339(jiff::Timestamp::now())
}

/// `seconds` since the epoch, as the store writes a time; `None` out of jiff's range.
pub fn timestamp_at(seconds: i64) -> Option<String> {
    jiff::Timestamp::from_second(seconds).ok().map(rfc3339)
}

/// A time as the store writes it. Always nine digits of nanoseconds, even when they are
/// zeros: every stored time has the same width, so text order is time order.
fn rfc3339(time: jiff::Timestamp) -> String {
    format!("{time:.9}")
}

/// A stored time as `ps` shows it: `2025-01-31 09:15:02` (UTC).
pub fn show_time(timestamp: &str) -> String {
    timestamp.get(..19).unwrap_or(timestamp).replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, nanoseconds: i32) -> String {
        rfc3339(jiff::Timestamp::new(seconds, nanoseconds).unwrap())
    }

    #[test]
    fn dates() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400 + 3661, 5), "2000-02-29T01:01:01.000000005Z");
        assert_eq!(at(1_767_225_599, 999_999_999), "2025-12-31T23:59:59.999999999Z");
        let now = timestamp();
        assert_eq!((now.len(), &now[10..11], &now[29..]), (30, "T", "Z"));
        assert_eq!(show_time("2025-01-31T09:15:02.123456789Z"), "2025-01-31 09:15:02");
    }
}
