//! Debugger injection: how the step's argv is rewritten to run under debugpy.

use serde::Serialize;

use crate::session::keyword_enum;

/// `--inject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectMode {
    /// debugpy for Python commands, otherwise only the exported variables.
    #[default]
    Auto,
    /// Always wrap with debugpy.
    Debugpy,
    /// Only export `AMLX_DEBUG_PORT` and friends, for code that calls debugpy itself.
    None,
}

keyword_enum!(InjectMode, "inject mode", "auto" => InjectMode::Auto, "debugpy" => InjectMode::Debugpy, "none" => InjectMode::None);
