use std::alloc::System;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::*;

/// The host's allocator, strict: it remembers the layout each block went out with and
/// fails the test when a block comes back (freed or reallocated) with another, or twice.
#[derive(Debug, Default)]
struct Strict {
    /// Live blocks by address.
    live: Mutex<HashMap<usize, Layout>>,
    /// Every call made to it.
    calls: AtomicUsize,
}

impl Strict {
    fn out(&self, block: *mut u8, layout: Layout) -> *mut u8 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !block.is_null() {
            let before = self
                .live
                .lock()
                .expect("lock")
                .insert(block as usize, layout);
            assert!(before.is_none(), "{block:?} handed out twice by the host");
        }
        block
    }

    fn back(&self, block: *mut u8, layout: Layout) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let went_out = self.live.lock().expect("lock").remove(&(block as usize));
        assert_eq!(
            went_out,
            Some(layout),
            "{block:?} came back with another layout"
        );
    }

    fn live(&self) -> usize {
        self.live.lock().expect("lock").len()
    }

    /// Fails unless `block` went out of the host with room for `size` bytes: checked
    /// before a test writes them, so a block too small fails here rather than corrupting
    /// the heap.
    fn assert_room(&self, block: *mut u8, size: usize) {
        let layout = self
            .live
            .lock()
            .expect("lock")
            .get(&(block as usize))
            .copied();
        let room = layout.map_or(0, |layout| layout.size());
        assert!(room >= size, "{block:?} holds {room} bytes, not {size}");
    }
}

unsafe impl GlobalAlloc for Strict {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.out(unsafe { System.alloc(layout) }, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.out(unsafe { System.alloc_zeroed(layout) }, layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.back(ptr, layout);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.back(ptr, layout);
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        let new_layout = Layout::from_size_align(new_size, layout.align()).expect("layout");
        self.out(moved, new_layout)
    }
}

fn cache() -> BlockCache<Strict> {
    BlockCache::new(Strict::default())
}

/// Gives the cached blocks back and checks the host has none out: every block went back
/// with the layout it was allocated with.
fn nothing_leaked(heap: &BlockCache<Strict>) {
    heap.drain();
    assert_eq!(heap.inner.live(), 0, "blocks still out");
}

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("test layout")
}

/// Fills `size` bytes at `ptr` with a pattern of `seed`.
fn fill(ptr: *mut u8, size: usize, seed: u8) {
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, size) };
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = seed.wrapping_add(i as u8);
    }
}

/// Whether `size` bytes at `ptr` hold the pattern of `seed`.
fn holds(ptr: *const u8, size: usize, seed: u8) -> bool {
    let bytes = unsafe { std::slice::from_raw_parts(ptr, size) };
    bytes
        .iter()
        .enumerate()
        .all(|(i, &byte)| byte == seed.wrapping_add(i as u8))
}

#[test]
fn sizes_and_alignments_cached_or_passed_on() {
    // (size, align, cached)
    let table = [
        (1, 1, false),
        (4076, 8, false),
        (4077, 8, true),
        (4096, 1, true),
        (4097, 16, true),
        (16_384, 8, true),
        (16_406, 1, true),
        (32_768, 8, true),
        (LARGEST, 16, true),
        (LARGEST + 1, 8, false),
        (100_000, 8, false),
        (16_384, 32, false),
        (4096, 4096, false),
    ];
    for (size, align, cached) in table {
        let heap = cache();
        let first = unsafe { heap.alloc(layout(size, align)) };
        assert!(!first.is_null(), "size {size}");
        assert_eq!(first as usize % align, 0, "size {size} align {align}");
        fill(first, size, 7);
        unsafe { heap.dealloc(first, layout(size, align)) };
        assert_eq!(
            heap.cached(),
            usize::from(cached),
            "size {size} align {align}"
        );
        assert_eq!(
            heap.inner.live(),
            usize::from(cached),
            "size {size}: kept, not freed"
        );
        let second = unsafe { heap.alloc(layout(size, align)) };
        if cached {
            assert_eq!(
                second, first,
                "size {size}: the freed block serves the next request"
            );
        }
        fill(second, size, 9);
        assert!(holds(second, size, 9));
        unsafe { heap.dealloc(second, layout(size, align)) };
        nothing_leaked(&heap);
    }
}

