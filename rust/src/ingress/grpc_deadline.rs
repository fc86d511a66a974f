//! The client's gRPC deadline (`grpc-timeout`), answered as the spec says: DEADLINE_EXCEEDED. tonic enforces the
//! header too, but answers CANCELLED ("Timeout expired"); the guard in front of the handlers (`budget::GrpcGuard`)
//! ends the call a moment before tonic's timer would, so clients see DEADLINE_EXCEEDED from either side.

use std::time::Duration;

/// How much earlier than tonic's timer the guard ends a call: tonic starts its timer a few microseconds before the
/// guard starts its own, and polls the guard first, so any margin above that makes the guard's answer win.
pub const MARGIN: Duration = Duration::from_millis(1);

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_hours(amount),
        b'M' => Duration::from_mins(amount),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// How long the guard lets a call with this header run.
pub fn guard_limit(value: &[u8]) -> Option<Duration> {
    parse(value).map(|timeout| timeout.saturating_sub(MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_and_bad_values() {
        assert_eq!(parse(b"2H"), Some(Duration::from_hours(2)));
        assert_eq!(parse(b"3M"), Some(Duration::from_mins(3)));
        assert_eq!(parse(b"4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse(b"299m"), Some(Duration::from_millis(299)));
        assert_eq!(parse(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b""[..], b"S", b"123456789S", b"1x", b"-1S", b"1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(guard_limit(b"300m"), Some(Duration::from_millis(299)));
        assert_eq!(guard_limit(b"500u"), Some(Duration::ZERO));
    }
}
