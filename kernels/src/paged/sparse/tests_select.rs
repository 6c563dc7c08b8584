//! `select_blocks` against a naive reference (scores in f64 over the held keys, a stable sort by
//! score descending so ties keep the lower block), at every CPU level and cache dtype; exact
//! ties and low-scoring sink/recent blocks on a crafted cache; which rows it may touch.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::test_fixture::{message, sparse_case, three_layer_roles, SparseCase};
use super::{run_select, select_blocks, HeadRoles, SparseDecodePlan};
use crate::paged::attention::cpu::Level;
use crate::paged::attention::tests::{cache_tensor, random_case, Spec};
use crate::paged::KvDtype;

/// `(Σ_g q_g) / G` in head order, f32, as the contract defines the group query.
fn group_mean(q: &[f32], token: usize, kv_head: usize, num_heads: usize, group: usize, hd: usize) -> Vec<f32> {
    let mut mean = vec![0f32; hd];
    for (h, head) in q[(token * num_heads + kv_head * group) * hd..][..group * hd].chunks_exact(hd).enumerate() {
        for (m, &x) in mean.iter_mut().zip(head) {
            *m = if h == 0 { x } else { *m + x };
        }
    }
    mean.iter_mut().for_each(|m| *m /= group as f32);
    mean
}

