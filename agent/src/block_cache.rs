//! A small cache of freed heap blocks of a few KiB, in front of the static build's heap
//! allocator (musl's).
//!
//! Over TLS, rustls allocates a buffer for every 16 KiB record each way: the plaintext of a
//! record received (16,384 bytes) and a record to send (16,406), about 50,000 of each a
//! second in each relay process at 7 Gbit/s, each freed soon after. musl's allocator hands
//! the memory of such blocks back to the kernel whenever their group empties and maps it
//! again for the next one: 1,400 to 2,100 `mmap` and as many `munmap` a second in
//! `relay serve` and `relay listen` under wss, and 12,000 to 15,000 page faults. That made
//! the static build spend 13 % more CPU per GB over wss than the glibc build, whose
//! allocator keeps freed blocks of these sizes.
//!
//! [`BlockCache`] keeps up to [`SLOTS`] freed blocks of each size class (multiples of 4 KiB
//! up to [`LARGEST`]) and hands them out again; every other allocation, and every block the
//! cache has no room for, goes to the allocator behind it unchanged. A block of a cached
//! size is always allocated at its class's size, so any freed block of a class serves any
//! later request of that class, and a reallocation within a class keeps its block. At most
//! `SLOTS` × (4 + 8 + … + 32) KiB (1.1 MiB) stay cached; nothing is cached until blocks of
//! these sizes are freed (a non-target `exec` frees none). The slots are atomic pointers:
//! taking a block swaps its slot empty, so no two threads get one block, and nothing locks.
//!
//! Only the static build installs it (`main.rs`); the tests run it on the host's allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The step between size classes, and the smallest size cached: smaller blocks are the
/// inner allocator's fast path already.
pub const CLASS_STEP: usize = 4096;

/// The largest size cached: TLS records and the deframer's buffer are under it; the relay's
/// frame buffers (64 KiB and more) have a shelf of their own (`relay::buffer`).
pub const LARGEST: usize = 8 * CLASS_STEP;

/// Size classes: 4 KiB, 8 KiB, …, [`LARGEST`].
const CLASSES: usize = LARGEST / CLASS_STEP;

/// Freed blocks kept per class: a TLS connection frees the records of one write together
/// (up to 128 KiB of them, `relay::buffer::TLS_SEND_LIMIT`), eight at most.
pub const SLOTS: usize = 8;

/// Blocks of a cached size come from `malloc`, which aligns every block to 16 bytes on
/// x86-64; a request for more alignment is never cached.
const MAX_ALIGN: usize = 16;

/// A heap allocator: `inner`, with up to [`SLOTS`] freed blocks of each size class kept for
/// reuse.
#[derive(Debug)]
pub struct BlockCache<A> {
    inner: A,
    /// Each slot is empty (null) or holds one freed block of its class's size.
    slots: [[AtomicPtr<u8>; SLOTS]; CLASSES],
}

impl<A> BlockCache<A> {
    pub const fn new(inner: A) -> Self {
        BlockCache {
            inner,
            slots: [const { [const { AtomicPtr::new(null_mut()) }; SLOTS] }; CLASSES],
        }
    }

    /// The size class of `layout`, if blocks of it are cached.
    fn class_of(layout: Layout) -> Option<usize> {
        (CLASS_STEP..=LARGEST)
            .contains(&layout.size())
            .then(|| (layout.size() - 1) / CLASS_STEP)
            .filter(|_| layout.align() <= MAX_ALIGN)
    }

    /// What every block of `class` is allocated as.
    fn class_layout(class: usize) -> Layout {
        Layout::from_size_align((class + 1) * CLASS_STEP, MAX_ALIGN)
            .expect("a multiple of 4 KiB up to 32 KiB, aligned to 16, is a valid layout")
    }

    /// A cached block of `class`, if there is one.
    fn take(&self, class: usize) -> Option<*mut u8> {
        self.slots.get(class)?.iter().find_map(|slot| {
            // Looking first keeps threads from writing to slots that are empty anyway.
            if slot.load(Ordering::Relaxed).is_null() {
                return None;
            }
            // Acquire: the freeing thread's last writes to the block come before ours.
            let block = slot.swap(null_mut(), Ordering::Acquire);
            (!block.is_null()).then_some(block)
        })
    }

    /// Keeps `block` of `class` in an empty slot; false when every slot is taken.
    fn keep(&self, class: usize, block: *mut u8) -> bool {
        let Some(slots) = self.slots.get(class) else {
            return false;
        };
        slots.iter().any(|slot| {
            slot.load(Ordering::Relaxed).is_null()
                && slot
                    .compare_exchange(null_mut(), block, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Blocks cached now (for tests).
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|slot| !slot.load(Ordering::Relaxed).is_null())
            .count()
    }
}

// SAFETY: every block handed out is either the inner allocator's answer to a layout at
// least as large and as aligned as the one asked for (a class's layout covers every size
// of the class and 16-byte alignment, more than any cached request asks), or a block of
// that same class layout which its owner freed and which left its slot by an atomic swap,
// so it has exactly one owner again. Blocks go back to the inner allocator with the layout
// they were allocated with (the class layout for cached sizes; the caller's otherwise,
// which never falls in a class: `class_of` depends only on the layout).
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for BlockCache<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::class_of(layout) {
            // SAFETY: a class layout has a non-zero size.
            Some(class) => self
                .take(class)
                .unwrap_or_else(|| unsafe { self.inner.alloc(Self::class_layout(class)) }),
            // SAFETY: the caller's layout, as the caller's contract has it.
            None => unsafe { self.inner.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some(class) = Self::class_of(layout) else {
            // SAFETY: as in `alloc`.
            return unsafe { self.inner.alloc_zeroed(layout) };
        };
        match self.take(class) {
            Some(block) => {
                // SAFETY: the block holds the class's size, at least `layout.size()`.
                unsafe { block.write_bytes(0, layout.size()) };
                block
            }
            // SAFETY: a class layout has a non-zero size.
            None => unsafe { self.inner.alloc_zeroed(Self::class_layout(class)) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::class_of(layout) {
            Some(class) => {
                if !self.keep(class, ptr) {
                    // SAFETY: blocks of a cached size were allocated with their class layout.
                    unsafe { self.inner.dealloc(ptr, Self::class_layout(class)) }
                }
            }
            // SAFETY: allocated by the inner allocator with this layout.
            None => unsafe { self.inner.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, does not
        // overflow `isize` (GlobalAlloc::realloc's contract), which is all a layout needs.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Self::class_of(layout), Self::class_of(new_layout)) {
            // SAFETY: the caller's contract, unchanged; neither size is a cached one.
            (None, None) => unsafe { self.inner.realloc(ptr, layout, new_size) },
            // The block already holds the whole class.
            (Some(old), Some(new)) if old == new => ptr,
            _ => {
                // SAFETY: `new_layout` is valid and non-zero-sized (the caller's contract).
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks hold at least the smaller size, and are distinct
                    // (the new one was just handed out and the old one is still owned).
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
#[path = "block_cache_tests.rs"]
mod tests;
