//! A global allocator for the fuzz binaries that aborts (a crash libFuzzer records) on any single
//! allocation above [`LIMIT`]: the "no allocation beyond the negotiated frame size". The
//! largest frame any target accepts is 16 576 bytes (frame_decoder's top limit); buffers holding one
//! frame plus one input chunk may double once while growing, so 64 KiB is the bound.

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation allowed.
pub const LIMIT: usize = 64 * 1024;

pub struct Bounded;

fn check(size: usize) {
    if size > LIMIT {
        // No allocation (and no panic machinery) from inside the allocator: write and abort.
        let msg = b"bounded_alloc: allocation above 64 KiB\n";
        // SAFETY: writing a static buffer to stderr.
        unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
        std::process::abort();
    }
}

unsafe extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, count: usize) -> isize;
}

// SAFETY: forwards to the system allocator after a size check.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
