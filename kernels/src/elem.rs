//! Typed access to candle CPU storage for the CPU ops: borrowing the contiguous slice a `Layout`
//! describes, and converting the float dtypes the ops accept (f32, f16, bf16) to and from f32.
//!
//! Owns: the one place that matches `CpuStorage` variants and checks contiguity, so every op
//! reports a wrong dtype or a strided input with the same clear message.
//! Must not know: any op's shapes or semantics.

use candle_core::{bail, CpuStorage, DType, Layout, Result};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// An element type that can be borrowed out of `CpuStorage`.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
    fn into_storage(data: Vec<Self>) -> CpuStorage;
}

/// A float element the kernels compute with; all arithmetic happens in f32.
pub(crate) trait KernelFloat: Elem + Default {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    /// Bulk conversion; the half types use `half`'s vectorised routines.
    fn convert_to_f32(src: &[Self], dst: &mut [f32]);
    fn convert_from_f32(src: &[f32], dst: &mut [Self]);
    /// `src` as f32: borrowed as-is for f32 (no copy on the hot path), else converted into
    /// `scratch`.
    fn as_f32<'a>(src: &'a [Self], scratch: &'a mut Vec<f32>) -> &'a [f32];
    /// `src` as it is stored, for vector loops that widen while they load.
    fn as_stored(src: &[Self]) -> StoredFloats<'_>;
}

/// A slice of float elements in their stored type (the three KV float dtypes).
#[derive(Clone, Copy)]
pub(crate) enum StoredFloats<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl StoredFloats<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            StoredFloats::F32(s) => s.len(),
            StoredFloats::F16(s) => s.len(),
            StoredFloats::Bf16(s) => s.len(),
        }
    }

    /// The first element's address, for vector loads that know the element type.
    pub(crate) fn bytes(&self) -> *const u8 {
        match self {
            StoredFloats::F32(s) => s.as_ptr().cast(),
            StoredFloats::F16(s) => s.as_ptr().cast(),
            StoredFloats::Bf16(s) => s.as_ptr().cast(),
        }
    }
}

macro_rules! elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            const DTYPE: DType = DType::$variant;
            fn slice(storage: &CpuStorage) -> Option<&[Self]> {
                match storage {
                    CpuStorage::$variant(data) => Some(data),
                    _ => None,
                }
            }
            fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
                match storage {
                    CpuStorage::$variant(data) => Some(data),
                    _ => None,
                }
            }
            fn into_storage(data: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(data)
            }
        }
    };
}

elem!(f32, F32);
elem!(f16, F16);
elem!(bf16, BF16);
elem!(u8, U8);
elem!(float8::F8E4M3, F8E4M3);
elem!(u32, U32);
elem!(i32, I32);
elem!(i64, I64);

impl KernelFloat for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    fn convert_to_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn convert_from_f32(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn as_f32<'a>(src: &'a [Self], _scratch: &'a mut Vec<f32>) -> &'a [f32] {
        src
    }
    #[inline(always)]
    fn as_stored(src: &[Self]) -> StoredFloats<'_> {
        StoredFloats::F32(src)
    }
}

macro_rules! half_float {
    ($t:ty, $variant:ident) => {
        impl KernelFloat for $t {
            #[inline(always)]
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            fn convert_to_f32(src: &[Self], dst: &mut [f32]) {
                src.convert_to_f32_slice(dst);
            }
            fn convert_from_f32(src: &[f32], dst: &mut [Self]) {
                dst.convert_from_f32_slice(src);
            }
            fn as_f32<'a>(src: &'a [Self], scratch: &'a mut Vec<f32>) -> &'a [f32] {
                scratch.resize(src.len(), 0.0);
                src.convert_to_f32_slice(scratch);
                scratch
            }
            #[inline(always)]
            fn as_stored(src: &[Self]) -> StoredFloats<'_> {
                StoredFloats::$variant(src)
            }
        }
    };
}

half_float!(f16, F16);
half_float!(bf16, Bf16);

/// The storage's dtype, for error messages.
pub(crate) fn dtype_of(storage: &CpuStorage) -> DType {
    candle_core::backend::BackendStorage::dtype(storage)
}

