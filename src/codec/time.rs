//! Exact `SystemTime` <-> (whole units, remainder in nanoseconds) conversions.

use super::CodecError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn to_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn from_nanos(nanos: i128, field: &'static str) -> Result<SystemTime, CodecError> {
    let out = || CodecError::TimestampOutOfRange(field);
    let abs = nanos.unsigned_abs();
    let secs = u64::try_from(abs / 1_000_000_000).map_err(|_| out())?;
    let d = Duration::new(secs, (abs % 1_000_000_000) as u32);
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
    .ok_or_else(out)
}

/// Splits `t` into whole `unit_nanos` units since the epoch (floored) and the remainder.
pub(super) fn split(
    t: SystemTime,
    unit_nanos: i128,
    field: &'static str,
) -> Result<(i64, u32), CodecError> {
    // After the epoch (every time a collector reads), in 64-bit arithmetic: the 128-bit
    // division below was a tenth of the encoder's time. `unit_nanos` divides a second.
    if let Ok(d) = t.duration_since(UNIX_EPOCH) {
        let unit = unit_nanos as u64;
        let sub = u64::from(d.subsec_nanos());
        let whole = d
            .as_secs()
            .checked_mul(1_000_000_000 / unit)
            .and_then(|w| w.checked_add(sub / unit))
            .and_then(|w| i64::try_from(w).ok());
        if let Some(whole) = whole {
            return Ok((whole, (sub % unit) as u32));
        }
    }
    split_nanos(t, unit_nanos, field)
}

/// [`split`] through the time's nanoseconds as a 128-bit number: any time, before the epoch
/// too.
fn split_nanos(
    t: SystemTime,
    unit_nanos: i128,
    field: &'static str,
) -> Result<(i64, u32), CodecError> {
    let n = to_nanos(t);
    let whole = i64::try_from(n.div_euclid(unit_nanos))
        .map_err(|_| CodecError::TimestampOutOfRange(field))?;
    Ok((whole, n.rem_euclid(unit_nanos) as u32))
}

/// The inverse of [`split`]; a remainder outside the unit is an error.
pub(super) fn join(
    whole: i64,
    rem: u32,
    unit_nanos: i128,
    field: &'static str,
) -> Result<SystemTime, CodecError> {
    if i128::from(rem) >= unit_nanos {
        return Err(CodecError::InvalidField {
            field,
            reason: format!("sub-unit remainder {rem} is out of range"),
        });
    }
    from_nanos(i128::from(whole) * unit_nanos + i128::from(rem), field)
}

pub(super) const MS: i128 = 1_000_000;
pub(super) const SEC: i128 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_epoch_round_trips() {
        let t = UNIX_EPOCH - Duration::new(5, 1);
        let (ms, rem) = split(t, MS, "t").unwrap();
        assert_eq!(ms, -5001);
        assert_eq!(join(ms, rem, MS, "t").unwrap(), t);
    }

    #[test]
    fn the_64_bit_split_equals_the_128_bit_one() {
        let secs = [
            0,
            1,
            1_700_000_000,
            u64::MAX / 1_000_000,
            i64::MAX as u64,
            u64::MAX,
        ];
        for s in secs {
            for n in [0, 1, 999_999, 1_000_000, 123_456_789, 999_999_999] {
                let Some(t) = UNIX_EPOCH.checked_add(Duration::new(s, n)) else {
                    continue;
                };
                for unit in [MS, SEC] {
                    let fast = split(t, unit, "t").ok();
                    assert_eq!(fast, split_nanos(t, unit, "t").ok(), "{s} s {n} ns");
                    if let Some((w, r)) = fast {
                        assert_eq!(join(w, r, unit, "t").unwrap(), t);
                    }
                }
            }
        }
    }
}
