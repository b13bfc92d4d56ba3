//! The configuration files' one duration type: a humantime string (`"500ms"`, `"10s"`, `"1h 30m"`)
//! read into a [`std::time::Duration`], with the bad string named in the error. Used as
//! `#[serde(with = "egress_common::duration")]`, or `egress_common::duration::option` for an
//! optional key.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Deserialize a humantime string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}

/// An optional key (with `#[serde(default)]`): absent is `None`, present is a humantime string.
pub mod option {
    use std::time::Duration;

    use serde::Deserializer;

    /// Deserialize a present key.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[serde(with = "crate::duration")]
        every: Duration,
        #[serde(default, with = "crate::duration::option")]
        after: Option<Duration>,
    }

    #[test]
    fn humantime_strings_and_named_errors() {
        let t: T = serde_json::from_str(r#"{"every": "1h 30m"}"#).unwrap();
        assert_eq!(t.every, Duration::from_secs(5400));
        assert_eq!(t.after, None);
        let t: T = serde_json::from_str(r#"{"every": "500ms", "after": "10s"}"#).unwrap();
        assert_eq!(t.after, Some(Duration::from_secs(10)));
        let e = serde_json::from_str::<T>(r#"{"every": "soon"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"soon\""), "{e}");
    }
}
