//! `relay` subcommands: the self-hosted server and the laptop-side forwarders.
//!
//! Credentials never come from a flag (`ps` would show them): they come from
//! `AMLX_RELAY_CONNECTION_STRING`, `--connection-string-file` or the config file.

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub command: RelayCommand,
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Run a self-hosted Hybrid Connections relay (the protocol subset the agent needs).
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {}
