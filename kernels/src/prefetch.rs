//! Software prefetch: asking the CPU to start loading memory a kernel will read soon.
//!
//! Why the kernels need it: the paged KV cache and the packed weights are read in pieces of a
//! few kilobytes scattered over memory (cache blocks) or in short rows, and hardware prefetchers
//! restart at every 4 KiB page, so a streaming kernel waits on memory at the start of each piece.
//!
//! Must not know: what the memory holds.

/// A prefetch hint for every 64-byte line of `data`. A hint never faults and changes no result;
/// a no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch_lines<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let base = data.as_ptr().cast::<i8>();
        for byte in (0..std::mem::size_of_val(data)).step_by(64) {
            // SAFETY: `byte` is inside `data`; prefetch is a hint and never faults anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(byte)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// [`prefetch_lines`] of `data[range]`, the range clipped to `data` (callers ask for rows
/// ahead that may run past the end).
#[inline(always)]
pub(crate) fn prefetch_range<T>(data: &[T], range: std::ops::Range<usize>) {
    let end = range.end.min(data.len());
    prefetch_lines(&data[range.start.min(end)..end]);
}
