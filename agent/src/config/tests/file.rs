//! File errors name file, line and key, and never show a secret.

use super::super::*;
use super::{SECRET, env, file_err, from_file};

#[test]
fn file_errors_name_file_line_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[debug]\nenabled = true\n\n\nrank = 3\n",
            "/cfg/agent.toml:5: unknown key debug.rank (known keys: enabled, ranks, \
             max_targets_per_node, mode, on_debug_failure, attach_timeout, inject, wait_for_client, post_mortem, post_mortem_timeout, post_mortem_max)",
        ),
        (
            "# comment\nbogus = 1\n",
            "/cfg/agent.toml:2: unknown key bogus (known keys: debug, ports, node, log, relay, targets)",
        ),
        (
            "[debug]\nenabled = true\nattach_timeout = \"10 parsecs\"\n",
            "/cfg/agent.toml:3: debug.attach_timeout: invalid duration \"10 parsecs\" \
             (expected e.g. 30s, 10m)",
        ),
        (
            "[debug]\nenabled = \"yes\"\n",
            "/cfg/agent.toml:2: debug.enabled: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "[debug]\nranks = \"0,x\"\n",
            "/cfg/agent.toml:2: debug.ranks: invalid rank spec \"0,x\": \"x\" is not a rank number \
             (expected 0, all, master, local0 or a list like 0,3,5-7)",
        ),
        (
            "[debug]\nmax_targets_per_node = 0\n",
            "/cfg/agent.toml:2: debug.max_targets_per_node: invalid target count \"0\" \
             (expected a whole number from 1 to 4294967295)",
        ),
        // A float is not a count, even a whole one.
        (
            "[debug]\nmax_targets_per_node = 2.0\n",
            "/cfg/agent.toml:2: debug.max_targets_per_node: invalid target count \"2.0\" \
             (expected a whole number from 1 to 4294967295)",
        ),
        // Past 64 bits: the setting's own message, not "invalid type: integer ... as i128".
        (
            "[debug]\nmax_targets_per_node = 99999999999999999999\n",
            "/cfg/agent.toml:2: debug.max_targets_per_node: invalid target count \
             \"99999999999999999999\" (expected a whole number from 1 to 4294967295)",
        ),
        (
            "[debug]\nmode = \"attach\"\n",
            "/cfg/agent.toml:2: debug.mode: invalid debug mode \"attach\": expected one of \
             connect, listen, direct",
        ),
        (
            "[ports]\nrange = \"9-1\"\n",
            "/cfg/agent.toml:2: ports.range: invalid port range \"9-1\": expected START-END \
             with 1 <= START <= END <= 65535, e.g. 5678-5777",
        ),
        (
            "[node]\nip = \"10.0.0.300\"\n",
            "/cfg/agent.toml:2: node.ip: invalid IP address \"10.0.0.300\" \
             (expected e.g. 10.0.0.4 or fd00::4)",
        ),
        (
            "[log]\nformat = \"xml\"\n",
            "/cfg/agent.toml:2: log.format: invalid log format \"xml\": expected one of text, json",
        ),
        (
            "[relay]\nhybrid_connection = \"hc\"\nentity = \"x\"\n",
            "/cfg/agent.toml:3: unknown key relay.entity (known keys: connection_string, \
             connection_string_file, hybrid_connection, ca_file, insecure_ws, max_tunnels, \
             spare_tunnels, server)",
        ),
        (
            "[relay]\ninsecure_ws = true\nmax_tunnels = 0\n",
            "/cfg/agent.toml:3: relay.max_tunnels: invalid tunnel count \"0\" \
             (expected a whole number from 1 to 1073741816)",
        ),
        (
            "[relay]\nspare_tunnels = 9\n",
            "/cfg/agent.toml:2: relay.spare_tunnels: invalid spare tunnel count \"9\" \
             (expected a whole number from 0 to 8)",
        ),
        (
            "[node]\nip = \"224.0.0.1\"\n",
            "/cfg/agent.toml:2: node.ip: node IP 224.0.0.1 is a multicast address: a debugger \
             cannot connect to it; give this node's own address",
        ),
        (
            "[node]\nstate_dir = \"\"\n",
            "/cfg/agent.toml:2: node.state_dir: is empty: name a directory, or leave the key \
             out for the default",
        ),
        (
            "[ports]\nlock_dir = \"\"\n",
            "/cfg/agent.toml:2: ports.lock_dir: is empty: name a directory, or leave the key \
             out for the default",
        ),
        (
            "[relay]\nmax_tunnels = 4611686018427387904\n",
            "/cfg/agent.toml:2: relay.max_tunnels: invalid tunnel count \"4611686018427387904\" \
             (expected a whole number from 1 to 1073741816)",
        ),
        (
            "[relay]\n\nmax_tunnels = -5\n",
            "/cfg/agent.toml:3: relay.max_tunnels: invalid tunnel count \"-5\" \
             (expected a whole number from 1 to 1073741816)",
        ),
        (
            "[debug\nenabled = true\n",
            "/cfg/agent.toml:1: malformed TOML: unclosed table, expected `]`",
        ),
        (
            "[debug]\nenabled = true\nenabled = false\n",
            "/cfg/agent.toml:3: malformed TOML: duplicate key",
        ),
        (
            "[debug]\nattach_timeout = 10m\n",
            "/cfg/agent.toml:2: malformed TOML: string values must be quoted, expected literal string",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(file_err(text), format!("config error: {want}"), "{text}");
    }
}

