//! How big the KV cache is: blocks from a byte budget (or given directly), and whether the
//! requested maximum model length fits in it.
//!
//! Owns: the arithmetic and the startup errors that explain it ("max model length 8192 needs
//! 512 blocks, the cache has 300: at most 4800 tokens fit; raise --kv-cache-memory to at least
//! …"). Must not know: tensors, models or requests.

use std::fmt;

/// What the cache must hold per block, for sizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockFootprint {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// Bytes of one K or V row (one token in one KV head of one layer): `head_dim` elements of
    /// the KV cache dtype, plus the row's scale for int8/fp8.
    pub kv_row_bytes: usize,
    /// Bytes of per-slot policy metadata per (layer, kv head, slot): position (i32) + score (f32).
    pub slot_meta_bytes: usize,
}

impl BlockFootprint {
    pub fn bytes_per_block(&self) -> u64 {
        self.bytes_per_token() * self.block_size as u64
    }

    /// Bytes one cached token costs across all layers and KV heads: K and V rows (scales
    /// included) and the per-slot policy metadata.
    pub fn bytes_per_token(&self) -> u64 {
        let per_slot = 2 * self.kv_row_bytes + self.slot_meta_bytes;
        (self.num_layers * self.num_kv_heads * per_slot) as u64
    }
}

/// The user's sizing request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheBudget {
    Bytes(u64),
    Blocks(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSize {
    pub num_blocks: usize,
    pub block_size: usize,
    /// Longest request that keeps its whole KV (`kv_policy` full): it must fit the cache.
    pub max_model_len: usize,
    /// Longest request with a KV budget: the model's context (or an explicit --max-model-len),
    /// whatever the cache size, since such a request never holds more than its budget.
    pub max_context_len: usize,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizingError {
    BlockSizeInvalid(usize),
    TooSmallForOneBlock { budget_bytes: u64, bytes_per_block: u64 },
    MaxModelLenDoesNotFit { max_model_len: usize, needs_blocks: usize, have_blocks: usize, block_size: usize, bytes_per_block: u64 },
    MaxModelLenAboveModel { max_model_len: usize, model_limit: usize },
    ZeroBlocks,
}

impl fmt::Display for SizingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizingError::BlockSizeInvalid(b) => write!(f, "--block-size must be one of 8, 16, 32 (got {b})"),
            SizingError::ZeroBlocks => write!(f, "--num-blocks must be at least 1"),
            SizingError::TooSmallForOneBlock { budget_bytes, bytes_per_block } => write!(
                f,
                "--kv-cache-memory {} holds no block: one block of this model needs {}",
                human_bytes(*budget_bytes),
                human_bytes(*bytes_per_block)
            ),
            SizingError::MaxModelLenDoesNotFit { max_model_len, needs_blocks, have_blocks, block_size, bytes_per_block } => write!(
                f,
                "--max-model-len {max_model_len} needs {needs_blocks} KV blocks but the cache has {have_blocks}: \
                 at most {} tokens fit; lower --max-model-len to {} or raise --kv-cache-memory to at least {}",
                have_blocks * block_size,
                have_blocks * block_size,
                human_bytes(*needs_blocks as u64 * bytes_per_block)
            ),
            SizingError::MaxModelLenAboveModel { max_model_len, model_limit } => write!(
                f,
                "--max-model-len {max_model_len} exceeds the model's max_position_embeddings {model_limit}"
            ),
        }
    }
}

impl std::error::Error for SizingError {}

