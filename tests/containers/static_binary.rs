//! The release binary is fully static: its ELF file asks for no interpreter and no
//! shared library, and it runs in an empty root (no libc, no /proc, no /etc).

use std::path::Path;
use std::process::Command;

use super::engine::{require, static_binary};
use crate::util;

/// The release binary's ceiling, as docker/build-static.sh enforces it.
const MAX_BYTES: u64 = 6_000_000;

/// `e_type` of a position-dependent executable (a static-pie binary is `ET_DYN`, 3, and
/// relocates itself at every start).
const ET_EXEC: u16 = 2;

/// `PT_INTERP`: the program header naming the dynamic loader.
const PT_INTERP: u32 = 3;
/// `PT_DYNAMIC`: the program header of the dynamic section.
const PT_DYNAMIC: u32 = 2;
/// `DT_NEEDED`: a dynamic-section entry naming a shared library to load.
const DT_NEEDED: u64 = 1;
/// `DT_NULL`: the dynamic section's terminator.
const DT_NULL: u64 = 0;

/// What the dynamic linker would be asked for by a 64-bit little-endian ELF file.
#[derive(Debug, PartialEq, Eq)]
struct Linking {
    /// `e_type`: `ET_EXEC` for a position-dependent executable.
    kind: u16,
    /// A `PT_INTERP` header is present (an `ld.so` is needed to start it).
    interpreter: bool,
    /// The number of `DT_NEEDED` entries (shared libraries it needs).
    needed: usize,
}

/// Reads the program headers and the dynamic section of `elf`. Panics with the reason
/// when the bytes are not a 64-bit little-endian ELF file (the check can only fail loudly).
fn linking(elf: &[u8]) -> Linking {
    let u16_at = |at: usize| -> usize {
        let b = elf.get(at..at + 2).expect("ELF header within the file");
        usize::from(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| -> u32 {
        let b = elf.get(at..at + 4).expect("ELF field within the file");
        u32::from_le_bytes(b.try_into().expect("4 bytes"))
    };
    let u64_at = |at: usize| -> u64 {
        let b = elf.get(at..at + 8).expect("ELF field within the file");
        u64::from_le_bytes(b.try_into().expect("8 bytes"))
    };
    assert_eq!(elf.get(..4), Some(&b"\x7fELF"[..]), "not an ELF file");
    assert_eq!(
        elf.get(4..6),
        Some(&[2u8, 1][..]),
        "not 64-bit little-endian"
    );
    let phoff = usize::try_from(u64_at(0x20)).expect("e_phoff fits usize");
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    let mut found = Linking {
        kind: u16::try_from(u16_at(0x10)).expect("e_type is 16 bits"),
        interpreter: false,
        needed: 0,
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            PT_INTERP => found.interpreter = true,
            PT_DYNAMIC => {
                let offset = usize::try_from(u64_at(ph + 8)).expect("p_offset fits usize");
                let size = usize::try_from(u64_at(ph + 32)).expect("p_filesz fits usize");
                for entry in (offset..offset + size).step_by(16) {
                    match u64_at(entry) {
                        DT_NULL => break,
                        DT_NEEDED => found.needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    found
}

#[test]
fn the_static_binary_is_position_dependent_needs_no_shared_library_and_the_check_sees_one_that_does()
 {
    let binary = static_binary();
    let size = std::fs::metadata(binary).expect("the static binary").len();
    assert!(size <= MAX_BYTES, "{} is {size} bytes", binary.display());
    let rows: [(&Path, bool, &str); 2] = [
        (binary, false, "the musl release binary"),
        // The failure case: the glibc test build loads libc (and more) through ld.so.
        (&util::agent_bin(), true, "the glibc debug binary"),
    ];
    for (path, dynamic, what) in rows {
        let elf = std::fs::read(path).expect("read the binary");
        let found = linking(&elf);
        assert_eq!(
            found.interpreter,
            dynamic,
            "{what} ({}): interpreter {found:?}",
            path.display()
        );
        assert_eq!(
            found.needed > 0,
            dynamic,
            "{what} ({}): DT_NEEDED entries {found:?}",
            path.display()
        );
        // The release binary is position-dependent (no self-relocation at start); the
        // glibc debug build is a PIE, which the check must tell apart.
        assert_eq!(
            found.kind == ET_EXEC,
            !dynamic,
            "{what} ({}): ELF type {found:?}",
            path.display()
        );
    }
}

#[test]
fn the_static_binary_runs_in_an_empty_chroot() {
    let chroot = require("chroot", "coreutils");
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::copy(static_binary(), root.path().join("amlx-agent")).expect("copy the binary");
    let rows: [(&[&str], &str); 3] = [
        (&["--version"], "amlx-agent "),
        (&["detect"], "debug target:"),
        (&["exec", "--", "/amlx-agent", "--version"], "amlx-agent "),
    ];
    for (args, expected) in rows {
        // An empty environment too: nothing from this machine but the kernel.
        let out = util::output_bounded(
            Command::new(&chroot)
                .arg(root.path())
                .arg("/amlx-agent")
                .args(args)
                .env_clear(),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(expected),
            "chroot {} /amlx-agent {}: {:?}\n{stdout}{}",
            root.path().display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let left: Vec<_> = std::fs::read_dir(root.path())
        .expect("read the root")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        ["amlx-agent"],
        "the root was empty but for the binary"
    );
}

/// The static build wraps musl's `memcpy` and `memmove` (agent/src/memory_copies.rs, linked
/// with `--wrap` by docker/build-static.sh): every copy of the relay's data path, and
/// rustls' moves of a buffer onto itself over TLS, go through them. 16 MiB each way through
/// `relay connect` → `relay serve` → `relay listen` of the static binary, over wss and ws,
/// come back intact.
#[test]
fn the_static_binary_relays_sixteen_mib_each_way_intact_over_wss_and_ws() {
    use crate::relay::harness::Relay;
    for tls in [true, false] {
        crate::relay::tunnels::sixteen_mib_each_way(Relay::start_with_agent(static_binary(), tls));
    }
}