#[test]
fn errors_around_secrets_never_show_them() {
    let broken = [
        format!("[relay]\nconnection_string = \"Endpoint=sb://h/;SharedAccessKey={SECRET}\n"),
        format!("[relay]\nconnection_string = Endpoint=sb://h/;SharedAccessKey={SECRET}\n"),
        format!("Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey={SECRET}\n"),
        format!("[relay]\nconnection_string = \"{SECRET}\"\nbad = 1\n"),
        format!("[relay]\nconnection_strin = \"{SECRET}\"\n"),
        format!("[relay]\nconnection_string = [\"{SECRET}\"]\n"),
        format!("[relay]\nconnection_string = \"{SECRET}\"\n[debug]\nranks = \"x\"\n"),
        format!(
            "[[relay.server.keys]]\nname = \"k\"\nkey = \"{SECRET}{}\"\n",
            "x".repeat(300)
        ),
        "[[relay.server.keys]]\nname = \"k\"\nkey = 123456789\n".to_owned(),
    ];
    for text in &broken {
        let err = file_err(text);
        assert!(!err.contains(SECRET) && !err.contains("123456789"), "{err}");
        assert!(err.contains("/cfg/agent.toml:"), "{err}");
    }
    // A bad variable next to a secret one, and a good file holding one.
    let vars = env(&[
        ("AMLX_RELAY_CONNECTION_STRING", SECRET),
        ("AMLX_ATTACH_TIMEOUT", "soon"),
    ]);
    let err = layer(&Flags::default(), &vars, None).expect_err("bad timeout");
    assert!(!err.to_string().contains(SECRET));
    let text = format!("[relay]\nconnection_string = \"{SECRET}\"\n");
    let got = from_file(&text);
    assert_eq!(
        got.relay.connection_string.as_ref().map(Secret::expose),
        Some(SECRET)
    );
    assert!(!format!("{got:?}").contains(SECRET));
    assert!(!format!("{got:#?}").contains(SECRET));
}

