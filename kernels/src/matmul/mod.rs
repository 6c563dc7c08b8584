//! Batch-invariant matrix multiplication `y = x Wᵀ` for f32 activations.
//!
//! Owns: the one canonical way an output element is accumulated — [`dot`]: eight FMA lanes
//! over K in order, a fixed reduction tree, then the K % 8 tail in order — and kernels that
//! compute every element exactly that way however the rows are batched or tiled. BLAS-style
//! GEMMs change the accumulation order with the matrix shape, so the same token gets different
//! bits alone, in a batch, in a prefill chunk or after a prefix-cache hit; here it cannot.
//! (The quantized kernels either dequantize weights and feed the same canonical dot, or, for
//! Q4_0/Q4_1/Q8_0, factor the block scale out: batch-invariant, equal to it up to f32 rounding.)
//!
//! Must not know: models or which layer is being computed.

mod dense;
mod quantized;

pub use dense::{matmul_bt, matmul_bt_slices};
pub use quantized::{dequantize, MatmulPrecision, QuantizedMatrix};

/// The canonical dot product every matmul kernel reproduces bit for bit.
#[inline]
pub fn dot(x: &[f32], w: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), w.len());
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { dense::x86::dot_avx2(x, w) };
        }
    }
    dot_portable(x, w)
}

/// Lane-wise FMA accumulation with the same association as the SIMD kernels: `f32::mul_add`
/// is a correctly rounded fused multiply-add, exactly what `vfmadd` computes.
pub fn dot_portable(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let main = x.len() / 8 * 8;
    for k in (0..main).step_by(8) {
        for l in 0..8 {
            acc[l] = x[k + l].mul_add(w[k + l], acc[l]);
        }
    }
    let mut s = reduce8(acc);
    for k in main..x.len() {
        s = x[k].mul_add(w[k], s);
    }
    s
}

/// The fixed reduction tree of eight lanes: (0+4, 1+5, 2+6, 3+7), then pairs, then the last.
#[inline]
pub fn reduce8(a: [f32; 8]) -> f32 {
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let c = [b[0] + b[2], b[1] + b[3]];
    c[0] + c[1]
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}