#[test]
fn a_block_serves_every_size_of_its_class_and_no_other() {
    for (class, &largest) in CLASS_SIZES.iter().enumerate() {
        let smallest = match class.checked_sub(1) {
            Some(below) => CLASS_SIZES[below] + 1,
            None => SMALLEST_CACHED,
        };
        // Allocated at the smallest size (a miss), reused at the largest.
        let heap = cache();
        let block = unsafe { heap.alloc(layout(smallest, 8)) };
        unsafe { heap.dealloc(block, layout(smallest, 8)) };
        let reused = unsafe { heap.alloc(layout(largest, 8)) };
        assert_eq!(reused, block, "class up to {largest}");
        heap.inner.assert_room(reused, largest);
        fill(reused, largest, 1);
        // The same for a zeroed block, allocated zeroed on a miss.
        let zeroed = unsafe { heap.alloc_zeroed(layout(smallest, 16)) };
        unsafe { heap.dealloc(zeroed, layout(smallest, 16)) };
        let again = unsafe { heap.alloc_zeroed(layout(largest, 16)) };
        assert_eq!(again, zeroed, "class up to {largest}, zeroed");
        heap.inner.assert_room(again, largest);
        assert!(holds(reused, largest, 1), "two live blocks never overlap");
        unsafe {
            heap.dealloc(reused, layout(largest, 8));
            heap.dealloc(again, layout(largest, 16));
        }
        // The next class up does not take it.
        if let Some(&next) = CLASS_SIZES.get(class + 1) {
            let other = unsafe { heap.alloc(layout(next, 8)) };
            assert_ne!(other, reused, "{next} is another class");
            unsafe { heap.dealloc(other, layout(next, 8)) };
        }
        nothing_leaked(&heap);
    }
}

#[test]
fn both_tls_record_buffers_share_a_class() {
    let heap = cache();
    let received = unsafe { heap.alloc(layout(16_384, 1)) };
    unsafe { heap.dealloc(received, layout(16_384, 1)) };
    let to_send = unsafe { heap.alloc(layout(16_406, 1)) };
    assert_eq!(to_send, received);
    unsafe { heap.dealloc(to_send, layout(16_406, 1)) };
    nothing_leaked(&heap);
}

#[test]
fn zeroed_blocks_are_zero_even_when_reused() {
    let heap = cache();
    let dirty = unsafe { heap.alloc(layout(9000, 8)) };
    fill(dirty, 9000, 0xAA);
    unsafe { heap.dealloc(dirty, layout(9000, 8)) };
    let zeroed = unsafe { heap.alloc_zeroed(layout(9340, 8)) };
    assert_eq!(zeroed, dirty, "reused");
    assert!(
        unsafe { std::slice::from_raw_parts(zeroed, 9340) }
            .iter()
            .all(|&b| b == 0)
    );
    unsafe { heap.dealloc(zeroed, layout(9340, 8)) };
    for size in [100, 30_000] {
        let fresh = unsafe { heap.alloc_zeroed(layout(size, 16)) };
        assert!(
            unsafe { std::slice::from_raw_parts(fresh, size) }
                .iter()
                .all(|&b| b == 0)
        );
        unsafe { heap.dealloc(fresh, layout(size, 16)) };
    }
    nothing_leaked(&heap);
}

