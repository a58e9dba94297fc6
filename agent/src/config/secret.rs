//! `Secret`: a connection string or key that is usable but never printed.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A secret (connection string, key): usable, but `Debug`/`Display` print `***`.
///
/// Deserializing one from a config file accepts only a string, and a wrong type is
/// reported without its value (a key written as a bare number is still a key).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in characters (validation messages may say how long, never what).
    pub fn char_len(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What a wrong-typed secret is reported as: the type, never the value.
const NOT_A_STRING: &str = "expected a string (the value is not shown: it is a secret)";

struct SecretVisitor;

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    // serde's default for these would echo the value in the error.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_char<E: de::Error>(self, _: char) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::custom(NOT_A_STRING))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::custom(NOT_A_STRING))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_mask_the_value() {
        let s = Secret::new("SharedAccessKey=hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(s.expose(), "SharedAccessKey=hunter2");
    }

    #[test]
    fn wrong_types_are_rejected_without_the_value() {
        #[derive(Debug, serde::Deserialize)]
        struct Holder {
            #[allow(dead_code)]
            key: Secret,
        }
        for doc in [
            "key = 987654321",
            "key = 98765.4321",
            "key = true",
            "key = [987654321]",
            "key = { a = 987654321 }",
            "key = 1979-05-27T07:32:00Z",
        ] {
            // `message()`, not `Display`: toml's Display quotes the source line.
            let err = toml::from_str::<Holder>(doc).expect_err(doc);
            let err = err.message();
            assert!(
                !err.contains("987654321") && !err.contains("98765.4321"),
                "{doc}: {err}"
            );
            assert!(!err.contains("1979"), "{doc}: {err}");
        }
        let ok: Holder = toml::from_str("key = \"abc\"").expect("a string is a secret");
        assert_eq!(ok.key.expose(), "abc");
    }
}
