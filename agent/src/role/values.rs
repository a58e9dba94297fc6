//! Reading launcher variables: numbers, flags and host names, each bad value warned about once.

use std::collections::BTreeSet;

use super::{Env, Host};

/// A number read from a variable (or a flag), remembering where it came from for warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Value {
    pub n: u32,
    /// The variable or flag that supplied it, named in warnings about it.
    pub from: &'static str,
}

/// What the detectors can see: the environment, this node, and the warnings so far.
pub(crate) struct Vars<'a> {
    env: &'a dyn Env,
    host: &'a dyn Host,
    warnings: Vec<String>,
    /// Variables already warned about: each bad value is reported exactly once.
    warned: BTreeSet<&'static str>,
}

impl<'a> Vars<'a> {
    pub fn new(env: &'a dyn Env, host: &'a dyn Host) -> Self {
        Vars {
            env,
            host,
            warnings: Vec::new(),
            warned: BTreeSet::new(),
        }
    }

    /// This node, for launchers that name their master node by host.
    pub fn host(&self) -> &dyn Host {
        self.host
    }

    /// Whether `name` is set at all (even to an empty or bad value).
    pub fn is_set(&self, name: &str) -> bool {
        self.env.var(name).is_some()
    }

    /// Whether `name` holds a non-blank value (no warning either way).
    pub fn has_value(&self, name: &str) -> bool {
        self.env.var(name).is_some_and(|v| !v.trim().is_empty())
    }

    /// Whether any of `names` is set.
    pub fn any_set(&self, names: &[&str]) -> bool {
        names.iter().any(|name| self.is_set(name))
    }

    /// The first of `names` that is set.
    pub fn first_set(&self, names: &[&'static str]) -> Option<&'static str> {
        names.iter().copied().find(|name| self.is_set(name))
    }

    /// The trimmed value of `name`; an empty value is unknown, with a warning.
    pub fn text(&mut self, name: &'static str) -> Option<String> {
        let raw = self.read(name)?;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            self.reject(name, &raw, "empty");
            return None;
        }
        Some(trimmed.to_owned())
    }

    /// A rank or index (0 and up); unset is silently unknown, a bad value warns.
    pub fn index(&mut self, name: &'static str) -> Option<Value> {
        self.number(name, parse_index)
    }

    /// A size or count (1 and up); unset is silently unknown, a bad value warns.
    pub fn count(&mut self, name: &'static str) -> Option<Value> {
        self.number(name, parse_count)
    }

    /// [`Vars::index`] of the first of `names` that is set (the others are not read).
    pub fn first_index(&mut self, names: &[&'static str]) -> Option<Value> {
        self.first_set(names).and_then(|name| self.index(name))
    }

    /// [`Vars::count`] of the first of `names` that is set (the others are not read).
    pub fn first_count(&mut self, names: &[&'static str]) -> Option<Value> {
        self.first_set(names).and_then(|name| self.count(name))
    }

    /// A `true`/`false` string, compared case-insensitively (`"false"` is false).
    pub fn flag(&mut self, name: &'static str) -> Option<bool> {
        let raw = self.read(name)?;
        match parse_flag(&raw) {
            Ok(value) => Some(value),
            Err(why) => {
                self.reject(name, &raw, why);
                None
            }
        }
    }

    /// Records a warning about `name` unless one was already recorded.
    pub fn warn(&mut self, name: &'static str, message: String) {
        if self.warned.insert(name) {
            self.warnings.push(message);
        }
    }

    /// Warns that `name`'s value `raw` is ignored, and why.
    pub fn reject(&mut self, name: &'static str, raw: &str, why: &str) {
        self.warn(
            name,
            format!("ignoring {name}={raw:?}: {why}; treating it as unknown"),
        );
    }

    /// The value of `name`; one that is not valid Unicode is unknown, with a warning
    /// (the value is not quoted: it may not even print).
    fn read(&mut self, name: &'static str) -> Option<String> {
        self.env.lookup(name).unwrap_or_else(|super::NotUnicode| {
            self.warn(
                name,
                format!("ignoring {name}: its value is not valid UTF-8; treating it as unknown"),
            );
            None
        })
    }

    pub fn into_warnings(self) -> Vec<String> {
        self.warnings
    }

    fn number(
        &mut self,
        name: &'static str,
        parse: fn(&str) -> Result<u32, &'static str>,
    ) -> Option<Value> {
        let raw = self.read(name)?;
        match parse(&raw) {
            Ok(n) => Some(Value { n, from: name }),
            Err(why) => {
                self.reject(name, &raw, why);
                None
            }
        }
    }
}

/// Parses a rank or index: a whole number from 0.
///
/// Launchers and users leave `""`, `-1`, `$(hostname)` and `1:4` in these variables.
pub(crate) fn parse_index(raw: &str) -> Result<u32, &'static str> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("empty");
    }
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if s.strip_prefix('-').is_some_and(digits) {
        return Err("negative");
    }
    if s.split_once([':', '-'])
        .is_some_and(|(lo, hi)| digits(lo.trim()) && digits(hi.trim()))
    {
        return Err("a range, not a single number");
    }
    if digits(s) {
        return Err("too large");
    }
    Err("not a whole number")
}

/// Parses a size or count: a whole number from 1.
pub(crate) fn parse_count(raw: &str) -> Result<u32, &'static str> {
    match parse_index(raw)? {
        0 => Err("zero is not a size"),
        n => Ok(n),
    }
}