#[test]
fn reallocation_keeps_the_contents_within_and_across_classes() {
    // (from, to, same block expected)
    let table = [
        (4096, 4000, false),      // to a size not cached
        (8200, 9340, true),       // within the class up to 9340
        (9340, 8200, true),       // shrinking within it
        (4096, 18_437, false),    // to another class (the deframer's growth)
        (18_437, 4096, false),    // and back (its shrink)
        (100, 16_384, false),     // from a small block into a class
        (16_384, 100_000, false), // out of the classes
        (100_000, 20_000, false), // back into one
        (100_000, 200_000, false),
        (10, 20, false),
    ];
    for (from, to, same) in table {
        let heap = cache();
        let old = unsafe { heap.alloc(layout(from, 8)) };
        fill(old, from, 3);
        let new = unsafe { heap.realloc(old, layout(from, 8), to) };
        assert!(!new.is_null(), "{from} -> {to}");
        if same {
            assert_eq!(new, old, "{from} -> {to}: within a class the block stays");
        }
        assert!(holds(new, from.min(to), 3), "{from} -> {to}: contents kept");
        // The block takes the largest size of its class, as a block from the cache would.
        let room = BlockCache::<Strict>::class_of(layout(to, 8)).map_or(to, |c| c.layout.size());
        let grown = unsafe { heap.realloc(new, layout(to, 8), room) };
        heap.inner.assert_room(grown, room);
        fill(grown, room, 4);
        unsafe { heap.dealloc(grown, layout(room, 8)) };
        nothing_leaked(&heap);
    }
}

#[test]
fn each_class_keeps_at_most_its_slots_and_frees_the_rest() {
    let heap = cache();
    let blocks: Vec<*mut u8> = (0..SLOTS + 3)
        .map(|_| unsafe { heap.alloc(layout(20_000, 8)) })
        .collect();
    for &block in &blocks {
        unsafe { heap.dealloc(block, layout(20_000, 8)) };
    }
    assert_eq!(heap.cached(), SLOTS);
    assert_eq!(heap.inner.live(), SLOTS);
    // Taking them all back asks the inner allocator for nothing.
    let calls = heap.inner.calls.load(Ordering::Relaxed);
    let again: Vec<*mut u8> = (0..SLOTS)
        .map(|_| unsafe { heap.alloc(layout(20_000, 8)) })
        .collect();
    assert_eq!(heap.inner.calls.load(Ordering::Relaxed), calls);
    assert_eq!(heap.cached(), 0);
    for block in again {
        unsafe { heap.dealloc(block, layout(20_000, 8)) };
    }
    nothing_leaked(&heap);
}

#[test]
fn threads_freeing_and_taking_at_once_never_share_a_block() {
    const ROUNDS: usize = 2000;
    let heap = cache();
    std::thread::scope(|scope| {
        for seed in 0..4u8 {
            let heap = &heap;
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let size = 4096 + (round % 3) * 6000;
                    let block = unsafe { heap.alloc(layout(size, 8)) };
                    fill(block, size, seed);
                    std::thread::yield_now();
                    assert!(
                        holds(block, size, seed),
                        "another thread wrote into our block"
                    );
                    unsafe { heap.dealloc(block, layout(size, 8)) };
                }
            });
        }
    });
    assert!(heap.cached() <= 3 * SLOTS);
    assert_eq!(heap.inner.live(), heap.cached());
    nothing_leaked(&heap);
}

/// A block freed twice ends the process instead of being handed to two owners: run as a
/// child of the test binary, which must die of SIGABRT.
#[test]
fn a_block_freed_twice_aborts() {
    const CHILD: &str = "AMLX_BLOCK_CACHE_DOUBLE_FREE";
    if std::env::var_os(CHILD).is_some() {
        let heap = cache();
        let block = unsafe { heap.alloc(layout(16_384, 8)) };
        unsafe {
            heap.dealloc(block, layout(16_384, 8));
            heap.dealloc(block, layout(16_384, 8));
        }
        // Not reached: reaching it is the failure the parent sees (exit code 0).
        std::process::exit(0);
    }
    let exe = std::env::current_exe().expect("test binary");
    let status = std::process::Command::new(exe)
        .args([
            "--exact",
            "block_cache::tests::a_block_freed_twice_aborts",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run the test binary");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
}