/// The naive choice of retrieval head `kv_head` for sparse sequence `seq`, -1 padded.
fn naive_choice(sc: &SparseCase, q: &[f32], seq: usize, kv_head: usize) -> Vec<i32> {
    let case = &sc.case;
    let (kv_heads, bs, hd) = (case.shape.num_kv_heads, case.shape.block_size, case.shape.head_dim);
    let ctx = case.context_lens[seq];
    let n = ctx.div_ceil(bs);
    let host = &sc.plan.host;
    let (k, a, r) = (host.budget_blocks[seq] as usize, host.sink_blocks[seq] as usize, host.recent_blocks[seq] as usize);
    let mut chosen: Vec<usize> = if n <= k {
        (0..n).collect()
    } else {
        let token = case.meta.host.query_range(seq).start;
        let q_mean = group_mean(q, token, kv_head, case.num_heads, case.num_heads / kv_heads, hd);
        let score = |b: usize| -> f64 {
            (b * bs..((b + 1) * bs).min(ctx))
                .map(|i| {
                    let at = ((case.tables[seq][b] as usize * kv_heads + kv_head) * bs + i % bs) * hd;
                    (0..hd).map(|d| q_mean[d] as f64 * case.key[at + d] as f64).sum::<f64>()
                })
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let mut scored: Vec<(f64, usize)> = (a..n - r).map(|b| (score(b), b)).collect();
        scored.sort_by(|x, y| y.0.total_cmp(&x.0)); // stable: equal scores keep ascending blocks
        let mut top: Vec<usize> = scored[..k - a - r].iter().map(|s| s.1).collect();
        top.sort_unstable();
        (0..a).chain(top).chain(n - r..n).collect()
    };
    chosen.resize(sc.plan.width, usize::MAX);
    chosen.into_iter().map(|b| if b == usize::MAX { -1 } else { b as i32 }).collect()
}

/// What `select_blocks` must return: the input with the naive choice in every row of a sparse
/// sequence and a KV head retrieval in `layer`.
fn expected(sc: &SparseCase, layer: usize) -> Result<Vec<i32>> {
    let q: Vec<f32> = sc.case.q.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (heads, width) = (sc.case.shape.num_kv_heads, sc.plan.width);
    let mut rows = sc.rows.clone();
    for (i, row) in rows.chunks_exact_mut(width).enumerate() {
        let (seq, h) = (i / heads, i % heads);
        if sc.plan.is_sparse(seq) && sc.plan.roles.is_retrieval(layer, h) {
            row.copy_from_slice(&naive_choice(sc, &q, seq, h));
        }
    }
    Ok(rows)
}

fn select_at(sc: &SparseCase, level: Level, layer: usize) -> Result<Vec<i32>> {
    let c = &sc.case;
    let out = run_select(level, &c.q, &c.cache, &c.meta, &sc.plan, layer, &sc.selection)?;
    assert_eq!(out.dims(), sc.selection.dims());
    out.flatten_all()?.to_vec1()
}

/// Input rows holding values no choice produces, so an untouched row is recognisable.
fn sentinel_rows(sc: &SparseCase) -> Vec<i32> {
    (0..sc.rows.len() as i32).map(|i| 1000 + i).collect()
}

#[test]
fn retrieval_heads_choose_like_the_naive_reference_for_every_dtype_gqa_and_level() -> Result<()> {
    // Sparse rows with budgets below, at and above their block counts; a prefill chunk and a
    // full decode row whose rows must stay as they were.
    let seqs = [(33, 20, 0), (100, 1, 0), (700, 1, 12), (250, 1, 5), (37, 1, 8), (0, 1, 2), (1000, 1, 3)];
    for (i, dtype) in KvDtype::ALL.into_iter().enumerate() {
        for block_size in [16, 32] {
            for group in [1, 3, 8] {
                let spec = Spec { cache_dtype: dtype, ..Spec::f32(block_size, 3, group, 64) };
                let mut sc = sparse_case(900 + i as u64 * 10 + group as u64 + block_size as u64, &spec, &seqs, three_layer_roles(3))?;
                // Wider sink and recent windows where the budget allows.
                let host = &sc.plan.host;
                let sinks = host.budget_blocks.iter().map(|&b| if b >= 12 { 3 } else { (b > 0) as u32 }).collect();
                let recents = host.budget_blocks.iter().map(|&b| if b >= 5 { 2 } else { (b > 0) as u32 }).collect();
                sc.plan =
                    SparseDecodePlan::new(sc.plan.roles.clone(), host.budget_blocks.clone(), sinks, recents, &sc.case.meta, &Device::Cpu)?;
                let rows = sentinel_rows(&sc);
                sc.set_rows(rows)?;
                for layer in [0, 1, 2] {
                    let want = expected(&sc, layer)?;
                    for level in Level::available() {
                        assert_eq!(select_at(&sc, level, layer)?, want, "{dtype} bs{block_size} g{group} layer {layer} {level:?}");
                    }
                    let public = select_blocks(&sc.case.q, &sc.case.cache, &sc.case.meta, &sc.plan, layer, &sc.selection)?;
                    assert_eq!(public.flatten_all()?.to_vec1::<i32>()?, want, "{dtype} public op");
                }
                // Budget 8 covers the 3 blocks (bs 16) or 2 blocks (bs 32) of context 38: all of them.
                let all: Vec<i32> = (0..38usize.div_ceil(block_size) as i32).collect();
                assert_eq!(&expected(&sc, 0)?[(4 * 3 * sc.plan.width)..][..all.len()], &all[..]);
            }
        }
    }
    Ok(())
}

/// One sequence at context 200 (13 blocks of 16, the last one half full), 2 KV heads × group 2,
/// budget `budget`, sink 2 and recent 2 blocks. Keys, per head, with `u` = that head's group
/// query: `-u` in the sink and recent blocks (the lowest scores), `u` in blocks 2..=10 except
/// one row of `2u` in blocks 4, 6 and 9 (equal top scores, exact in every dtype).
fn crafted(dtype: KvDtype, budget: u32) -> Result<SparseCase> {
    let spec = Spec { cache_dtype: dtype, ..Spec::f32(16, 2, 2, 64) };
    let mut case = random_case(5, &spec, &[(199, 1)], false)?;
    let (kv_heads, bs, hd) = (2, 16, 64);
    let q: Vec<f32> = case.q.flatten_all()?.to_vec1()?;
    let mut key = vec![0f32; case.shape.num_blocks * kv_heads * bs * hd];
    for h in 0..kv_heads {
        let u = group_mean(&q, 0, h, 4, 2, hd);
        for (logical, &physical) in case.tables[0].iter().enumerate() {
            for i in 0..bs {
                let factor = match logical {
                    0 | 1 | 11 | 12 => -1.0,
                    4 | 6 | 9 if i == 5 => 2.0,
                    _ => 1.0,
                };
                let at = ((physical as usize * kv_heads + h) * bs + i) * hd;
                key[at..at + hd].iter_mut().zip(&u).for_each(|(k, &x)| *k = x * factor);
            }
        }
    }
    let (tensor, held) = cache_tensor(key, case.shape.kv_dims(), dtype)?;
    case.cache.key = tensor;
    case.key = held;
    let roles = Arc::new(HeadRoles::all_retrieval(1, 2));
    let plan = SparseDecodePlan::new(roles, vec![budget], vec![2], vec![2], &case.meta, &Device::Cpu)?;
    let mut sc = SparseCase { case, plan, rows: vec![], selection: Tensor::zeros(1, DType::I32, &Device::Cpu)? };
    let rows = sentinel_rows_for(&sc);
    sc.set_rows(rows)?;
    Ok(sc)
}

fn sentinel_rows_for(sc: &SparseCase) -> Vec<i32> {
    vec![777; sc.case.meta.num_seqs * sc.case.shape.num_kv_heads * sc.plan.width]
}

#[test]
fn exact_ties_go_to_the_lower_block_and_sink_and_recent_blocks_always_stay() -> Result<()> {
    let cases: [(u32, &[i32]); 3] = [
        (6, &[0, 1, 4, 6, 11, 12]),          // 2 picks among the tied 4, 6, 9: the lower two
        (7, &[0, 1, 4, 6, 9, 11, 12]),       // 3 picks: exactly the top three
        (9, &[0, 1, 2, 3, 4, 6, 9, 11, 12]), // 5 picks: the top three, then the lowest of the tied rest
    ];
    for dtype in KvDtype::ALL {
        for (budget, want) in cases {
            let sc = crafted(dtype, budget)?;
            for level in Level::available() {
                let got = select_at(&sc, level, 0)?;
                for (h, row) in got.chunks_exact(sc.plan.width).enumerate() {
                    let mut want = want.to_vec();
                    want.resize(sc.plan.width, -1);
                    assert_eq!(row, &want[..], "{dtype} budget {budget} head {h} {level:?}");
                }
                assert_eq!(got, expected(&sc, 0)?, "{dtype}: the naive reference agrees");
            }
        }
    }
    Ok(())
}

#[test]
fn select_checks_its_arguments() -> Result<()> {
    let sc = sparse_case(3, &Spec::f32(16, 3, 3, 64), &[(100, 1, 4)], three_layer_roles(3))?;
    let c = &sc.case;
    let err = select_blocks(&c.q, &c.cache, &c.meta, &sc.plan, 1, &sc.selection.narrow(1, 0, 2)?).expect_err("2 heads");
    let err = message(&err);
    assert!(err.contains("select_blocks: selection is [1, 2, 4]") && !err.contains('\n'), "{err}");
    let err = message(&select_blocks(&c.q, &c.cache, &c.meta, &sc.plan, 7, &sc.selection).expect_err("layer"));
    assert!(err.contains("layer 7") && !err.contains('\n'), "{err}");
    Ok(())
}
