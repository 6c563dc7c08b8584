//! The extent file: several blocks of one or more request prefixes, written together.
//!
//! ```text
//!   magic "KVAULTX\0"  u32 format version  u32 block count  u64 block bytes  [32] fingerprint
//!   block count × ( [32] chain hash, u32 CRC-32 of the block's bytes )
//!   u32 CRC-32 of everything above                      ← end of the header
//!   block count × block bytes                           ← the blocks, as stored in the pool
//! ```
//!
//! Owns: encoding and checking the header, the file's expected length, per-block checksums.
//! Must not know: directories, budgets or threads. All integers are little-endian.
//!
//! Why a header with every hash and checksum up front: start-up rebuilds the index by reading
//! headers only (one small read per file), and a load checks each block it reads on its own.

use crate::block_pool::BlockHash;

use super::super::fingerprint::{ModelFingerprint, FORMAT_VERSION};

pub const MAGIC: &[u8; 8] = b"KVAULTX\0";
/// Bytes before the per-block entries.
const FIXED: usize = 8 + 4 + 4 + 8 + 32;
const ENTRY: usize = 32 + 4;

/// Why a file is not a usable extent. Every case is a miss; none is ever read as KV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtentError {
    #[error("not a kvault extent (bad magic)")]
    BadMagic,
    #[error("format version {0}, this kvault reads {FORMAT_VERSION}")]
    Version(u32),
    #[error("written for another model or cache layout")]
    OtherModel,
    #[error("block size {got} bytes, this cache's blocks are {want}")]
    BlockBytes { got: u64, want: u64 },
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("truncated: {got} bytes, expected {want}")]
    Truncated { got: u64, want: u64 },
    #[error("block {0} fails its checksum")]
    BlockChecksum(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentHeader {
    pub block_bytes: u64,
    pub blocks: Vec<(BlockHash, u32)>,
}

impl ExtentHeader {
    pub fn header_len(num_blocks: usize) -> usize {
        FIXED + num_blocks * ENTRY + 4
    }

    /// Where block `i`'s bytes start in the file.
    pub fn block_offset(&self, i: usize) -> u64 {
        Self::header_len(self.blocks.len()) as u64 + i as u64 * self.block_bytes
    }

    pub fn file_len(&self) -> u64 {
        self.block_offset(self.blocks.len())
    }

    pub fn encode(&self, fp: &ModelFingerprint) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::header_len(self.blocks.len()));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.blocks.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.block_bytes.to_le_bytes());
        out.extend_from_slice(&fp.0);
        for (hash, crc) in &self.blocks {
            out.extend_from_slice(&hash.0);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// How many header bytes to read to decode the header, given its first `FIXED` bytes.
    pub fn needed_len(prefix: &[u8]) -> Result<usize, ExtentError> {
        if prefix.len() < FIXED || &prefix[..8] != MAGIC {
            return Err(ExtentError::BadMagic);
        }
        let n = u32::from_le_bytes(prefix[12..16].try_into().unwrap_or_default()) as usize;
        Ok(Self::header_len(n))
    }

    /// Decodes and checks a header (`bytes` = at least `needed_len`), for this fingerprint and
    /// block size, and that a file of `file_len` bytes holds every block it lists.
    pub fn decode(bytes: &[u8], fp: &ModelFingerprint, block_bytes: u64, file_len: u64) -> Result<Self, ExtentError> {
        let len = Self::needed_len(bytes)?;
        if bytes.len() < len {
            return Err(ExtentError::Truncated { got: bytes.len() as u64, want: len as u64 });
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let stored_crc = u32_at(len - 4);
        if crc32fast::hash(&bytes[..len - 4]) != stored_crc {
            return Err(ExtentError::HeaderChecksum);
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(ExtentError::Version(version));
        }
        let got_bytes = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
        if bytes[24..56] != fp.0 {
            return Err(ExtentError::OtherModel);
        }
        if got_bytes != block_bytes {
            return Err(ExtentError::BlockBytes { got: got_bytes, want: block_bytes });
        }
        let n = u32_at(12) as usize;
        let blocks = (0..n)
            .map(|i| {
                let at = FIXED + i * ENTRY;
                let mut h = [0u8; 32];
                h.copy_from_slice(&bytes[at..at + 32]);
                (BlockHash(h), u32_at(at + 32))
            })
            .collect();
        let header = ExtentHeader { block_bytes, blocks };
        if file_len < header.file_len() {
            return Err(ExtentError::Truncated { got: file_len, want: header.file_len() });
        }
        Ok(header)
    }
}

/// The bytes of `FIXED` a reader must see before it knows the header's length.
pub const PREFIX_LEN: usize = FIXED;

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(x: u8) -> ModelFingerprint {
        ModelFingerprint([x; 32])
    }

    fn header() -> ExtentHeader {
        ExtentHeader { block_bytes: 100, blocks: vec![(BlockHash([1; 32]), 11), (BlockHash([2; 32]), 22)] }
    }

    #[test]
    fn a_header_round_trips_and_places_blocks_after_itself() {
        let h = header();
        let bytes = h.encode(&fp(5));
        assert_eq!(bytes.len(), ExtentHeader::header_len(2));
        assert_eq!(ExtentHeader::needed_len(&bytes[..PREFIX_LEN]), Ok(bytes.len()));
        assert_eq!(ExtentHeader::decode(&bytes, &fp(5), 100, h.file_len()), Ok(h.clone()));
        assert_eq!(h.block_offset(1), bytes.len() as u64 + 100);
    }

    #[test]
    fn every_kind_of_damage_or_mismatch_is_refused() {
        let h = header();
        let good = h.encode(&fp(5));
        let decode = |b: &[u8], f: u8, bb: u64, len: u64| ExtentHeader::decode(b, &fp(f), bb, len);
        assert_eq!(decode(&good, 6, 100, h.file_len()), Err(ExtentError::OtherModel));
        assert_eq!(decode(&good, 5, 64, h.file_len()), Err(ExtentError::BlockBytes { got: 100, want: 64 }));
        assert_eq!(decode(&good, 5, 100, h.file_len() - 1), Err(ExtentError::Truncated { got: h.file_len() - 1, want: h.file_len() }));
        assert!(matches!(decode(&good[..good.len() - 3], 5, 100, h.file_len()), Err(ExtentError::Truncated { .. })));
        for at in [9, 20, 60, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert_eq!(decode(&bad, 5, 100, h.file_len()), Err(ExtentError::HeaderChecksum), "flipped byte {at}");
        }
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, 5, 100, h.file_len()), Err(ExtentError::BadMagic));
        assert_eq!(decode(&[], 5, 100, 0), Err(ExtentError::BadMagic));
    }
}
