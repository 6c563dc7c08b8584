//! Whole blocks of one cache tensor as raw bytes, whatever the tensor's dtype: the offload tier
//! copies a block out of the pool as stored and writes it back bit for bit.
//!
//! Owns: reading and writing the bytes of rows of dim 0 of a contiguous tensor. Must not know
//! what the tensor means (key, value, metadata, scales) nor where the bytes go.
//!
//! Why raw bytes and not a typed copy: a block must come back exactly as it left (prefix hits
//! and swap-ins must not change any output), and the tier must not care which dtypes the cache
//! uses (f32/f16/bf16 today, quantized caches with scale tensors later).

use candle_core::{bail, CpuStorage, Device, Result, Storage, Tensor};

/// Bytes of one row of dim 0 (one block) of `t`.
pub fn block_nbytes(t: &Tensor) -> usize {
    t.dims().iter().skip(1).product::<usize>() * t.dtype().size_in_bytes()
}

/// Appends the bytes of blocks `blocks` (rows of dim 0) of `t` to `out`, in the given order.
pub fn read_blocks(t: &Tensor, blocks: &[u32], out: &mut [Vec<u8>]) -> Result<()> {
    if blocks.len() != out.len() {
        bail!("read_blocks: {} blocks but {} buffers", blocks.len(), out.len())
    }
    let num_blocks = t.dims().first().copied().unwrap_or(0);
    if let Some(&b) = blocks.iter().find(|&&b| b as usize >= num_blocks) {
        bail!("read_blocks: block {b} outside the tensor's {num_blocks} blocks")
    }
    if !t.device().is_cpu() {
        // A device cache: bring each block to the host first (the transfer a GPU build makes).
        for (&b, dst) in blocks.iter().zip(out.iter_mut()) {
            let host = t.narrow(0, b as usize, 1)?.to_device(&Device::Cpu)?;
            read_blocks(&host, &[0], std::slice::from_mut(dst))?;
        }
        return Ok(());
    }
    let row = block_nbytes(t);
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { bail!("read_blocks: expected CPU storage") };
    if !layout.is_contiguous() {
        bail!("read_blocks: the tensor must be contiguous")
    }
    let bytes = cpu_bytes(cpu)?;
    let start = layout.start_offset() * t.dtype().size_in_bytes();
    for (&b, dst) in blocks.iter().zip(out.iter_mut()) {
        let from = start + b as usize * row;
        dst.extend_from_slice(&bytes[from..from + row]);
    }
    Ok(())
}

/// Overwrites block `block` of `t` with `bytes` (exactly one block's worth, as `read_blocks`
/// produced them for a tensor of the same shape and dtype).
pub fn write_block(t: &Tensor, block: u32, bytes: &[u8]) -> Result<()> {
    let row = block_nbytes(t);
    if bytes.len() != row {
        bail!("write_block: {} bytes for a {row}-byte block", bytes.len())
    }
    let num_blocks = t.dims().first().copied().unwrap_or(0);
    if block as usize >= num_blocks {
        bail!("write_block: block {block} outside the tensor's {num_blocks} blocks")
    }
    let mut shape = t.dims().to_vec();
    shape[0] = 1;
    let src = Tensor::from_raw_buffer(bytes, t.dtype(), &shape, t.device())?;
    t.slice_set(&src, 0, block as usize)
}

fn cpu_bytes(s: &CpuStorage) -> Result<&[u8]> {
    Ok(match s {
        CpuStorage::U8(v) => v,
        CpuStorage::U32(v) => pod_bytes(v),
        CpuStorage::I16(v) => pod_bytes(v),
        CpuStorage::I32(v) => pod_bytes(v),
        CpuStorage::I64(v) => pod_bytes(v),
        CpuStorage::BF16(v) => pod_bytes(v),
        CpuStorage::F16(v) => pod_bytes(v),
        CpuStorage::F32(v) => pod_bytes(v),
        CpuStorage::F64(v) => pod_bytes(v),
        CpuStorage::F8E4M3(v) => pod_bytes(v),
        CpuStorage::F6E2M3(v) | CpuStorage::F6E3M2(v) | CpuStorage::F4(v) | CpuStorage::F8E8M0(v) => v,
    })
}

/// The bytes of a slice of plain numbers.
fn pod_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: every `T` used above is a plain number type (no padding, no pointers, every bit
    // pattern readable as bytes); the returned slice covers exactly the same memory and borrows
    // `v`, so it cannot outlive it.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn blocks_round_trip_bit_for_bit_in_every_dtype() -> Result<()> {
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::I32, DType::U8] {
            let n = 4 * 2 * 3;
            let src = Tensor::arange(0f32, n as f32, &Device::Cpu)?.reshape((4, 2, 3))?.to_dtype(dtype)?;
            let dst = Tensor::zeros((4, 2, 3), dtype, &Device::Cpu)?;
            let mut out = vec![Vec::new(), Vec::new()];
            read_blocks(&src, &[3, 1], &mut out)?;
            assert_eq!(out[0].len(), 6 * dtype.size_in_bytes());
            write_block(&dst, 0, &out[0])?;
            write_block(&dst, 2, &out[1])?;
            let got = dst.to_dtype(DType::F32)?.to_vec3::<f32>()?;
            let want = src.to_dtype(DType::F32)?.to_vec3::<f32>()?;
            assert_eq!(got[0], want[3], "{dtype:?}");
            assert_eq!(got[2], want[1], "{dtype:?}");
            assert!(got[1].iter().flatten().all(|&x| x == 0.0), "{dtype:?}: untouched block changed");
        }
        Ok(())
    }

    #[test]
    fn wrong_sizes_and_blocks_are_errors() -> Result<()> {
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        assert!(write_block(&t, 0, &[0u8; 11]).is_err());
        assert!(write_block(&t, 2, &[0u8; 12]).is_err());
        let mut out = vec![Vec::new()];
        assert!(read_blocks(&t, &[2], &mut out).is_err());
        Ok(())
    }
}