/// Parses `true`/`false` in any case. Presence alone means nothing: `"false"` is false.
pub(crate) fn parse_flag(raw: &str) -> Result<bool, &'static str> {
    let s = raw.trim();
    if s.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("false") {
        Ok(false)
    } else if s.is_empty() {
        Err("empty")
    } else {
        Err("expected true or false")
    }
}

/// Whether two host names name the same machine: short names, case-insensitive
/// (`node01` matches `NODE01.cluster.local`).
pub(crate) fn same_host(a: &str, b: &str) -> bool {
    let short = |h: &str| h.trim().split('.').next().unwrap_or_default().to_owned();
    let (a, b) = (short(a), short(b));
    !a.is_empty() && a.eq_ignore_ascii_case(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_values() {
        let cases: &[(&str, Result<u32, &str>)] = &[
            ("0", Ok(0)),
            (" 7 ", Ok(7)),
            ("4294967295", Ok(u32::MAX)),
            ("", Err("empty")),
            ("   ", Err("empty")),
            ("-1", Err("negative")),
            ("1:4", Err("a range, not a single number")),
            ("2-8", Err("a range, not a single number")),
            ("abc", Err("not a whole number")),
            ("node-3", Err("not a whole number")),
            ("1.5", Err("not a whole number")),
            ("99999999999", Err("too large")),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_index(raw), *want, "parse_index({raw:?})");
        }
    }

    #[test]
    fn count_values() {
        let cases: &[(&str, Result<u32, &str>)] = &[
            ("1", Ok(1)),
            ("64", Ok(64)),
            ("0", Err("zero is not a size")),
            ("1:4", Err("a range, not a single number")),
            ("-2", Err("negative")),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_count(raw), *want, "parse_count({raw:?})");
        }
    }

    #[test]
    fn flag_values() {
        let cases: &[(&str, Result<bool, &str>)] = &[
            ("true", Ok(true)),
            ("True", Ok(true)),
            (" TRUE ", Ok(true)),
            ("false", Ok(false)),
            ("False", Ok(false)),
            ("", Err("empty")),
            ("1", Err("expected true or false")),
            ("yes", Err("expected true or false")),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_flag(raw), *want, "parse_flag({raw:?})");
        }
    }

    #[test]
    fn host_names() {
        let cases: &[(&str, &str, bool)] = &[
            ("node01", "node01", true),
            ("node01", "NODE01.cluster.local", true),
            ("node01.a", "node01.b", true),
            ("node01", "node1", false),
            ("", "", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(same_host(a, b), *want, "same_host({a:?}, {b:?})");
        }
    }
}
