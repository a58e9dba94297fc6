//! The tunnels compared: amlx-agent (`relay connect` → `relay serve` → `relay listen`) and
//! its peers rathole, bore and websocat, each carrying two services to the same local
//! servers: iperf3 and an echo server.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use base64::Engine as _;

use super::procs::{self, Proc, address_after, agent_command, free_port, wait_listening};

/// The Hybrid Connection the agent relays through.
const HC: &str = "bench";
/// bore's control port: fixed in bore 0.6 (no flag changes it).
pub const BORE_CONTROL_PORT: u16 = 7835;

/// What a tunnel forwards to.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub iperf: SocketAddr,
    pub echo: SocketAddr,
}

/// One process of a tunnel.
#[derive(Debug)]
pub struct Part {
    /// What it is called in its project (`relay serve`, `rathole server`, `ws-l`).
    pub role: &'static str,
    /// The service it carries alone, or `None` when it carries both.
    pub service: Option<Service>,
    pub proc: Proc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Iperf,
    Echo,
}

/// A running tunnel: its processes and its two entry addresses.
#[derive(Debug)]
pub struct Tunnel {
    pub parts: Vec<Part>,
    pub iperf: SocketAddr,
    pub echo: SocketAddr,
    /// amlx-agent only: a `relay connect --spare-tunnels 1` for the echo service and its
    /// entry address, kept out of `parts` (it is idle in every figure but 6).
    pub echo_spare: Option<(Proc, SocketAddr)>,
    /// Holds config files and keys until the processes are gone (dropped after `parts`).
    _dir: tempfile::TempDir,
}

