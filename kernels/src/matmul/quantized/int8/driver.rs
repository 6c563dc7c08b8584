//! The part of the int8 kernels that is the same on every vector width: walking the x rows in
//! groups of up to [`GROUP`], the register tile shape per group size, and the weight-row loop.
//!
//! Owns: one macro that expands `rows_dot::<F, L>` inside a kernel module, compiled with that
//! module's target features and calling that module's `tile`. (A generic function cannot carry
//! the caller's `#[target_feature]`, and without it the tile would not inline.) The tile shapes
//! (weight rows × x rows, for groups of 1, 2, 3 and 4 x rows) are the module's: they follow
//! its register count.
//!
//! Must not know: any vector instruction or quantization format.

/// Expands `pub unsafe fn rows_dot::<F, L>(w, row0, x, m, out)` with the given features and tile
/// shapes; the invoking module defines `unsafe fn tile::<F, L, NR, MR>(w, row, x, r0) -> [[f32; MR]; NR]`.
macro_rules! kernel_driver {
    ($features:literal, $(($g:pat, $nr:literal, $mr:literal)),+) => {
        /// Same contract as [`super::scalar::rows_dot`]; x quantized for this kernel
        /// ([`super::Kernel`]'s offset) with `L` levels.
        ///
        /// # Safety
        /// `available()` must hold; `x` must have been quantized for this kernel and `w`'s format.
        pub unsafe fn rows_dot<const F: u8, const L: usize>(
            w: &super::Packed,
            row0: usize,
            x: &super::quant::Rows,
            m: usize,
            out: &mut [f32],
        ) {
            debug_assert_eq!(x.levels, L);
            let mut r0 = 0;
            while r0 < m {
                let g = (m - r0).min(super::GROUP);
                match g {
                    $($g => tiles::<F, L, $nr, $mr>(w, row0, x, r0, out, m),)+
                }
                r0 += g;
            }
        }

        /// Every weight row of the task against the `MR` x rows from `r0`, `NR` rows at a time.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tiles<const F: u8, const L: usize, const NR: usize, const MR: usize>(
            w: &super::Packed,
            row0: usize,
            x: &super::quant::Rows,
            r0: usize,
            out: &mut [f32],
            m: usize,
        ) {
            let nrows = out.len() / m;
            let mut j = 0;
            while j < nrows {
                super::prefetch_rows(w, row0 + j + super::PREFETCH_AHEAD, NR);
                if j + NR <= nrows {
                    super::store(&tile::<F, L, NR, MR>(w, row0 + j, x, r0), out, nrows, r0, j);
                    j += NR;
                } else {
                    super::store(&tile::<F, L, 1, MR>(w, row0 + j, x, r0), out, nrows, r0, j);
                    j += 1;
                }
            }
        }
    };
}
pub(super) use kernel_driver;
