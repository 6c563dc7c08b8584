//! The text windows `eval kv` scores: token ids of the whole text (with the tokenizer's special
//! tokens, so the first window starts as a normal prompt does), cut into `context_len`-token
//! windows every `stride` tokens.
//!
//! Must not know: policies or engines.

use anyhow::{bail, Result};

/// Windows `[start, start + context_len)` every `stride` tokens, at most `max_windows`.
pub fn windows(ids: &[u32], context_len: usize, stride: usize, max_windows: Option<usize>) -> Result<Vec<Vec<u32>>> {
    if ids.len() < context_len {
        bail!("the text has {} tokens, fewer than --context-len {context_len}", ids.len());
    }
    if stride == 0 {
        bail!("--stride must be at least 1");
    }
    let out: Vec<Vec<u32>> = (0..=ids.len() - context_len)
        .step_by(stride)
        .take(max_windows.unwrap_or(usize::MAX))
        .map(|start| ids[start..start + context_len].to_vec())
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_step_by_stride_and_stop_at_the_limit() {
        let ids: Vec<u32> = (0..10).collect();
        let w = windows(&ids, 4, 3, None).unwrap();
        assert_eq!(w, vec![vec![0, 1, 2, 3], vec![3, 4, 5, 6], vec![6, 7, 8, 9]]);
        assert_eq!(windows(&ids, 4, 4, Some(1)).unwrap().len(), 1);
        assert!(windows(&ids, 11, 4, None).is_err());
        assert!(windows(&ids, 4, 0, None).is_err());
    }
}
