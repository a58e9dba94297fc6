use std::alloc::System;
use std::sync::atomic::AtomicUsize;

use super::*;

/// The host's allocator, counting the blocks it has out and every call made to it.
#[derive(Debug, Default)]
struct Counted {
    live: AtomicUsize,
    calls: AtomicUsize,
}

unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.live.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.live.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn cache() -> BlockCache<Counted> {
    BlockCache::new(Counted::default())
}

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("test layout")
}

/// Fills `size` bytes at `ptr` with a pattern of `seed`.
fn fill(ptr: *mut u8, size: usize, seed: u8) {
    for i in 0..size {
        unsafe { ptr.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

/// Whether `size` bytes at `ptr` hold the pattern of `seed`.
fn holds(ptr: *const u8, size: usize, seed: u8) -> bool {
    (0..size).all(|i| unsafe { ptr.add(i).read() } == seed.wrapping_add(i as u8))
}

#[test]
fn sizes_and_alignments_cached_or_passed_on() {
    // (size, align, cached)
    let table = [
        (1, 1, false),
        (4095, 8, false),
        (4096, 1, true),
        (4097, 16, true),
        (16_384, 8, true),
        (16_406, 1, true),
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
        let live = heap.inner.live.load(Ordering::Relaxed);
        assert_eq!(live, usize::from(cached), "size {size}: kept, not freed");
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
    }
}

#[test]
fn any_size_of_a_class_reuses_a_block_of_that_class_and_no_other() {
    let heap = cache();
    let a = unsafe { heap.alloc(layout(16_384, 8)) };
    unsafe { heap.dealloc(a, layout(16_384, 8)) };
    // 16,384 bytes is the 16 KiB class; 16,406 (a TLS record to send) the 20 KiB one.
    let other_class = unsafe { heap.alloc(layout(16_406, 8)) };
    assert_ne!(other_class, a, "20 KiB class: not the 16 KiB block");
    fill(other_class, 16_406, 1);
    let same_class = unsafe { heap.alloc(layout(12_289, 1)) };
    assert_eq!(
        same_class, a,
        "12,289 to 16,384 bytes share the 16 KiB class"
    );
    fill(same_class, 12_289, 2);
    assert!(
        holds(other_class, 16_406, 1),
        "two live blocks never overlap"
    );
    unsafe {
        heap.dealloc(other_class, layout(16_406, 8));
        heap.dealloc(same_class, layout(12_289, 1));
    }
    assert_eq!(heap.cached(), 2);
}

#[test]
fn zeroed_blocks_are_zero_even_when_reused() {
    let heap = cache();
    let dirty = unsafe { heap.alloc(layout(8192, 8)) };
    fill(dirty, 8192, 0xAA);
    unsafe { heap.dealloc(dirty, layout(8192, 8)) };
    let zeroed = unsafe { heap.alloc_zeroed(layout(8000, 8)) };
    assert_eq!(zeroed, dirty, "reused");
    assert!((0..8000).all(|i| unsafe { zeroed.add(i).read() } == 0));
    unsafe { heap.dealloc(zeroed, layout(8000, 8)) };
    let fresh = unsafe { heap.alloc_zeroed(layout(30_000, 16)) };
    assert!((0..30_000).all(|i| unsafe { fresh.add(i).read() } == 0));
    unsafe { heap.dealloc(fresh, layout(30_000, 16)) };
    let small = unsafe { heap.alloc_zeroed(layout(100, 8)) };
    assert!((0..100).all(|i| unsafe { small.add(i).read() } == 0));
    unsafe { heap.dealloc(small, layout(100, 8)) };
}

#[test]
fn reallocation_keeps_the_contents_within_and_across_classes() {
    // (from, to, same block expected)
    let table = [
        (4096, 4000, false),      // to a size not cached
        (5000, 8192, true),       // within the 8 KiB class
        (8192, 5000, true),       // shrinking within it
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
        fill(new, to, 4);
        unsafe { heap.dealloc(new, layout(to, 8)) };
        let live = heap.inner.live.load(Ordering::Relaxed);
        assert_eq!(live, heap.cached(), "{from} -> {to}: nothing leaked");
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
    assert_eq!(heap.inner.live.load(Ordering::Relaxed), SLOTS);
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
                    let bytes = unsafe { std::slice::from_raw_parts_mut(block, size) };
                    bytes.fill(seed);
                    std::thread::yield_now();
                    assert!(
                        bytes.iter().all(|&b| b == seed),
                        "another thread wrote into our block"
                    );
                    unsafe { heap.dealloc(block, layout(size, 8)) };
                }
            });
        }
    });
    assert_eq!(heap.inner.live.load(Ordering::Relaxed), heap.cached());
    assert!(heap.cached() <= 3 * SLOTS);
}
