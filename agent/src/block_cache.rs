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
//! [`BlockCache`] keeps up to [`SLOTS`] freed blocks of each size class ([`CLASS_SIZES`],
//! 4 to 36 KiB) and hands them out again; every other allocation, and every block the
//! cache has no room for, goes to the allocator behind it unchanged. A block of a cached
//! size is always allocated at its class's size, so any freed block of a class serves any
//! later request of that class, and a reallocation within a class keeps its block. The
//! classes are musl's own slot sizes less its 4-byte header, so a request takes the slot
//! it would have taken without the cache (both TLS sizes above share one). What stays
//! cached is what the process freed of these sizes, at most `SLOTS` blocks a class: under
//! wss, sixteen of the one class of TLS records (300 KB); were every class full, 3.4 MB.
//! Nothing is cached until blocks of these sizes are freed (a non-target `exec` frees
//! none). The slots are atomic pointers: taking a block swaps its slot empty, so no two
//! threads get one block, and nothing locks. A block freed while it is already cached (a
//! double free, which musl would stop on) aborts the process rather than be handed out
//! twice.
//!
//! Only the static build installs it (`main.rs`); the tests run it on the host's allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The largest request of each size class, smallest first: the slot sizes of musl's
/// allocator from 4 KiB to just over 32 KiB (its classes are multiples of 16 bytes) less
/// the 4 bytes it keeps in front of each block. The last takes 32 KiB itself: rustls'
/// read buffer doubles to it from 16 KiB. Smaller requests are the inner allocator's fast
/// path already; the relay's frame buffers (64 KiB and more) have a shelf of their own
/// (`relay::buffer`).
pub const CLASS_SIZES: [usize; 13] = [
    4668, 5436, 6540, 8172, 9340, 10908, 13084, 16364, 18700, 21820, 26188, 32748, 37436,
];

/// Requests of at most this many bytes are never cached: the largest of musl's slots
/// under [`CLASS_SIZES`], less its header.
const SMALLEST_CACHED: usize = 4076 + 1;

/// Size classes.
const CLASSES: usize = CLASS_SIZES.len();

/// Freed blocks kept per class: a TLS connection frees the records of one write together
/// (up to 128 KiB of them, `relay::buffer::TLS_SEND_LIMIT`: eight), and records received
/// and sent share a class, with two connections for each relayed one in `relay serve`.
/// With eight, `relay serve` still made a third of its `mmap` calls.
pub const SLOTS: usize = 16;

/// Blocks of a cached size come from `malloc`, which aligns every block to 16 bytes on
/// x86-64; a request for more alignment is never cached.
const MAX_ALIGN: usize = 16;

/// What every block of each class is allocated as, checked when the program is compiled
/// (so no check, and no panic, is left inside the allocator).
const CLASS_LAYOUTS: [Layout; CLASSES] = {
    let mut layouts = [Layout::new::<u8>(); CLASSES];
    let mut class = 0;
    while class < CLASSES {
        layouts[class] = match Layout::from_size_align(CLASS_SIZES[class], MAX_ALIGN) {
            Ok(layout) => layout,
            Err(_) => panic!("a class size is a valid layout"),
        };
        class += 1;
    }
    layouts
};

/// The largest request cached.
pub const LARGEST: usize = CLASS_SIZES[CLASSES - 1];

/// A size class: which slots hold its blocks, and the layout each is allocated with.
#[derive(Debug, Clone, Copy)]
struct Class {
    index: usize,
    layout: Layout,
}

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
    fn class_of(layout: Layout) -> Option<Class> {
        let size = layout.size();
        if size < SMALLEST_CACHED || layout.align() > MAX_ALIGN {
            return None;
        }
        CLASS_LAYOUTS
            .iter()
            .enumerate()
            .find(|(_, class)| size <= class.size())
            .map(|(index, &layout)| Class { index, layout })
    }

    /// A cached block of `class`, if there is one.
    fn take(&self, class: Class) -> Option<*mut u8> {
        self.slots.get(class.index)?.iter().find_map(|slot| {
            // Looking first keeps threads from writing to slots that are empty anyway.
            if slot.load(Ordering::Relaxed).is_null() {
                return None;
            }
            // Acquire: the freeing thread's last writes to the block come before ours.
            let block = slot.swap(null_mut(), Ordering::Acquire);
            (!block.is_null()).then_some(block)
        })
    }

    /// Keeps `block` of `class` in an empty slot; false when every slot is taken. Aborts
    /// when the block is cached already: it was freed twice, and would be handed out to
    /// two owners.
    fn keep(&self, class: Class, block: *mut u8) -> bool {
        let Some(slots) = self.slots.get(class.index) else {
            return false;
        };
        if slots
            .iter()
            .any(|slot| slot.load(Ordering::Relaxed) == block)
        {
            std::process::abort();
        }
        slots.iter().any(|slot| {
            slot.load(Ordering::Relaxed).is_null()
                && slot
                    .compare_exchange(null_mut(), block, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Gives every cached block back to the inner allocator (for tests, whose inner
    /// allocator checks each block comes back with the layout it went out with).
    #[cfg(test)]
    #[allow(unsafe_code)]
    fn drain(&self)
    where
        A: GlobalAlloc,
    {
        for (slots, &layout) in self.slots.iter().zip(&CLASS_LAYOUTS) {
            for slot in slots {
                let block = slot.swap(null_mut(), Ordering::Acquire);
                if !block.is_null() {
                    // SAFETY: a cached block is owned by the cache and has its class layout.
                    unsafe { self.inner.dealloc(block, layout) };
                }
            }
        }
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
// that same class layout which its owner freed
// and which left its slot by an atomic swap, so it has exactly one owner again. Blocks go back to the inner allocator with the layout
// they were allocated with (the class layout for cached sizes; the caller's otherwise,
// which never falls in a class: `class_of` depends only on the layout).
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for BlockCache<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::class_of(layout) {
            // SAFETY: a class layout has a non-zero size.
            Some(class) => self
                .take(class)
                .unwrap_or_else(|| unsafe { self.inner.alloc(class.layout) }),
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
            None => unsafe { self.inner.alloc_zeroed(class.layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::class_of(layout) {
            Some(class) => {
                if !self.keep(class, ptr) {
                    // SAFETY: blocks of a cached size were allocated with their class layout.
                    unsafe { self.inner.dealloc(ptr, class.layout) }
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
            (Some(old), Some(new)) if old.index == new.index => ptr,
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
