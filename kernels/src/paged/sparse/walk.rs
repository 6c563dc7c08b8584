//! Which blocks each (sequence, KV head) attends in one layer, as the CPU attention kernel walks
//! them: retrieval heads and non-sparse sequences the whole context, a sparse sequence's sparse
//! heads their selection row, checked to be well formed first.
//!
//! Owns: the rule "a row is ascending logical blocks of the sequence's context, then -1 padding"
//! and turning plan + roles + selection into the kernel's [`BlockSelection`]. Must not know:
//! how rows were chosen (`select`) or how attention runs over them.

use candle_core::{bail, Result};

use super::plan::SparseDecodePlan;
use crate::paged::attention::cpu::BlockSelection;
use crate::paged::HostMetadata;

/// `indices`: the selection `[S, H, plan.width]`. Errors name the first malformed entry of a row
/// a sparse head would walk.
pub(super) fn block_selection<'a>(
    indices: &'a [i32],
    plan: &SparseDecodePlan,
    layer: usize,
    host: &HostMetadata,
    op: &str,
) -> Result<BlockSelection<'a>> {
    let (roles, width) = (plan.roles.layer(layer), plan.width);
    let heads = roles.len();
    let mut walk = vec![None; indices.len() / width];
    for (s, seq_walk) in walk.chunks_exact_mut(heads).enumerate() {
        if !plan.is_sparse(s) {
            continue;
        }
        let blocks = (host.context_lens[s] as usize).div_ceil(host.block_size);
        for (h, (head_walk, &retrieval)) in seq_walk.iter_mut().zip(roles).enumerate() {
            if retrieval {
                continue;
            }
            let row = &indices[(s * heads + h) * width..][..width];
            match selected_len(row, blocks) {
                Ok(n) => *head_walk = Some(n),
                Err(i) => bail!(
                    "{op}: selection[{s}, {h}, {i}] = {} in layer {layer}: a row must list ascending blocks below the sequence's {blocks} then -1 padding",
                    row[i]
                ),
            }
        }
    }
    Ok(BlockSelection { indices, width, walk })
}

/// How many leading entries of `row` are blocks to attend, or the index of the first entry that
/// breaks "strictly ascending blocks in `0..blocks`, then only -1".
pub(super) fn selected_len(row: &[i32], blocks: usize) -> std::result::Result<usize, usize> {
    let n = row.iter().position(|&b| b == -1).unwrap_or(row.len());
    let mut previous = -1i64;
    for (i, &b) in row[..n].iter().enumerate() {
        if (b as i64) <= previous || b as i64 >= blocks as i64 {
            return Err(i);
        }
        previous = b as i64;
    }
    match row[n..].iter().position(|&b| b != -1) {
        Some(i) => Err(n + i),
        None => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_ascending_blocks_in_range_then_padding() {
        assert_eq!(selected_len(&[0, 3, 6, -1, -1], 7), Ok(3));
        assert_eq!(selected_len(&[-1, -1], 7), Ok(0));
        assert_eq!(selected_len(&[2, 5], 7), Ok(2));
        assert_eq!(selected_len(&[0, 7, -1], 7), Err(1), "block past the context");
        assert_eq!(selected_len(&[3, 3, -1], 7), Err(1), "duplicate");
        assert_eq!(selected_len(&[4, 2, -1], 7), Err(1), "descending");
        assert_eq!(selected_len(&[1, -1, 4], 7), Err(2), "a block after the padding");
        assert_eq!(selected_len(&[-2, -1], 7), Err(0), "negative other than -1");
    }
}
