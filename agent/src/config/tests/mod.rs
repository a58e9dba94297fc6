//! Config unit tests, table-driven: layering and sources, file errors, relay server.

mod file;
mod layers;
mod server;

use std::collections::HashMap;
use std::path::Path;

use super::*;

pub(super) const FILE: &str = "/cfg/agent.toml";
pub(super) const SECRET: &str = "SUPERSECRETKEY123=";

pub(super) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn from_file(text: &str) -> Settings {
    layer(&Flags::default(), &env(&[]), Some((Path::new(FILE), text))).expect(text)
}

pub(super) fn file_err(text: &str) -> String {
    layer(&Flags::default(), &env(&[]), Some((Path::new(FILE), text)))
        .expect_err(text)
        .to_string()
}