/// Borrows the elements `layout` covers, which must be contiguous (any start offset is fine).
pub(crate) fn contiguous<'a, T: Elem>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op}: {what} must be contiguous (got strides {:?})", layout.stride())
    };
    let Some(data) = T::slice(storage) else {
        bail!("{op}: {what} must be {:?}, got {:?}", T::DTYPE, dtype_of(storage))
    };
    match data.get(start..end) {
        Some(slice) => Ok(slice),
        None => bail!("{op}: {what} layout {start}..{end} exceeds its storage ({})", data.len()),
    }
}

/// Mutable twin of [`contiguous`], for the in-place ops.
pub(crate) fn contiguous_mut<'a, T: Elem>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a mut [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op}: {what} must be contiguous (got strides {:?})", layout.stride())
    };
    let dtype = dtype_of(storage);
    let Some(data) = T::slice_mut(storage) else {
        bail!("{op}: {what} must be {:?}, got {dtype:?}", T::DTYPE)
    };
    let len = data.len();
    match data.get_mut(start..end) {
        Some(slice) => Ok(slice),
        None => bail!("{op}: {what} layout {start}..{end} exceeds its storage ({len})"),
    }
}

/// The bytes of a quantized cache tensor: int8 rows in U8 storage or fp8 rows in F8E4M3 storage
/// (see `paged::kv_dtype`), contiguous.
pub(crate) fn cache_bytes<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str, what: &str) -> Result<&'a [u8]> {
    match storage {
        CpuStorage::F8E4M3(_) => {
            let codes = contiguous::<float8::F8E4M3>(storage, layout, op, what)?;
            // SAFETY: F8E4M3 is `#[repr(transparent)]` over u8, so the slice is the same bytes.
            Ok(unsafe { std::slice::from_raw_parts(codes.as_ptr().cast::<u8>(), codes.len()) })
        }
        _ => contiguous::<u8>(storage, layout, op, what),
    }
}

/// Mutable twin of [`cache_bytes`].
pub(crate) fn cache_bytes_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str, what: &str) -> Result<&'a mut [u8]> {
    match storage {
        CpuStorage::F8E4M3(_) => {
            let codes = contiguous_mut::<float8::F8E4M3>(storage, layout, op, what)?;
            // SAFETY: F8E4M3 is `#[repr(transparent)]` over u8, so the slice is the same bytes.
            Ok(unsafe { std::slice::from_raw_parts_mut(codes.as_mut_ptr().cast::<u8>(), codes.len()) })
        }
        _ => contiguous_mut::<u8>(storage, layout, op, what),
    }
}

/// Whether a cache tensor holds quantized rows (codes + scale bytes) rather than floats.
pub(crate) fn is_quantized_storage(storage: &CpuStorage) -> bool {
    matches!(storage, CpuStorage::U8(_) | CpuStorage::F8E4M3(_))
}

/// Runs `$body` with `$t` bound to the Rust type of a float storage (f32, f16 or bf16), or
/// returns an "unsupported dtype" error naming the op.
macro_rules! with_float_type {
    ($storage:expr, $op:expr, $t:ident => $body:expr) => {
        match $storage {
            candle_core::CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            candle_core::CpuStorage::F16(_) => {
                type $t = half::f16;
                $body
            }
            candle_core::CpuStorage::BF16(_) => {
                type $t = half::bf16;
                $body
            }
            other => candle_core::bail!(
                "{}: unsupported dtype {:?} (expected f32, f16 or bf16)",
                $op,
                $crate::elem::dtype_of(other)
            ),
        }
    };
}
pub(crate) use with_float_type;

/// Copies a float slice of any supported dtype into a fresh f32 vector.
pub(crate) fn to_f32_vec(storage: &CpuStorage, layout: &Layout, op: &str, what: &str) -> Result<Vec<f32>> {
    with_float_type!(storage, op, T => {
        let src = contiguous::<T>(storage, layout, op, what)?;
        let mut out = vec![0f32; src.len()];
        T::convert_to_f32(src, &mut out);
        Ok(out)
    })
}
