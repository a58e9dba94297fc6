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
//!   moves (ERMS) `rep movsb` moves blocks of a few KiB and more faster (glibc uses it from
//!   a few KiB up to about the cache's size, where it switches to non-temporal stores; the
//!   relay's copies are at most 64 KiB).
//!
//! docker/build-static.sh links with `--wrap=memcpy --wrap=memmove`, so every call to
//! either, from Rust and from musl itself, reaches the wrappers below, which take the two
//! cases above and hand every other call to musl's own function unchanged. Other builds
//! (glibc, where the C library's copies are already fast) do not wrap anything. A move to
//! a higher address that overlaps its source is still musl's backward byte copy; nothing
//! on the relay's path was seen making one.

/// Copies of at least this many bytes use [`copy_forward`] (when the CPU has fast string
/// moves); shorter ones stay musl's. TLS records (16 KiB) and relay frames (up to 64 KiB)
/// are above it; the few copies of a non-target `exec` are below (512 here measured the
/// same for TLS and cost `exec` 2 % more instructions).
pub const LARGE_COPY: usize = 4096;

/// A C library's `memcpy` or `memmove`.
pub type CopyFn = unsafe extern "C" fn(*mut u8, *const u8, usize) -> *mut u8;

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

/// `memcpy` as the static build does it: [`copy_forward`] for a large copy on a CPU with
/// fast string moves, `otherwise` (musl's) for the rest. Returns `dst`, as `memcpy` does.
///
/// # Safety
/// As `memcpy`, and `otherwise` is a `memcpy`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline]
pub unsafe fn memcpy_via(dst: *mut u8, src: *const u8, n: usize, otherwise: CopyFn) -> *mut u8 {
    if n >= LARGE_COPY {
        // SAFETY: the caller's contract.
        return unsafe { large_copy(dst, src, n, otherwise) };
    }
    // SAFETY: as above. A short copy is a compare and a jump to musl's.
    unsafe { otherwise(dst, src, n) }
}

/// The large-copy branch of [`memcpy_via`], kept out of line so that the short path (most
/// calls) saves no registers.
///
/// # Safety
/// As [`memcpy_via`].
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[cold]
#[inline(never)]
unsafe fn large_copy(dst: *mut u8, src: *const u8, n: usize, otherwise: CopyFn) -> *mut u8 {
    // The detection runs once (cpuid, cached in an atomic): no call, no allocation, so
    // it is safe before main, in a signal handler and in a forked child.
    if std::arch::is_x86_feature_detected!("ermsb") {
        // SAFETY: the caller's contract.
        unsafe { copy_forward(dst, src, n) };
        return dst;
    }
    // SAFETY: as above.
    unsafe { otherwise(dst, src, n) }
}

/// `memmove` as the static build does it: nothing for a move onto itself or of nothing,
/// `otherwise` (musl's) for the rest. Returns `dst`, as `memmove` does.
///
/// # Safety
/// As `memmove`, and `otherwise` is a `memmove`.
#[allow(unsafe_code)]
#[inline]
pub unsafe fn memmove_via(dst: *mut u8, src: *const u8, n: usize, otherwise: CopyFn) -> *mut u8 {
    if n == 0 || std::ptr::eq(dst.cast_const(), src) {
        return dst;
    }
    // SAFETY: the caller's contract.
    unsafe { otherwise(dst, src, n) }
}