/// Sizes the cache. `max_model_len: None` takes the model's limit, shrunk to what fits (with a
/// note for the log) only when the user did not ask for it explicitly.
pub fn size_cache(
    footprint: BlockFootprint,
    budget: CacheBudget,
    max_model_len: Option<usize>,
    model_limit: usize,
) -> Result<(CacheSize, Option<String>), SizingError> {
    if ![8, 16, 32].contains(&footprint.block_size) {
        return Err(SizingError::BlockSizeInvalid(footprint.block_size));
    }
    let per_block = footprint.bytes_per_block();
    let num_blocks = match budget {
        CacheBudget::Blocks(0) => return Err(SizingError::ZeroBlocks),
        CacheBudget::Blocks(n) => n,
        CacheBudget::Bytes(b) => {
            let n = (b / per_block) as usize;
            if n == 0 {
                return Err(SizingError::TooSmallForOneBlock { budget_bytes: b, bytes_per_block: per_block });
            }
            n
        }
    };
    let capacity_tokens = num_blocks * footprint.block_size;
    let explicit_or_model = max_model_len.unwrap_or(model_limit);
    let mut note = None;
    let max_model_len = match max_model_len {
        Some(len) => {
            if len > model_limit {
                return Err(SizingError::MaxModelLenAboveModel { max_model_len: len, model_limit });
            }
            let needs = len.div_ceil(footprint.block_size);
            if needs > num_blocks {
                return Err(SizingError::MaxModelLenDoesNotFit {
                    max_model_len: len,
                    needs_blocks: needs,
                    have_blocks: num_blocks,
                    block_size: footprint.block_size,
                    bytes_per_block: per_block,
                });
            }
            len
        }
        None if model_limit > capacity_tokens => {
            note = Some(format!(
                "the KV cache holds {capacity_tokens} tokens, less than the model's context {model_limit}: \
                 requests that keep their whole KV are limited to {capacity_tokens} tokens \
                 (requests with a kv_budget may use the model's {model_limit})"
            ));
            capacity_tokens
        }
        None => model_limit,
    };
    Ok((
        CacheSize {
            num_blocks,
            block_size: footprint.block_size,
            max_model_len,
            max_context_len: max_model_len.max(explicit_or_model),
            bytes: num_blocks as u64 * per_block,
        },
        note,
    ))
}

/// Parses sizes like `2GiB`, `512MiB`, `1.5GB`, `1000000` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("`{text}` is not a size (e.g. 2GiB, 512MiB, 1000000)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024f64.powi(2),
        "gi" | "gib" => 1024f64.powi(3),
        "ti" | "tib" => 1024f64.powi(4),
        other => return Err(format!("`{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("`{text}` must be at least one byte"));
    }
    Ok(bytes as u64)
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm() -> BlockFootprint {
        BlockFootprint { num_layers: 30, num_kv_heads: 3, head_dim: 64, block_size: 16, kv_row_bytes: 64 * 4, slot_meta_bytes: 8 }
    }

    #[test]
    fn int8_rows_with_their_scales_fit_about_3_6_times_the_f32_tokens() {
        // int8: 64 codes + a 4-byte scale per row.
        let int8 = BlockFootprint { kv_row_bytes: 64 + 4, ..smollm() };
        assert_eq!(int8.bytes_per_token(), 30 * 3 * (2 * 68 + 8));
        let budget = CacheBudget::Bytes(256 << 20);
        let (f32_size, _) = size_cache(smollm(), budget, None, 8192).unwrap();
        let (int8_size, _) = size_cache(int8, budget, None, 8192).unwrap();
        assert_eq!(int8_size.num_blocks, (256u64 << 20) as usize / (30 * 3 * 16 * 144));
        assert!(int8_size.num_blocks * 10 >= f32_size.num_blocks * 36 - 10);
    }

    #[test]
    fn block_bytes_count_keys_values_and_slot_metadata() {
        // 30 layers * 3 heads * 16 slots * (2 * 64 * 4 + 8) bytes
        assert_eq!(smollm().bytes_per_block(), 30 * 3 * 16 * 520);
    }

    #[test]
    fn byte_budget_becomes_whole_blocks() {
        let per = smollm().bytes_per_block();
        let (size, _) = size_cache(smollm(), CacheBudget::Bytes(per * 10 + per / 2), Some(160), 8192).unwrap();
        assert_eq!(size.num_blocks, 10);
        assert_eq!(size.max_model_len, 160);
    }

    #[test]
    fn explicit_max_model_len_that_does_not_fit_says_what_would() {
        let err = size_cache(smollm(), CacheBudget::Blocks(10), Some(8192), 8192).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("8192") && msg.contains("at most 160 tokens"), "{msg}");
    }

    #[test]
    fn default_max_model_len_shrinks_to_capacity_with_a_note() {
        let (size, note) = size_cache(smollm(), CacheBudget::Blocks(10), None, 8192).unwrap();
        assert_eq!(size.max_model_len, 160);
        assert_eq!(size.max_context_len, 8192, "budgeted requests keep the model's context");
        assert!(note.unwrap().contains("160"));
    }

    #[test]
    fn budget_below_one_block_is_an_error() {
        assert!(matches!(
            size_cache(smollm(), CacheBudget::Bytes(100), None, 8192),
            Err(SizingError::TooSmallForOneBlock { .. })
        ));
    }

    #[test]
    fn max_model_len_above_the_model_is_an_error() {
        assert!(matches!(
            size_cache(smollm(), CacheBudget::Blocks(10_000), Some(10_000), 8192),
            Err(SizingError::MaxModelLenAboveModel { .. })
        ));
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("2XB").is_err());
    }
}