impl Tunnel {
    /// Total user + system CPU ticks of every process of the tunnel.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        self.parts
            .iter()
            .map(|p| procs::cpu_ticks(p.proc.pid()))
            .sum()
    }

    /// The processes that carry the echo service (alone or with the other).
    pub fn echo_parts(&self) -> impl Iterator<Item = &Part> {
        self.parts
            .iter()
            .filter(|p| p.service != Some(Service::Iperf))
    }

    /// A tunnel of `parts` (processes the bench started itself) entered at `iperf` and
    /// `echo`.
    pub fn of_parts(
        parts: Vec<Part>,
        iperf: SocketAddr,
        echo: SocketAddr,
    ) -> anyhow::Result<Tunnel> {
        Ok(Tunnel {
            parts,
            iperf,
            echo,
            echo_spare: None,
            _dir: tempfile::tempdir().context("could not create a temp dir")?,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.parts.iter().map(|p| p.proc.pid()).collect()
    }

    pub fn dump(&mut self) -> String {
        self.parts
            .iter_mut()
            .map(|p| p.proc.dump())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Handshakes `relay serve` takes at once, from one source and in all (its defaults would
/// refuse a burst of benchmark clients, which all come from 127.0.0.1).
const HANDSHAKES: usize = 1024;

/// A running `relay serve` and how its clients reach it.
#[derive(Debug)]
pub struct Relay {
    pub serve: Proc,
    /// The connection string its clients get in their environment.
    pub cs: String,
    /// The self-signed certificate clients trust, with TLS.
    ca: Option<PathBuf>,
    agent: PathBuf,
    /// Holds the config file, key and certificate until the processes are gone.
    _dir: tempfile::TempDir,
}

impl Relay {
    /// `relay serve` on 127.0.0.1:0: plain ws, or wss with a self-signed certificate when
    /// `tls`; room for `max_tunnels` relayed connections.
    pub fn start(agent: &Path, tls: bool, max_tunnels: usize) -> anyhow::Result<Relay> {
        let dir = tempfile::tempdir().context("could not create a temp dir")?;
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        // Each tunnel is two relayed WebSockets (sender and rendezvous); room for the
        // control channels and the tunnels that check the idle ones are set up. Handshakes
        // are few at once (tunnels open one after another) but all come from 127.0.0.1.
        let max_connections = 2 * max_tunnels + 256;
        let config = write_private(
            dir.path(),
            "relay.toml",
            &format!(
                "[relay.server]\nmax_connections = {max_connections}\n\
                 max_handshakes_per_source = {HANDSHAKES}\nmax_handshakes = {HANDSHAKES}\n\
                 [[relay.server.keys]]\nname = \"bench\"\nkey = \"{key}\"\n\
                 rights = [\"listen\", \"send\"]\npaths = [\"*\"]\n"
            ),
        )?;
        let mut cmd = agent_command(agent);
        cmd.arg("--config")
            .arg(&config)
            .args(["relay", "serve", "--listen", "127.0.0.1:0"]);
        let ca = if tls {
            let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
            let pair = rcgen::generate_simple_self_signed(names)
                .context("could not make a certificate")?;
            let cert = write_private(dir.path(), "cert.pem", &pair.cert.pem())?;
            let key = write_private(dir.path(), "key.pem", &pair.signing_key.serialize_pem())?;
            cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(key);
            Some(cert)
        } else {
            cmd.arg("--insecure-ws");
            None
        };
        let mut serve = Proc::spawn("relay serve", cmd)?;
        let scheme = if tls { "wss://" } else { "ws://" };
        let addr = address_after(&serve.wait_for(scheme)?, scheme)?;
        // Credentials travel in the environment, never in argv.
        let cs = format!(
            "Endpoint=sb://{addr}/;SharedAccessKeyName=bench;SharedAccessKey={key};EntityPath={HC}"
        );
        Ok(Relay {
            serve,
            cs,
            ca,
            agent: agent.to_owned(),
            _dir: dir,
        })
    }

    /// A started `relay connect` for port name `name` on a free loopback port, with more
    /// `args`, and its entry address.
    fn connect(&self, name: &str, args: &[&str]) -> anyhow::Result<(Proc, SocketAddr)> {
        let mut cmd = self.client(&["connect", "--bind", "127.0.0.1:0", "--port-name", name]);
        cmd.args(args);
        let mut proc = Proc::spawn("relay connect", cmd)?;
        let entry = address_after(&proc.wait_for("listening on ")?, "listening on ")?;
        Ok((proc, entry))
    }

    /// `amlx-agent relay ARGS...` set up to reach this relay.
    pub fn client(&self, args: &[&str]) -> Command {
        let mut cmd = agent_command(&self.agent);
        cmd.arg("relay")
            .args(args)
            .env("AMLX_RELAY_CONNECTION_STRING", &self.cs);
        match &self.ca {
            Some(ca) => cmd.env("AMLX_RELAY_CA_FILE", ca),
            None => cmd.arg("--insecure-ws"),
        };
        cmd
    }
}

/// amlx-agent: `relay serve`, `relay listen` forwarding both services, one `relay connect`
/// per service.
pub fn agent(agent: &Path, to: Targets, tls: bool, max_tunnels: usize) -> anyhow::Result<Tunnel> {
    let relay = Relay::start(agent, tls, max_tunnels)?;
    // Room for the idle tunnels plus the one that checks each is set up.
    let cap = (max_tunnels + 16).to_string();
    let mut listen = Proc::spawn(
        "relay listen",
        relay.client(&[
            "listen",
            "--forward",
            &format!("iperf={}", to.iperf),
            "--forward",
            &format!("echo={}", to.echo),
            "--max-tunnels",
            &cap,
        ]),
    )?;
    listen.wait_for("listener online")?;
    let mut entries = Vec::new();
    let mut connects = Vec::new();
    for (name, service) in [("iperf", Service::Iperf), ("echo", Service::Echo)] {
        let (proc, entry) = relay.connect(name, &["--max-tunnels", &cap])?;
        entries.push(entry);
        connects.push(Part {
            role: "relay connect",
            service: Some(service),
            proc,
        });
    }
    // The same service once more, through a connect that keeps a spare tunnel (figure 6).
    let spare = relay.connect("echo", &["--spare-tunnels", "1"])?;
    let Relay {
        serve, _dir: dir, ..
    } = relay;
    let mut parts = vec![
        Part {
            role: "relay serve",
            service: None,
            proc: serve,
        },
        Part {
            role: "relay listen",
            service: None,
            proc: listen,
        },
    ];
    parts.extend(connects);
    Ok(Tunnel {
        parts,
        iperf: entries[0],
        echo: entries[1],
        echo_spare: Some(spare),
        _dir: dir,
    })
}

/// The developer's side of a connect-mode debug session: `relay serve` and `relay listen`
/// handing the port name `debug_port` to `debugger`.
pub fn relay_for_debugger(
    agent: &Path,
    debug_port: u16,
    debugger: SocketAddr,
) -> anyhow::Result<(Relay, Proc)> {
    let relay = Relay::start(agent, false, 16)?;
    let mut listen = Proc::spawn(
        "relay listen",
        relay.client(&["listen", "--forward", &format!("{debug_port}={debugger}")]),
    )?;
    listen.wait_for("listener online")?;
    Ok((relay, listen))
}

/// rathole 0.5 with its default transport (TCP, no encryption): `server` holds the entry
/// ports, `client` connects to the targets.
pub fn rathole(bin: &Path, to: Targets) -> anyhow::Result<Tunnel> {
    let dir = tempfile::tempdir().context("could not create a temp dir")?;
    let mut token = [0u8; 24];
    rand::fill(&mut token);
    let token = base64::engine::general_purpose::STANDARD.encode(token);
    let (control, iperf, echo) = (free_port()?, free_port()?, free_port()?);
    let server = write_private(
        dir.path(),
        "server.toml",
        &format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\
             [server.services.iperf]\ntoken = \"{token}\"\nbind_addr = \"127.0.0.1:{iperf}\"\n\
             [server.services.echo]\ntoken = \"{token}\"\nbind_addr = \"127.0.0.1:{echo}\"\n"
        ),
    )?;
    let client = write_private(
        dir.path(),
        "client.toml",
        &format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\
             [client.services.iperf]\ntoken = \"{token}\"\nlocal_addr = \"{}\"\n\
             [client.services.echo]\ntoken = \"{token}\"\nlocal_addr = \"{}\"\n",
            to.iperf, to.echo
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("--server").arg(&server).env("RUST_LOG", "warn");
    let mut server = Proc::spawn("rathole server", cmd)?;
    wait_listening(&mut server, control)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--client").arg(&client).env("RUST_LOG", "warn");
    let client = Proc::spawn("rathole client", cmd)?;
    // The service ports open once the client's control channels are up.
    wait_listening(&mut server, iperf)?;
    wait_listening(&mut server, echo)?;
    Ok(Tunnel {
        parts: vec![
            Part {
                role: "rathole server",
                service: None,
                proc: server,
            },
            Part {
                role: "rathole client",
                service: None,
                proc: client,
            },
        ],
        iperf: loopback(iperf),
        echo: loopback(echo),
        echo_spare: None,
        _dir: dir,
    })
}

/// bore 0.6: `bore server` on loopback (its control port is fixed), one `bore local` per
/// service on a port the server picks.
pub fn bore(bin: &Path, to: Targets) -> anyhow::Result<Tunnel> {
    let dir = tempfile::tempdir().context("could not create a temp dir")?;
    if procs::is_listening(BORE_CONTROL_PORT) {
        bail!("its fixed control port {BORE_CONTROL_PORT} is taken");
    }
    let mut cmd = Command::new(bin);
    cmd.args([
        "server",
        "--bind-addr",
        "127.0.0.1",
        "--bind-tunnels",
        "127.0.0.1",
    ])
    .env("RUST_LOG", "info");
    let mut server = Proc::spawn("bore server", cmd)?;
    wait_listening(&mut server, BORE_CONTROL_PORT)?;
    let mut parts = vec![Part {
        role: "bore server",
        service: None,
        proc: server,
    }];
    let mut entries = Vec::new();
    for (target, service) in [(to.iperf, Service::Iperf), (to.echo, Service::Echo)] {
        let mut cmd = Command::new(bin);
        cmd.args([
            "local",
            &target.port().to_string(),
            "--local-host",
            "127.0.0.1",
        ])
        .args(["--to", "127.0.0.1", "--port", "0"])
        .env("RUST_LOG", "info");
        let mut proc = Proc::spawn("bore local", cmd)?;
        let line = proc.wait_for("listening at ")?;
        // "listening at 127.0.0.1:PORT" (bore names the host it was given).
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse::<u16>().ok())
            .with_context(|| format!("no port in {line:?}"))?;
        entries.push(loopback(port));
        parts.push(Part {
            role: "bore local",
            service: Some(service),
            proc,
        });
    }
    Ok(Tunnel {
        parts,
        iperf: entries[0],
        echo: entries[1],
        echo_spare: None,
        _dir: dir,
    })
}

/// websocat 1.x in binary mode, one pair per service: `tcp-l:` → `ws://` entry and `ws-l:`
/// → `tcp:` exit.
pub fn websocat(bin: &Path, to: Targets) -> anyhow::Result<Tunnel> {
    let dir = tempfile::tempdir().context("could not create a temp dir")?;
    let mut parts = Vec::new();
    let mut entries = Vec::new();
    for (target, service) in [(to.iperf, Service::Iperf), (to.echo, Service::Echo)] {
        let (ws, tcp) = (free_port()?, free_port()?);
        let mut cmd = Command::new(bin);
        cmd.args([
            "-b",
            &format!("ws-l:127.0.0.1:{ws}"),
            &format!("tcp:{target}"),
        ]);
        let mut exit = Proc::spawn("websocat ws-l", cmd)?;
        wait_listening(&mut exit, ws)?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "-b",
            &format!("tcp-l:127.0.0.1:{tcp}"),
            &format!("ws://127.0.0.1:{ws}/"),
        ]);
        let mut entry = Proc::spawn("websocat tcp-l", cmd)?;
        wait_listening(&mut entry, tcp)?;
        entries.push(loopback(tcp));
        parts.push(Part {
            role: "websocat tcp-l",
            service: Some(service),
            proc: entry,
        });
        parts.push(Part {
            role: "websocat ws-l",
            service: Some(service),
            proc: exit,
        });
    }
    Ok(Tunnel {
        parts,
        iperf: entries[0],
        echo: entries[1],
        echo_spare: None,
        _dir: dir,
    })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Writes `text` to `dir/name`, readable by the owner only (keys, tokens).
fn write_private(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("could not chmod {}", path.display()))?;
    Ok(path)
}
