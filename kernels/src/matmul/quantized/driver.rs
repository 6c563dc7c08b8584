//! The part of the fused kernels that is the same on every vector width: walking the x rows in
//! groups of [`GROUP`], picking the register tile shape for the group size, and storing tiles.
//!
//! Owns: one macro that expands this walk inside a kernel module, compiled with that module's
//! target features and calling that module's `tile`. (A generic function cannot carry the
//! caller's `#[target_feature]`, and without it the tile would not inline.)
//!
//! Must not know: any vector instruction or quantization format.

/// x rows multiplied by one unpacked block; larger batches run group after group.
pub const GROUP: usize = 8;

/// Stores an `NR × MR` tile (weight rows × x rows) at weight row `j` of x rows `r0..`.
#[inline]
pub fn store<const NR: usize, const MR: usize>(t: &[[f32; MR]; NR], out: &mut [f32], nrows: usize, r0: usize, j: usize) {
    for (a, row) in t.iter().enumerate() {
        for (r, v) in row.iter().enumerate() {
            out[(r0 + r) * nrows + j + a] = *v;
        }
    }
}

/// Expands `by_group::<F>(qs, scales, x, sums, m, k, out)` and its tile loop in the invoking
/// module, which must define `unsafe fn tile::<F, NR, MR>(qs, qrb, scales, srb, x, sums, k)
/// -> [[f32; MR]; NR]`. A single x row takes four weight rows at once: four independent
/// accumulator chains hide the FMA latency.
macro_rules! group_driver {
    ($features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn by_group<const F: u8>(
            qs: &[u8],
            scales: &[f32],
            x: &[f32],
            sums: &[f32],
            m: usize,
            k: usize,
            out: &mut [f32],
        ) {
            use super::driver::GROUP;
            let nb = k / 32;
            let mut r0 = 0;
            while r0 < m {
                let g = (m - r0).min(GROUP);
                let xg = &x[r0 * k..(r0 + g) * k];
                let sg = if F == Q4_1 { &sums[r0 / GROUP * nb * GROUP..(r0 / GROUP + 1) * nb * GROUP] } else { &[][..] };
                match g {
                    1 => tiles::<F, 4, 1>(qs, scales, xg, sg, k, out, r0),
                    2 => tiles::<F, 2, 2>(qs, scales, xg, sg, k, out, r0),
                    3 => tiles::<F, 2, 3>(qs, scales, xg, sg, k, out, r0),
                    4 => tiles::<F, 1, 4>(qs, scales, xg, sg, k, out, r0),
                    5 => tiles::<F, 1, 5>(qs, scales, xg, sg, k, out, r0),
                    6 => tiles::<F, 1, 6>(qs, scales, xg, sg, k, out, r0),
                    7 => tiles::<F, 1, 7>(qs, scales, xg, sg, k, out, r0),
                    _ => tiles::<F, 1, 8>(qs, scales, xg, sg, k, out, r0),
                }
                r0 += g;
            }
        }

        /// All weight rows against the `MR` x rows of one group (starting at x row `r0`).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tiles<const F: u8, const NR: usize, const MR: usize>(
            qs: &[u8],
            scales: &[f32],
            x: &[f32],
            sums: &[f32],
            k: usize,
            out: &mut [f32],
            r0: usize,
        ) {
            use super::driver::store;
            let (qrb, srb) = (k / 32 * qs_bytes(F), k / 32 * scales_per_block(F));
            let nrows = qs.len() / qrb;
            debug_assert!(scales.len() == nrows * srb);
            let mut j = 0;
            while j < nrows {
                let (q, s) = (qs.as_ptr().add(j * qrb), scales.as_ptr().add(j * srb));
                if j + NR <= nrows {
                    store(&tile::<F, NR, MR>(q, qrb, s, srb, x.as_ptr(), sums.as_ptr(), k), out, nrows, r0, j);
                    j += NR;
                } else {
                    store(&tile::<F, 1, MR>(q, qrb, s, srb, x.as_ptr(), sums.as_ptr(), k), out, nrows, r0, j);
                    j += 1;
                }
            }
        }
    };
}
pub(super) use group_driver;
