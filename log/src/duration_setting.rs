//! Durations in configuration files: a key named for its unit (`heartbeat_ms`,
//! `expire_after_secs`) takes a bare number in that unit or a string with units of its own
//! (`"100ms"`, `"30d"`, `"1h 30m"`, as `humantime` reads them), so `sweep_ms = "2s"` and
//! `sweep_ms = 2000` mean the same. Used with `#[serde(deserialize_with = …)]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Setting {
    Number(u64),
    Text(String),
}

fn parse<'de, D: Deserializer<'de>>(d: D) -> Result<Result<u64, Duration>, D::Error> {
    match Setting::deserialize(d)? {
        Setting::Number(n) => Ok(Ok(n)),
        Setting::Text(s) => humantime::parse_duration(s.trim()).map(Err).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}); write e.g. \"250ms\", \"10s\", \"30d\" or a number"
            ))
        }),
    }
}

/// A `*_ms` key.
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match parse(d)? {
        Ok(n) => n,
        Err(duration) => u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
    })
}

/// A `*_secs` key (a string must come to whole seconds).
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match parse(d)? {
        Ok(n) => n,
        Err(duration) if duration.subsec_nanos() == 0 => duration.as_secs(),
        Err(duration) => {
            return Err(serde::de::Error::custom(format!(
                "{duration:?} is not a whole number of seconds"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Both {
        #[serde(deserialize_with = "millis")]
        a_ms: u64,
        #[serde(deserialize_with = "secs")]
        b_secs: u64,
    }

    fn read(text: &str) -> Result<Both, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_in_the_keys_unit_or_strings_with_units() {
        let both = read(r#"{"a_ms": 250, "b_secs": 30}"#).unwrap();
        assert_eq!((both.a_ms, both.b_secs), (250, 30));
        let both = read(r#"{"a_ms": "2s", "b_secs": "30d"}"#).unwrap();
        assert_eq!((both.a_ms, both.b_secs), (2000, 30 * 86400));
        let both = read(r#"{"a_ms": "1m 500ms", "b_secs": "1h"}"#).unwrap();
        assert_eq!((both.a_ms, both.b_secs), (60_500, 3600));
        let err = read(r#"{"a_ms": "soon", "b_secs": 1}"#).unwrap_err();
        assert!(err.contains("\"soon\" is not a duration"), "{err}");
        let err = read(r#"{"a_ms": 1, "b_secs": "1500ms"}"#).unwrap_err();
        assert!(err.contains("not a whole number of seconds"), "{err}");
    }
}
