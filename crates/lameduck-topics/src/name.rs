//! Topic names.

use std::fmt;

use crate::TopicError;

/// A topic's name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, so that it
/// fits in a URL path segment, a Redis key and a log line as it is.
///
/// # Examples
///
/// ```
/// use lameduck_topics::TopicName;
///
/// let name = TopicName::new("orders.eu-1").unwrap();
/// assert_eq!(name.as_str(), "orders.eu-1");
/// assert!(TopicName::new("").is_err());
/// assert!(TopicName::new("a/b").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// The longest name.
    pub const MAX_LEN: usize = 128;

    /// Checks `name`.
    ///
    /// # Errors
    ///
    /// [`TopicError::BadName`] when it is empty, too long, or has another
    /// character.
    pub fn new(name: &str) -> Result<Self, TopicError> {
        let fits = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if fits {
            Ok(Self(name.to_owned()))
        } else {
            Err(TopicError::BadName(name.chars().take(140).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "A.b_c-9", &"x".repeat(128)] {
            assert!(TopicName::new(good).is_ok(), "{good}");
        }
        for bad in ["", " ", "a b", "a/b", "é", "a\0", &"x".repeat(129)] {
            assert!(TopicName::new(bad).is_err(), "{bad:?}");
        }
    }
}