/// The two functions the static build's `--wrap` sends every `memcpy` and `memmove` to.
/// They are compiled (and linted and unit-tested) in every x86-64 build; only the musl
/// build exports them under their C names and hands on to musl's originals, which `--wrap`
/// names `__real_memcpy` and `__real_memmove`. Elsewhere they hand on to the C library's
/// own functions and nothing calls them but the tests.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod wrappers {
    use super::{memcpy_via, memmove_via};

    #[cfg(target_env = "musl")]
    unsafe extern "C" {
        /// musl's `memcpy` (the linker's `--wrap` names the original `__real_memcpy`).
        #[link_name = "__real_memcpy"]
        fn c_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
        /// musl's `memmove`.
        #[link_name = "__real_memmove"]
        fn c_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    }

    #[cfg(not(target_env = "musl"))]
    unsafe extern "C" fn c_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract (memcpy's own).
        unsafe { libc::memcpy(dst.cast(), src.cast(), n).cast() }
    }

    #[cfg(not(target_env = "musl"))]
    unsafe extern "C" fn c_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract (memmove's own).
        unsafe { libc::memmove(dst.cast(), src.cast(), n).cast() }
    }

    /// Every `memcpy` of the static build (`--wrap=memcpy`).
    ///
    /// # Safety
    /// As `memcpy`.
    #[cfg_attr(target_env = "musl", unsafe(no_mangle))]
    pub unsafe extern "C" fn __wrap_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: memcpy's own contract, which the caller keeps.
        unsafe { memcpy_via(dst, src, n, c_memcpy) }
    }

    /// Every `memmove` of the static build (`--wrap=memmove`).
    ///
    /// # Safety
    /// As `memmove`.
    #[cfg_attr(target_env = "musl", unsafe(no_mangle))]
    pub unsafe extern "C" fn __wrap_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: memmove's own contract, which the caller keeps.
        unsafe { memmove_via(dst, src, n, c_memmove) }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A buffer of distinct-looking bytes (no period of 4 or 8 that could hide a shift).
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(131) % 251) as u8)
            .collect()
    }

    /// A `memcpy` of `len` bytes from offset `src_at` of a patterned buffer to offset
    /// `dst_at` of another, through `copy`: it returns `dst` and changes exactly those bytes.
    fn check_copy(
        len: usize,
        src_at: usize,
        dst_at: usize,
        copy: impl Fn(*mut u8, *const u8, usize) -> *mut u8,
    ) {
        let src = pattern(src_at + len + 16);
        let mut dst = vec![0xAAu8; dst_at + len + 16];
        let mut expected = dst.clone();
        expected[dst_at..dst_at + len].copy_from_slice(&src[src_at..src_at + len]);
        // SAFETY: both ranges are inside their own vectors, which do not overlap.
        unsafe {
            let to = dst.as_mut_ptr().add(dst_at);
            assert_eq!(
                copy(to, src.as_ptr().add(src_at), len),
                to,
                "len {len}: returns dst"
            );
        }
        assert!(
            dst == expected,
            "len {len}, src at {src_at}, dst at {dst_at}: bytes outside or inside differ"
        );
    }

    /// A `memmove` of `n` bytes from offset `src_at` to offset `dst_at` of one patterned
    /// buffer, through `mv`: it returns `dst` and leaves what `copy_within` leaves.
    fn check_move(
        dst_at: usize,
        src_at: usize,
        n: usize,
        mv: impl Fn(*mut u8, *const u8, usize) -> *mut u8,
    ) {
        let mut buf = pattern(dst_at.max(src_at) + n + 8);
        let mut expected = buf.clone();
        expected.copy_within(src_at..src_at + n, dst_at);
        // SAFETY: both ranges are inside `buf`; memmove allows them to overlap.
        unsafe {
            let base = buf.as_mut_ptr();
            let to = base.add(dst_at);
            assert_eq!(mv(to, base.add(src_at), n), to, "memmove returns dst");
        }
        assert!(
            buf == expected,
            "memmove {dst_at} {src_at} {n}: bytes differ"
        );
    }

    /// Calls of [`counted_memcpy`] and [`counted_memmove`] (the tests that count run
    /// one after another in one test function each).
    static MEMCPY_CALLS: AtomicUsize = AtomicUsize::new(0);
    static MEMMOVE_CALLS: AtomicUsize = AtomicUsize::new(0);

    /// The host C library's `memcpy`, counted: what musl's is to the wrappers.
    unsafe extern "C" fn counted_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        MEMCPY_CALLS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller's contract (libc::memcpy's own).
        unsafe { libc::memcpy(dst.cast(), src.cast(), n).cast() }
    }

    unsafe extern "C" fn counted_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        MEMMOVE_CALLS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller's contract (libc::memmove's own).
        unsafe { libc::memmove(dst.cast(), src.cast(), n).cast() }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn memcpy_via_copies_every_length_and_alignment_exactly_and_returns_dst() {
        // Lengths around the word size, the threshold, a TLS record and a relay frame;
        // both alignments move.
        let lengths = (0..=70).chain([
            LARGE_COPY - 1,
            LARGE_COPY,
            LARGE_COPY + 1,
            LARGE_COPY + 7,
            16_384 + 21,
            65_536,
        ]);
        let ermsb = std::arch::is_x86_feature_detected!("ermsb");
        for len in lengths {
            for src_at in [0usize, 1, 3, 8, 13] {
                for dst_at in [0usize, 1, 5, 8, 31] {
                    let before = MEMCPY_CALLS.load(Ordering::SeqCst);
                    check_copy(len, src_at, dst_at, |dst, src, n| {
                        // SAFETY: check_copy's ranges, which do not overlap.
                        unsafe { memcpy_via(dst, src, n, counted_memcpy) }
                    });
                    let delegated = MEMCPY_CALLS.load(Ordering::SeqCst) - before;
                    let expect_delegated = usize::from(len < LARGE_COPY || !ermsb);
                    assert_eq!(delegated, expect_delegated, "len {len}: who copied");
                }
            }
        }
    }

    #[test]
    fn memmove_via_skips_a_move_onto_itself_or_of_nothing_and_hands_on_every_other() {
        // (dst offset, src offset, n, handed to the C library's memmove)
        let cases = [
            (0, 0, 64, false),
            (5, 5, 10, false),
            (0, 8, 0, false),
            (0, 8, 56, true),
            (8, 0, 56, true),
            (1, 0, 1, true),
            (1, 0, 63, true),
            (0, 1, 63, true),
            (0, 0, LARGE_COPY * 4, false),
            (0, 7, LARGE_COPY * 4 - 7, true),
            (7, 0, LARGE_COPY * 4 - 7, true),
        ];
        for (dst_at, src_at, n, handed_on) in cases {
            let before = MEMMOVE_CALLS.load(Ordering::SeqCst);
            check_move(dst_at, src_at, n, |dst, src, n| {
                // SAFETY: check_move's ranges; memmove allows them to overlap.
                unsafe { memmove_via(dst, src, n, counted_memmove) }
            });
            let calls = MEMMOVE_CALLS.load(Ordering::SeqCst) - before;
            assert_eq!(
                calls,
                usize::from(handed_on),
                "{dst_at} {src_at} {n}: handed on"
            );
        }
    }

    /// The exported functions themselves (here handing on to glibc's), on the cases that
    /// take each path: a short and a long copy, a move onto itself, moves both ways.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_wrappers_return_dst_and_copy_exactly() {
        use wrappers::{__wrap_memcpy, __wrap_memmove};
        for len in [0, 1, 17, LARGE_COPY - 1, LARGE_COPY, 3 * LARGE_COPY + 5] {
            // SAFETY: check_copy's ranges, which do not overlap.
            check_copy(len, 3, 5, |dst, src, n| unsafe {
                __wrap_memcpy(dst, src, n)
            });
        }
        // (dst offset, src offset, n)
        for (dst_at, src_at, n) in [
            (0, 0, 2 * LARGE_COPY),
            (0, 3, 2 * LARGE_COPY),
            (3, 0, 2 * LARGE_COPY),
            (1, 0, 9),
            (0, 0, 0),
        ] {
            // SAFETY: check_move's ranges; memmove allows them to overlap.
            check_move(dst_at, src_at, n, |dst, src, n| unsafe {
                __wrap_memmove(dst, src, n)
            });
        }
    }
}
