//! What one cache row (the key or the value of one token in one KV head) holds: the KV cache
//! dtypes, their storage tensors and their sizes.
//!
//! Float dtypes (f32, f16, bf16) store `head_dim` elements. The quantized ones (int8, fp8 e4m3)
//! store `head_dim` one-byte codes followed by the row's f32 scale (little-endian), so a row is
//! `head_dim + 4` bytes and **a token's codes and its scale are one row of one tensor**: every op
//! that moves, copies, swaps or offloads rows or blocks carries the scale without knowing it
//! exists. int8 rows live in a U8 tensor, fp8 rows in an F8E4M3 tensor (candle's dtype names the
//! format, so a cache tensor describes itself).
//!
//! Owns: the dtype names users type, the storage dtype and row length of each, and bytes per
//! token. Must not know: how codes are computed (that is [`super::quant`]) or which ops read them.

use std::fmt;
use std::str::FromStr;

use candle_core::{bail, DType, Result};

/// Bytes of the per-row scale that follows a quantized row's codes.
pub const SCALE_BYTES: usize = 4;

/// The element format of a KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
    /// Symmetric int8, one f32 scale per (token, KV head) for K and for V: `s = max|x| / 127`.
    Int8,
    /// fp8 e4m3 codes, one f32 scale per (token, KV head): `s = max|x| / 448`.
    Fp8,
}

impl KvDtype {
    pub const ALL: [KvDtype; 5] = [KvDtype::F32, KvDtype::F16, KvDtype::Bf16, KvDtype::Int8, KvDtype::Fp8];

    /// The name users type (`--kv-cache-dtype`) and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
            Self::Fp8 => "fp8",
        }
    }

    /// The candle dtype of the key/value tensors.
    pub fn storage_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
            Self::Int8 => DType::U8,
            Self::Fp8 => DType::F8E4M3,
        }
    }

    /// The format a key/value tensor of this candle dtype holds.
    pub fn from_storage(dtype: DType) -> Result<Self> {
        Ok(match dtype {
            DType::F32 => Self::F32,
            DType::F16 => Self::F16,
            DType::BF16 => Self::Bf16,
            DType::U8 => Self::Int8,
            DType::F8E4M3 => Self::Fp8,
            other => bail!("KV cache dtype must be f32, f16, bf16, int8 (u8 storage) or fp8 (f8e4m3), got {other:?}"),
        })
    }

    /// The float dtype a model computes in, as a cache dtype (what `auto` means).
    pub fn from_float(dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 | DType::F16 | DType::BF16 => Self::from_storage(dtype),
            other => bail!("a model computing in {other:?} has no matching KV cache dtype"),
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, Self::Int8 | Self::Fp8)
    }

    /// Elements of one row in the storage tensor (its last dim).
    pub fn row_len(self, head_dim: usize) -> usize {
        if self.is_quantized() {
            head_dim + SCALE_BYTES
        } else {
            head_dim
        }
    }

    /// `head_dim` of a storage tensor whose last dim is `row_len`.
    pub fn head_dim(self, row_len: usize) -> Result<usize> {
        if !self.is_quantized() {
            return Ok(row_len);
        }
        match row_len.checked_sub(SCALE_BYTES) {
            Some(d) if d > 0 => Ok(d),
            _ => bail!("a {} cache row of {row_len} bytes cannot hold codes and a {SCALE_BYTES}-byte scale", self.name()),
        }
    }

    /// Bytes one row (K or V of one token in one KV head) takes, scale included.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        self.row_len(head_dim) * self.storage_dtype().size_in_bytes()
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "int8" | "i8" => Ok(Self::Int8),
            "fp8" | "fp8_e4m3" | "e4m3" => Ok(Self::Fp8),
            _ => Err(format!("unknown KV cache dtype {s:?} (expected one of auto, f32, f16, bf16, int8, fp8)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_say_what_is_accepted() {
        for d in KvDtype::ALL {
            assert_eq!(d.name().parse::<KvDtype>().unwrap(), d);
            assert_eq!(KvDtype::from_storage(d.storage_dtype()).unwrap(), d);
        }
        let e = "int4".parse::<KvDtype>().unwrap_err();
        assert!(e.contains("int4") && e.contains("int8") && !e.contains('\n'), "{e}");
        assert!(KvDtype::from_storage(DType::U32).is_err());
        assert!(KvDtype::from_float(DType::U8).is_err());
    }

    #[test]
    fn quantized_rows_carry_their_scale_in_the_row() {
        assert_eq!(KvDtype::F32.row_bytes(64), 256);
        assert_eq!(KvDtype::Bf16.row_bytes(64), 128);
        assert_eq!(KvDtype::Int8.row_len(64), 68);
        assert_eq!(KvDtype::Fp8.row_bytes(128), 132);
        assert_eq!(KvDtype::Int8.head_dim(68).unwrap(), 64);
        assert_eq!(KvDtype::F16.head_dim(68).unwrap(), 68);
        assert!(KvDtype::Int8.head_dim(4).is_err());
    }
}
