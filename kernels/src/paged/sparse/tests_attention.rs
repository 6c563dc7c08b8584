//! `paged_attention_sparse` against a naive masked attention (plain loops over exactly the
//! selected blocks' valid rows, f64), at every CPU level and cache dtype; bit-identity with
//! `paged_attention` where the contract promises it; and its argument errors.

use candle_core::{DType, Device, Result, Tensor};

use super::test_fixture::{every_block_rows, message, sparse_case, three_layer_roles, SparseCase};
use super::{paged_attention_sparse, run_attention, HeadRoles, SparseDecodePlan};
use crate::paged::attention::cpu::Level;
use crate::paged::attention::tests::Spec;
use crate::paged::{paged_attention, KvDtype};

/// A prefill chunk, a full decode row (budget 0), sparse decode rows with ragged contexts (one
/// long enough to split its full heads, one selecting enough blocks to split its selection, one
/// whose budget covers its context, a one-token one).
const SEQS: [(usize, usize, u32); 7] = [(33, 20, 0), (100, 1, 0), (700, 1, 12), (1800, 1, 70), (250, 1, 5), (37, 1, 8), (0, 1, 2)];

/// Naive attention of every (token, query head): the keys it sees are the selected blocks'
/// valid rows for a sparse head of a sparse sequence, else its whole causal view; zeros when none.
fn naive(sc: &SparseCase, layer: usize, scale: f64) -> Result<Vec<f32>> {
    let case = &sc.case;
    let (kv_heads, bs, hd) = (case.shape.num_kv_heads, case.shape.block_size, case.shape.head_dim);
    let group = case.num_heads / kv_heads;
    let q: Vec<f32> = case.q.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(q.len());
    let mut token = 0;
    for s in 0..case.tables.len() {
        let (q_len, ctx) = (case.query_lens[s], case.context_lens[s]);
        for j in 0..q_len {
            let visible = ctx - q_len + j + 1;
            for h in 0..case.num_heads {
                let g = h / group;
                let keys: Vec<usize> = if sc.plan.is_sparse(s) && !sc.plan.roles.is_retrieval(layer, g) {
                    sc.row(s, g).iter().filter(|&&b| b >= 0).flat_map(|&b| b as usize * bs..((b as usize + 1) * bs).min(visible)).collect()
                } else {
                    (0..visible).collect()
                };
                let at = |i: usize| ((case.tables[s][i / bs] as usize * kv_heads + g) * bs + i % bs) * hd;
                let qr = &q[(token * case.num_heads + h) * hd..][..hd];
                let scores: Vec<f64> =
                    keys.iter().map(|&i| (0..hd).map(|d| qr[d] as f64 * case.key[at(i) + d] as f64).sum::<f64>() * scale).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                for d in 0..hd {
                    let sum: f64 = keys.iter().zip(&scores).map(|(&i, x)| (x - max).exp() / total * case.value[at(i) + d] as f64).sum();
                    out.push(sum as f32);
                }
            }
            token += 1;
        }
    }
    Ok(out)
}

/// Head 1 of sequence 3 (1801 keys) selects every other block: more than 512 keys, so its
/// selection is cut into several work items whatever the block size.
fn split_selection(sc: &mut SparseCase) -> Result<()> {
    let width = sc.plan.width;
    let picks: Vec<i32> = (0..sc.blocks(3) as i32).step_by(2).take(width).collect();
    assert!(picks.len() * sc.case.shape.block_size > 512);
    let mut rows = sc.rows.clone();
    let row = &mut rows[(3 * 3 + 1) * width..][..width];
    row.fill(-1);
    row[..picks.len()].copy_from_slice(&picks);
    sc.set_rows(rows)
}

fn run(sc: &SparseCase, level: Level, layer: usize, scale: f32) -> Result<Vec<f32>> {
    let c = &sc.case;
    let out = run_attention(level, &c.q, &c.cache, &c.meta, scale, &sc.plan, layer, &sc.selection)?;
    assert_eq!(out.dims(), c.q.dims());
    out.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

fn dense(sc: &SparseCase, scale: f32) -> Result<Vec<f32>> {
    let c = &sc.case;
    paged_attention(&c.q, &c.cache, &c.meta, scale)?.flatten_all()?.to_vec1()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what} [{i}]: {g} vs {w}");
    }
}

