//! Positions in a topic: `EPOCH-OFFSET`.

use std::{fmt, str::FromStr};

use crate::TopicError;

/// One history of a topic. Random (never a counter), so that a store that
/// lost its history, or was rolled back to an older copy, starts a history
/// no client's position can belong to by chance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// A new, random epoch.
    pub fn random() -> Self {
        // Never 0, which a bug could write by default.
        Self(fastrand::u64(1..))
    }

    /// The epoch as stored.
    pub fn from_u64(v: u64) -> Self {
        Self(v)
    }

    /// The epoch as stored.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a message stands in a topic: its history ([`Epoch`]) and its
/// offset in it (1 for the first message, one more for each next one).
/// Written `EPOCH-OFFSET`: 16 hex digits, a dash, a decimal number; the
/// position before any message is offset 0.
///
/// # Examples
///
/// ```
/// use lameduck_topics::Position;
///
/// let p: Position = "00000000000000ff-42".parse().unwrap();
/// assert_eq!(p.offset, 42);
/// assert_eq!(p.to_string(), "00000000000000ff-42");
/// assert!("ff-42".parse::<Position>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Position {
    /// The history.
    pub epoch: Epoch,
    /// The offset in it.
    pub offset: u64,
}

impl Position {
    /// The position `offset` of `epoch`.
    pub fn new(epoch: Epoch, offset: u64) -> Self {
        Self { epoch, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.offset)
    }
}

impl FromStr for Position {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, TopicError> {
        let bad = || TopicError::BadPosition(s.chars().take(64).collect());
        let (epoch, offset) = s.split_once('-').ok_or_else(bad)?;
        if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| bad())?;
        let offset = offset.parse().map_err(|_| bad())?;
        Ok(Self::new(Epoch(epoch), offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_refuse_garbage() {
        let p = Position::new(Epoch::random(), 7);
        assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        for bad in [
            "",
            "-",
            "0123456789abcdef",
            "0123456789abcdef-",
            "0123456789abcdeg-1",
            "0123456789abcdef-1x",
            "0123456789abcdef--1",
            "0123456789abcdef-99999999999999999999999",
            "123-1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
        assert_ne!(Epoch::random(), Epoch::random());
    }
}
