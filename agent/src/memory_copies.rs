//! Faster `memcpy` and `memmove` for the static (musl) build, in front of musl's own.
//!
//! The static build links musl's C library, whose x86-64 copies cost the relay a sixth of
//! its CPU over TLS (figure 3 of docs/performance.md): the static build spent 2.4 to 2.6 s
//! of CPU per GB moved through wss where the glibc build spent 1.9 to 2.0; with these
//! wrappers, 2.1.
//!
//! - musl's `memmove` copies a buffer onto *itself* backwards, one byte at a time
//!   (`std; rep movsb`): it takes `dst == src` for an overlap. rustls asks for exactly
//!   that after every read that did not complete a record (its deframer "discards" zero
//!   bytes by moving what it holds onto itself), up to 16 KiB each time.
//! - musl's `memcpy` copies eight bytes per step (`rep movsq`); on a CPU with fast string
//!   moves (ERMS) `rep movsb` moves large blocks several times faster, which is what glibc
//!   does for large copies too.
//!
//! docker/build-static.sh links with `--wrap=memcpy --wrap=memmove`, so every call to
//! either, from Rust and from musl itself, reaches the wrappers below, which take the two
//! cases above and hand every other call to musl's own function unchanged. Other builds
//! (glibc, where the C library's copies are already fast) do not wrap anything.

/// Copies of at least this many bytes use [`copy_forward`] (when the CPU has fast string
/// moves); shorter ones stay musl's. TLS records (16 KiB) and relay frames (up to 64 KiB)
/// are above it; the few copies of a non-target `exec` are below, so its path is unchanged
/// (512 here measured the same for TLS and cost `exec` 2 % more instructions).
pub const LARGE_COPY: usize = 4096;

/// Copies `n` bytes from `src` to `dst` with `rep movsb`, first byte first.
///
/// # Safety
/// As `memcpy`: `src` readable and `dst` writable for `n` bytes, the two not overlapping.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub unsafe fn copy_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's contract; the direction flag is clear on entry (the ABI says so)
    // and the instruction leaves it as it was.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
    }
}

/// Whether a `memcpy` of `n` bytes goes to [`copy_forward`] rather than musl's.
#[cfg(target_arch = "x86_64")]
pub fn forward_is_faster(n: usize) -> bool {
    n >= LARGE_COPY && std::arch::is_x86_feature_detected!("ermsb")
}

/// What a `memmove(dst, src, n)` needs: nothing (the bytes are already there), or musl's.
pub fn move_is_needed(dst: *const u8, src: *const u8, n: usize) -> bool {
    n != 0 && !std::ptr::eq(dst, src)
}

#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod wrappers {
    use super::{copy_forward, forward_is_faster, move_is_needed};

    unsafe extern "C" {
        /// musl's `memcpy` (the linker's `--wrap` names the original `__real_memcpy`).
        fn __real_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
        /// musl's `memmove`.
        fn __real_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    }

    /// Every `memcpy` of the static build (`--wrap=memcpy`).
    ///
    /// # Safety
    /// As `memcpy`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wrap_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        if forward_is_faster(n) {
            // SAFETY: memcpy's own contract, which the caller keeps.
            unsafe { copy_forward(dst, src, n) };
            return dst;
        }
        // SAFETY: as above.
        unsafe { __real_memcpy(dst, src, n) }
    }

    /// Every `memmove` of the static build (`--wrap=memmove`).
    ///
    /// # Safety
    /// As `memmove`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wrap_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        if !move_is_needed(dst, src, n) {
            return dst;
        }
        // SAFETY: memmove's own contract, which the caller keeps.
        unsafe { __real_memmove(dst, src, n) }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// A buffer of distinct-looking bytes (no period of 4 or 8 that could hide a shift).
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(131) % 251) as u8)
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn copy_forward_copies_every_length_and_alignment_exactly() {
        // Lengths around the word size, the threshold and a record; both alignments move.
        let lengths = (0..=70).chain([
            LARGE_COPY - 1,
            LARGE_COPY,
            LARGE_COPY + 7,
            4095,
            4096,
            16_384 + 21,
        ]);
        for len in lengths {
            for src_at in [0usize, 1, 3, 8, 13] {
                for dst_at in [0usize, 1, 5, 8, 31] {
                    let src = pattern(src_at + len + 16);
                    let mut dst = vec![0xAAu8; dst_at + len + 16];
                    let mut expected = dst.clone();
                    expected[dst_at..dst_at + len].copy_from_slice(&src[src_at..src_at + len]);
                    // SAFETY: both ranges are inside their own vectors.
                    unsafe {
                        copy_forward(dst.as_mut_ptr().add(dst_at), src.as_ptr().add(src_at), len);
                    }
                    assert!(
                        dst == expected,
                        "len {len}, src at {src_at}, dst at {dst_at}: bytes outside or inside differ"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn only_large_copies_take_the_forward_path() {
        assert!(!forward_is_faster(0));
        assert!(!forward_is_faster(LARGE_COPY - 1));
        assert_eq!(
            forward_is_faster(LARGE_COPY),
            std::arch::is_x86_feature_detected!("ermsb")
        );
    }

    #[test]
    fn a_move_onto_itself_or_of_nothing_is_skipped_and_every_other_is_made() {
        let buf = pattern(64);
        let at = |i: usize| buf[i..].as_ptr();
        // (dst, src, n, needed)
        let cases = [
            (at(0), at(0), 64, false),
            (at(5), at(5), 10, false),
            (at(0), at(8), 0, false),
            (at(0), at(8), 56, true),
            (at(8), at(0), 56, true),
            (at(1), at(0), 1, true),
        ];
        for (dst, src, n, needed) in cases {
            assert_eq!(move_is_needed(dst, src, n), needed, "{dst:?} {src:?} {n}");
        }
    }
}