#[test]
fn sparse_heads_attend_exactly_their_selected_blocks_for_every_dtype_gqa_and_level() -> Result<()> {
    for (i, dtype) in KvDtype::ALL.into_iter().enumerate() {
        for block_size in [16, 32] {
            for group in [1, 3, 8] {
                // head_dim 40 runs the dot product's non-multiple-of-8 tail.
                let head_dims: &[usize] = if dtype == KvDtype::F32 { &[64, 40] } else { &[64] };
                for &head_dim in head_dims {
                    let spec = Spec { cache_dtype: dtype, ..Spec::f32(block_size, 3, group, head_dim) };
                    let seed = 500 + i as u64 * 100 + block_size as u64 + group as u64 * 7 + head_dim as u64;
                    let mut sc = sparse_case(seed, &spec, &SEQS, three_layer_roles(3))?;
                    split_selection(&mut sc)?;
                    let scale = 1.0 / (head_dim as f32).sqrt();
                    for layer in [1, 2] {
                        let want = naive(&sc, layer, scale as f64)?;
                        for level in Level::available() {
                            let what = format!("{dtype} bs{block_size} g{group} d{head_dim} layer {layer} {level:?}");
                            assert_close(&run(&sc, level, layer, scale)?, &want, 3e-5, &what);
                        }
                        let public =
                            paged_attention_sparse(&sc.case.q, &sc.case.cache, &sc.case.meta, scale, &sc.plan, layer, &sc.selection)?;
                        assert_close(&public.flatten_all()?.to_vec1()?, &want, 3e-5, &format!("{dtype} public op"));
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn half_precision_queries_are_returned_in_their_dtype() -> Result<()> {
    for q_dtype in [DType::F16, DType::BF16] {
        let spec = Spec { q_dtype, ..Spec::f32(16, 3, 3, 64) };
        let sc = sparse_case(61, &spec, &SEQS, three_layer_roles(3))?;
        let out = paged_attention_sparse(&sc.case.q, &sc.case.cache, &sc.case.meta, 0.125, &sc.plan, 1, &sc.selection)?;
        assert_eq!(out.dtype(), q_dtype);
        assert_close(&out.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?, &naive(&sc, 1, 0.125)?, 1.6e-2, &format!("{q_dtype:?}"));
    }
    Ok(())
}

#[test]
fn all_retrieval_roles_give_the_bits_of_paged_attention() -> Result<()> {
    let seqs = [(33, 20, 0), (2999, 1, 40), (700, 1, 12), (0, 1, 2)];
    for dtype in KvDtype::ALL {
        let spec = Spec { cache_dtype: dtype, ..Spec::f32(16, 3, 3, 64) };
        let sc = sparse_case(71, &spec, &seqs, std::sync::Arc::new(HeadRoles::all_retrieval(2, 3)))?;
        let got = run(&sc, Level::detect(), 1, 0.125)?;
        assert_eq!(bits(&got), bits(&dense(&sc, 0.125)?), "{dtype}");
    }
    Ok(())
}

#[test]
fn a_selection_of_every_block_gives_the_bits_of_paged_attention_even_across_splits() -> Result<()> {
    // 2999 cached keys: 188 blocks of 16, so the selection is cut into 6 items like the full walk.
    let seqs = [(33, 20, 0), (2999, 1, 188), (700, 1, 12), (5, 1, 3)];
    for dtype in KvDtype::ALL {
        let spec = Spec { cache_dtype: dtype, ..Spec::f32(16, 3, 3, 64) };
        let mut sc = sparse_case(72, &spec, &seqs, three_layer_roles(3))?;
        let rows = every_block_rows(&sc);
        sc.set_rows(rows)?;
        let got = run(&sc, Level::detect(), 2, 0.125)?;
        assert_eq!(bits(&got), bits(&dense(&sc, 0.125)?), "{dtype}");
    }
    Ok(())
}

#[test]
fn one_heads_full_selection_matches_paged_attention_bits_for_that_head() -> Result<()> {
    // Layer 2 (all sparse): head 1 lists every block of the long sequence, heads 0 and 2 a few.
    let seqs = [(2999, 1, 188)];
    let spec = Spec::f32(16, 3, 3, 64);
    let mut sc = sparse_case(73, &spec, &seqs, three_layer_roles(3))?;
    let mut rows = every_block_rows(&sc);
    let width = sc.plan.width;
    rows[..width].iter_mut().enumerate().for_each(|(i, r)| *r = if i < 4 { i as i32 * 40 } else { -1 });
    rows[2 * width..].iter_mut().enumerate().for_each(|(i, r)| *r = if i < 3 { 180 + i as i32 } else { -1 });
    sc.set_rows(rows)?;
    let (got, want) = (run(&sc, Level::detect(), 2, 0.125)?, dense(&sc, 0.125)?);
    let head = |v: &[f32], kv: usize| v[kv * 3 * 64..(kv + 1) * 3 * 64].to_vec();
    assert_eq!(bits(&head(&got, 1)), bits(&head(&want, 1)), "head 1 selected every block");
    assert_ne!(head(&got, 0), head(&want, 0), "head 0 attends 4 blocks, not the context");
    Ok(())
}

#[test]
fn a_sparse_head_with_an_empty_selection_outputs_zeros() -> Result<()> {
    let mut sc = sparse_case(74, &Spec::f32(16, 3, 3, 64), &[(700, 1, 12), (40, 1, 4)], three_layer_roles(3))?;
    let rows = vec![-1; sc.rows.len()];
    sc.set_rows(rows)?;
    for level in Level::available() {
        let out = run(&sc, level, 1, 0.125)?; // layer 1: head 0 retrieval, heads 1 and 2 sparse
        for (token, row) in out.chunks_exact(9 * 64).enumerate() {
            assert!(row[..3 * 64].iter().all(|x| x.is_finite() && *x != 0.0), "token {token} retrieval head attends");
            assert!(row[3 * 64..].iter().all(|&x| x == 0.0), "token {token} {level:?}: empty selection → zeros");
        }
    }
    Ok(())
}

#[test]
fn inconsistent_arguments_are_one_line_errors() -> Result<()> {
    let sc = sparse_case(75, &Spec::f32(16, 3, 3, 64), &SEQS, three_layer_roles(3))?;
    let c = &sc.case;
    let attend =
        |plan: &SparseDecodePlan, layer: usize, sel: &Tensor| paged_attention_sparse(&c.q, &c.cache, &c.meta, 0.125, plan, layer, sel);
    let expect = |result: Result<Tensor>, needle: &str| {
        let err = message(&result.expect_err(needle));
        assert!(err.contains(needle) && !err.contains('\n'), "{err:?} should mention {needle:?}");
    };
    expect(attend(&sc.plan, 3, &sc.selection), "layer 3");
    expect(attend(&sc.plan, 1, &sc.selection.narrow(2, 0, 1)?), "selection is");
    expect(attend(&sc.plan, 1, &sc.selection.to_dtype(DType::F32)?), "must be I32");
    let foreign = SparseDecodePlan::new(three_layer_roles(2), vec![0; 7], vec![0; 7], vec![0; 7], &c.meta, &Device::Cpu)?;
    expect(attend(&foreign, 1, &sc.selection), "head roles are for 2 KV heads");
    // A sparse head's row naming a block past its context (sequence 4 has 16 blocks).
    let mut rows = sc.rows.clone();
    let at = (4 * 3 + 1) * sc.plan.width;
    rows[at..at + 2].copy_from_slice(&[2, 16]);
    let bad = Tensor::from_slice(&rows, sc.selection.dims(), &Device::Cpu)?;
    expect(attend(&sc.plan, 1, &bad), "selection[4, 1, 1] = 16");
    Ok(())
}