/// A config file is read with a size bound; what is not a regular file says what it is
/// (a FIFO is refused before opening it, which would block).
#[test]
fn config_files_are_read_with_a_bound() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let at_limit = dir.path().join("at-limit.toml");
    let limit = usize::try_from(MAX_CONFIG_BYTES).expect("the limit fits in memory");
    std::fs::write(&at_limit, "#".repeat(limit)).expect("write");
    let over = dir.path().join("over.toml");
    std::fs::write(&over, "#".repeat(limit + 1)).expect("write");
    let not_utf8 = dir.path().join("latin1.toml");
    std::fs::write(&not_utf8, b"# caf\xe9\n").expect("write");
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let unreadable = dir.path().join("unreadable.toml");
    std::fs::write(&unreadable, "").expect("write");
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let missing = dir.path().join("missing.toml");
    let root = nix::unistd::geteuid().is_root();
    let cases: Vec<(&Path, Option<&str>)> = vec![
        (&at_limit, None),
        (Path::new("/dev/null"), None),
        (&over, Some("larger than the 1024 KiB limit")),
        (
            Path::new("/dev/zero"),
            Some("larger than the 1024 KiB limit"),
        ),
        (&not_utf8, Some("not UTF-8")),
        (&fifo, Some("FIFO")),
        (dir.path(), Some("is a directory")),
        (&missing, Some("No such file")),
        (&unreadable, (!root).then_some("Permission denied")),
    ];
    for (path, want) in cases {
        let got = file::read_bounded(path);
        match want {
            None => assert!(got.is_ok(), "{}: {got:?}", path.display()),
            Some(want) => {
                let err = got.expect_err(&path.display().to_string());
                assert!(err.contains(want), "{}: {err}", path.display());
            }
        }
    }
    // Through `load`, the error names the file and who named it.
    let flags = Flags {
        config: Some(Path::new("/dev/zero")),
        ..Flags::default()
    };
    let err = load(&flags, &env(&[])).expect_err("/dev/zero").to_string();
    assert!(
        err.starts_with("config error: --config: cannot read /dev/zero: it is larger than"),
        "{err}"
    );
}

/// The key an error names is found from its span: in tables under headers (whose own span
/// is only the header), arrays of tables, inline tables and arrays, with non-ASCII and
/// quoted keys; no key outside any entry, the deepest one searched in a document nested
/// deeper; never a panic.
#[test]
fn the_key_an_error_names_is_found_by_its_span() {
    use super::super::file::{MAX_KEY_DEPTH, key_at};
    let deep = format!(
        "x = {}1{}\n",
        "[".repeat(MAX_KEY_DEPTH + 5),
        "]".repeat(MAX_KEY_DEPTH + 5)
    );
    // (document, the text the span covers, the key named)
    let cases: &[(&str, &str, &str)] = &[
        ("a = 1\nb = 2\n", "2", "b"),
        (
            "[debug]\nenabled = true\n\nrank = 3\n",
            "rank",
            "debug.rank",
        ),
        (
            "[relay.server]\nlisten = \"x:1\"\n",
            "\"x:1\"",
            "relay.server.listen",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\n[[relay.server.keys]]\nname = \"zz\"\n",
            "\"zz\"",
            "relay.server.keys[1].name",
        ),
        ("t = { \"ü\" = 5, v = [7, 8] }\n", "8", "t.v[1]"),
        ("[\"ü\"]\nk = 1\n", "1", "ü.k"),
        ("\"a.b\" = 9\n", "9", "a.b"),
        ("a = 1\n# only a comment here\n", "# only", ""),
    ];
    for (document, covered, want) in cases {
        let start = document.find(covered).expect("the covered text");
        let span = start..start + covered.len();
        assert_eq!(
            key_at(document, &span),
            *want,
            "{document:?} at {covered:?}"
        );
    }
    let start = deep.find('1').expect("the value");
    let key = key_at(&deep, &(start..start + 1));
    assert!(key.starts_with("x[0][0]") && !key.contains("].["), "{key}");
    assert_eq!(key.matches('[').count(), MAX_KEY_DEPTH - 1, "{key}");
    // Spans past the end, and text that is not TOML: no key.
    assert_eq!(key_at("a = 1\n", &(100..200)), "");
    assert_eq!(key_at("a = = 1", &(0..1)), "");
}
