//! The memory-bandwidth reference that kernel benches compare against: a parallel sum (pure
//! reads, like decode attention) and a parallel copy over buffers far larger than the last-level
//! cache, on the same rayon pool the kernels use.
//!
//! Must not know: kernels or shapes. It only streams bytes.

use rayon::prelude::*;

/// Bytes each bandwidth buffer holds: ten times this machine's 105 MiB L3, so every pass
/// comes from DRAM, yet small enough to leave room for parallel builds.
pub const BUFFER_BYTES: usize = 1 << 30;

/// Elements each rayon task streams: large enough that task overhead vanishes next to the
/// transfer (1 MiB), small enough that both cores stay busy to the end.
const TASK_ELEMS: usize = 1 << 18;

/// Lanes of independent accumulators: LLVM vectorises them without reassociation flags, so the
/// loop issues loads as fast as the core can, and memory is the only limit.
const LANES: usize = 16;

/// A buffer of `bytes / 4` f32 values holding a cheap non-constant pattern, so the pages are
/// really touched (a zeroed allocation might be mapped lazily to one shared page).
pub fn filled_buffer(bytes: usize) -> Vec<f32> {
    let n = bytes / std::mem::size_of::<f32>();
    let mut v = vec![0f32; n];
    v.par_chunks_mut(TASK_ELEMS).enumerate().for_each(|(c, chunk)| {
        for (i, x) in chunk.iter_mut().enumerate() {
            *x = ((c * TASK_ELEMS + i) % 251) as f32;
        }
    });
    v
}

/// Sum of every element, read once, on the rayon pool.
pub fn parallel_sum(data: &[f32]) -> f32 {
    data.par_chunks(TASK_ELEMS).map(sum_lanes).sum()
}

fn sum_lanes(chunk: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let exact = chunk.chunks_exact(LANES);
    let tail: f32 = exact.remainder().iter().sum();
    for block in exact {
        for (a, &x) in acc.iter_mut().zip(block) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Copies `src` into `dst` (same length) on the rayon pool. Moves `2 × len × 4` bytes by the
/// STREAM convention (read + write; the write-allocate read is not counted).
/// Returns false, copying nothing, when the lengths differ.
pub fn parallel_copy(dst: &mut [f32], src: &[f32]) -> bool {
    if dst.len() != src.len() {
        return false;
    }
    dst.par_chunks_mut(TASK_ELEMS)
        .zip(src.par_chunks(TASK_ELEMS))
        .for_each(|(d, s)| d.copy_from_slice(s));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_sum_equals_the_serial_sum_across_task_boundaries() {
        // Small integers sum exactly in f32, so any dropped or doubled chunk shows.
        let n = 3 * TASK_ELEMS + 37;
        let data: Vec<f32> = (0..n).map(|i| (i % 3) as f32).collect();
        let serial: f64 = data.iter().map(|&x| x as f64).sum();
        assert_eq!(parallel_sum(&data) as f64, serial);
    }

    #[test]
    fn parallel_copy_copies_every_element_and_rejects_length_mismatch() {
        let src = filled_buffer(4 * (2 * TASK_ELEMS + 5));
        let mut dst = vec![0f32; src.len()];
        assert!(parallel_copy(&mut dst, &src));
        assert_eq!(dst, src);
        let mut short = vec![0f32; 3];
        assert!(!parallel_copy(&mut short, &src));
        assert_eq!(short, vec![0.0; 3]);
    }

    #[test]
    fn filled_buffer_has_the_requested_size_and_is_not_constant() {
        let b = filled_buffer(4096);
        assert_eq!(b.len(), 1024);
        assert_eq!(&b[..3], &[0.0, 1.0, 2.0]);
        assert_eq!(b[251], 0.0);
    }
}
