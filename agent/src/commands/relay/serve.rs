//! `relay serve`: `[relay.server]` from the config file under the flags, bind, print the
//! address, run until SIGTERM/SIGINT.

use anyhow::Context as _;

use crate::cli::ServeArgs;
use crate::config::{ServerSettings, Settings, TlsFiles};
use crate::relay::server;

pub fn run(args: &ServeArgs, settings: &Settings) -> anyhow::Result<i32> {
    let config = with_flags(&settings.relay.server, args);
    let server_settings = server::Settings::from_config(&config)?;
    if !config.keys.is_empty()
        && let Some(path) = &settings.source
    {
        // Anyone who reads the relay's keys can sign tokens for it.
        crate::small_file::warn_if_others_may_read(
            path,
            "the config file, which holds the relay's keys,",
        );
    }
    if let Some(tls) = &config.tls {
        // Its TLS key lets its reader pose as the relay.
        crate::small_file::warn_if_others_may_read(&tls.key, "the TLS private key");
    }
    super::runtime()?.block_on(async move {
        let listener = crate::relay::listen_socket(config.listen)
            .with_context(|| format!("relay serve: could not bind {}", config.listen))?;
        let bound = listener
            .local_addr()
            .context("relay serve: bound address")?;
        // Signals are watched before the line announces the relay, so a stop right after
        // it drains.
        let stop = super::shutdown_on_signal(true);
        // A stable line for scripts and tests (port 0 picks the port).
        crate::logging::stderr::say(&format!(
            "relay serve: listening on {}://{bound}",
            server_settings.scheme()
        ));
        server::run_until_cut(listener, server_settings, stop.drain, stop.cut).await
    })?;
    Ok(0)
}

/// The flags over `[relay.server]` (already layered over the defaults by `config`).
fn with_flags(file: &ServerSettings, args: &ServeArgs) -> ServerSettings {
    let mut server = file.clone();
    if let Some(listen) = args.listen {
        server.listen = listen;
    }
    if args.tls_cert.is_some() || args.insecure_ws {
        // TLS from flags replaces TLS (and insecure_ws) from the file, and vice versa;
        // clap makes --tls-cert and --tls-key go together.
        server.tls = args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert, key)| TlsFiles { cert, key });
        server.insecure_ws = args.insecure_ws;
    }
    server.allow_insecure_remote |= args.allow_insecure_remote;
    server
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: Option<&str>, tls: bool, insecure_ws: bool, remote: bool) -> ServeArgs {
        ServeArgs {
            listen: listen.map(|l| l.parse().expect("socket address")),
            tls_cert: tls.then(|| "flag-cert.pem".into()),
            tls_key: tls.then(|| "flag-key.pem".into()),
            insecure_ws,
            allow_insecure_remote: remote,
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let file_tls = ServerSettings {
            listen: "127.0.0.1:9".parse().expect("socket address"),
            tls: Some(TlsFiles {
                cert: "file-cert.pem".into(),
                key: "file-key.pem".into(),
            }),
            ..ServerSettings::default()
        };
        let file_ws = ServerSettings {
            insecure_ws: true,
            ..ServerSettings::default()
        };
        let flag_tls = Some(TlsFiles {
            cert: "flag-cert.pem".into(),
            key: "flag-key.pem".into(),
        });
        // (why, file, flags, listen, tls, insecure_ws, allow_insecure_remote)
        type Case<'a> = (
            &'a str,
            &'a ServerSettings,
            ServeArgs,
            &'a str,
            Option<TlsFiles>,
            bool,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "no flags",
                &file_tls,
                args(None, false, false, false),
                "127.0.0.1:9",
                file_tls.tls.clone(),
                false,
                false,
            ),
            (
                "--listen",
                &file_tls,
                args(Some("0.0.0.0:0"), false, false, false),
                "0.0.0.0:0",
                file_tls.tls.clone(),
                false,
                false,
            ),
            (
                "--insecure-ws drops the file's TLS",
                &file_tls,
                args(None, false, true, true),
                "127.0.0.1:9",
                None,
                true,
                true,
            ),
            (
                "--tls-* drop the file's insecure_ws",
                &file_ws,
                args(None, true, false, false),
                "127.0.0.1:9351",
                flag_tls.clone(),
                false,
                false,
            ),
            (
                "--tls-* replace the file's TLS",
                &file_tls,
                args(None, true, false, false),
                "127.0.0.1:9",
                flag_tls,
                false,
                false,
            ),
        ];
        for (why, file, flags, listen, tls, insecure_ws, remote) in cases {
            let got = with_flags(file, &flags);
            assert_eq!(got.listen.to_string(), listen, "{why}");
            assert_eq!(got.tls, tls, "{why}");
            assert_eq!(
                (got.insecure_ws, got.allow_insecure_remote),
                (insecure_ws, remote),
                "{why}"
            );
            assert_eq!(got.keys, file.keys, "{why}");
        }
    }
}
