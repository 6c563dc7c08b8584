//! The LycheeDecode kernels' pieces of the emulation tests: random head roles, plans and
//! selections, and the launch sequences of kernels/cuda/sparse_decode.cu and block_select.cu
//! (argument lists in the kernels' parameter order, geometry from `plan::sparse`, the same
//! decisions as kernels/src/cuda/sparse.rs).
//!
//! Must not know: expected results; the tests compare with the CPU ops.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};
use kvault_kernels::{HeadRoles, SparseDecodePlan};
use kvault_kernels_emu::plan::sparse::{block_select_plan, sparse_decode_plan};
use kvault_kernels_emu::{launch_checked, Arg, LaunchStats};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::{attention_shape, bytes_of, emu, emulate_prefill, tensor_from_bytes, AttnInputs};

/// Layers of the random roles; layer 0 is all retrieval (the contract), the others mixed.
pub const LAYERS: usize = 3;

/// Roles with layer 0 all retrieval and, above it, each head retrieval with probability 1/3,
/// but every upper layer with at least one sparse head.
pub fn random_roles(rng: &mut StdRng, num_kv_heads: usize) -> Result<Arc<HeadRoles>> {
    let mut retrieval = vec![true; num_kv_heads];
    for _ in 1..LAYERS {
        let mut layer: Vec<bool> = (0..num_kv_heads).map(|_| rng.random_bool(1.0 / 3.0)).collect();
        layer[rng.random_range(0..num_kv_heads)] = false;
        retrieval.extend(layer);
    }
    Ok(Arc::new(HeadRoles::new(LAYERS, num_kv_heads, retrieval)?))
}

/// A plan giving every decode row (q_len 1) whose context has more than 2 blocks a budget below
/// its block count (some sequences at exactly their block count minus one, so that n <= k never
/// needs scoring but n = k + 1 does), random sink/recent windows; everything else budget 0.
pub fn random_plan(rng: &mut StdRng, inp: &AttnInputs, roles: Arc<HeadRoles>) -> Result<SparseDecodePlan> {
    let host = &inp.meta.host;
    let (mut budget, mut sink, mut recent) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..inp.meta.num_seqs {
        let n = (host.context_lens[s] as usize).div_ceil(host.block_size);
        if host.query_range(s).len() != 1 || n < 3 {
            budget.push(0);
            sink.push(0);
            recent.push(0);
            continue;
        }
        let k = rng.random_range(2..n);
        let r = rng.random_range(1..k);
        let a = rng.random_range(0..=k - r);
        budget.push(k as u32);
        sink.push(a as u32);
        recent.push(r as u32);
    }
    SparseDecodePlan::new(roles, budget, sink, recent, &inp.meta, &Device::Cpu)
}

/// A well-formed selection (ascending blocks of each context, -1 padded) for every sparse
/// sequence's heads: a random subset of at most the budget (sometimes empty, sometimes the
/// whole context when it fits the width); rows of other sequences all -1.
pub fn random_selection(rng: &mut StdRng, inp: &AttnInputs, plan: &SparseDecodePlan) -> Result<Tensor> {
    let (heads, width) = (inp.case.num_kv_heads, plan.width);
    let mut rows = vec![-1i32; inp.meta.num_seqs * heads * width];
    for (s, seq_rows) in rows.chunks_exact_mut(heads * width).enumerate() {
        let budget = plan.host.budget_blocks[s] as usize;
        if budget == 0 {
            continue;
        }
        let n = (inp.meta.host.context_lens[s] as usize).div_ceil(inp.meta.host.block_size);
        for row in seq_rows.chunks_exact_mut(width) {
            let mut blocks: Vec<i32> = (0..n as i32).collect();
            blocks.shuffle(rng);
            let most = budget.min(n);
            let count = match rng.random_range(0..6) {
                0 => 0,
                1 => most,
                _ => rng.random_range(1..=most),
            };
            let mut chosen = blocks[..count].to_vec();
            chosen.sort_unstable();
            row[..count].copy_from_slice(&chosen);
        }
    }
    Tensor::from_vec(rows, (inp.meta.num_seqs, heads, width), &Device::Cpu)
}

/// Every sparse head's selection row = all the context's blocks (a plan whose width covers them).
pub fn full_selection(inp: &AttnInputs, plan: &SparseDecodePlan) -> Result<Tensor> {
    let (heads, width) = (inp.case.num_kv_heads, plan.width);
    let mut rows = vec![-1i32; inp.meta.num_seqs * heads * width];
    for (s, seq_rows) in rows.chunks_exact_mut(heads * width).enumerate() {
        if plan.host.budget_blocks[s] == 0 {
            continue;
        }
        let n = (inp.meta.host.context_lens[s] as usize).div_ceil(inp.meta.host.block_size);
        assert!(n <= width, "full_selection needs a width of at least {n} blocks");
        for row in seq_rows.chunks_exact_mut(width) {
            row.iter_mut().zip(0..n as i32).for_each(|(o, b)| *o = b);
        }
    }
    Tensor::from_vec(rows, (inp.meta.num_seqs, heads, width), &Device::Cpu)
}

/// The plan's roles as the kernels read them: U8 `[L, H]`, 1 = retrieval.
fn roles_bytes(plan: &SparseDecodePlan) -> Vec<u8> {
    (0..plan.roles.num_layers()).flat_map(|l| plan.roles.layer(l).iter().map(|&r| r as u8)).collect()
}

/// Sparse decode as kernels/src/cuda/sparse.rs launches it: a decode-only batch through the
/// split kernel and the combine for every row; a batch with prefill chunks through paged_prefill
/// for every row, then the split kernel and the combine for sparse heads of sparse sequences only.
pub fn emulate_sparse_decode(
    inp: &AttnInputs,
    plan: &SparseDecodePlan,
    layer: usize,
    selection: &Tensor,
    scale: f32,
    num_splits: Option<usize>,
) -> Result<(Tensor, LaunchStats)> {
    let shape = attention_shape(inp);
    let host = &inp.meta.host;
    let p = sparse_decode_plan(&shape, inp.meta.max_context_len, plan.width, num_splits, 108)
        .map_err(|e| candle_core::Error::Msg(e.0))?;
    let (s, h, d, splits) = (shape.num_seqs, shape.num_heads, shape.head_dim, p.num_splits as usize);
    let sparse_only = inp.meta.max_query_len > 1;
    let (mut out, mut stats) = if sparse_only {
        let (dense, stats) = emulate_prefill(inp, scale)?;
        (bytes_of(&dense)?, stats)
    } else {
        (vec![0u8; bytes_of(&inp.q)?.len()], LaunchStats::default())
    };
    let (q, k, v) = (bytes_of(&inp.q)?, bytes_of(&inp.cache.key)?, bytes_of(&inp.cache.value)?);
    let (roles, sel) = (roles_bytes(plan), selection.flatten_all()?.to_vec1::<i32>()?);
    let mut part_out = vec![0f32; s * h * splits * d];
    let mut part_m = vec![0f32; s * h * splits];
    let mut part_l = vec![0f32; s * h * splits];
    stats += launch_checked(
        &p.split,
        &mut [
            Arg::In(&q),
            Arg::In(&k),
            Arg::In(&v),
            Arg::input(&host.block_tables),
            Arg::input(&host.context_lens),
            Arg::input(&host.cu_seqlens_q),
            Arg::input(&roles),
            Arg::input(&plan.host.budget_blocks),
            Arg::input(&sel),
            Arg::output(&mut part_out),
            Arg::output(&mut part_m),
            Arg::output(&mut part_l),
            Arg::I32(h as i32),
            Arg::I32(shape.num_kv_heads as i32),
            Arg::I32(host.max_blocks_per_seq as i32),
            Arg::I32(p.blocks_per_split as i32),
            Arg::I32(plan.width as i32),
            Arg::I32(layer as i32),
            Arg::I32(sparse_only as i32),
            Arg::F32(scale),
        ],
    )
    .map_err(emu)?;
    stats += launch_checked(
        &p.combine,
        &mut [
            Arg::Out(&mut out),
            Arg::input(&part_out),
            Arg::input(&part_m),
            Arg::input(&part_l),
            Arg::input(&host.cu_seqlens_q),
            Arg::input(&roles),
            Arg::input(&plan.host.budget_blocks),
            Arg::I32(h as i32),
            Arg::I32(shape.num_kv_heads as i32),
            Arg::I32(d as i32),
            Arg::I32(splits as i32),
            Arg::I32(layer as i32),
            Arg::I32(sparse_only as i32),
        ],
    )
    .map_err(emu)?;
    Ok((tensor_from_bytes(&out, inp.case.dtype, inp.q.dims())?, stats))
}

/// Block selection as kernels/src/cuda/sparse.rs launches it: block_scores into a score scratch,
/// then block_topk writing the new selection (other rows copied).
pub fn emulate_select_blocks(inp: &AttnInputs, plan: &SparseDecodePlan, layer: usize, selection: &Tensor) -> Result<(Tensor, LaunchStats)> {
    let shape = attention_shape(inp);
    let host = &inp.meta.host;
    let p = block_select_plan(&shape, inp.meta.max_context_len, 108).map_err(|e| candle_core::Error::Msg(e.0))?;
    let (q, k) = (bytes_of(&inp.q)?, bytes_of(&inp.cache.key)?);
    let (roles, old) = (roles_bytes(plan), selection.flatten_all()?.to_vec1::<i32>()?);
    let mut scores = vec![0f32; shape.num_seqs * shape.num_kv_heads * host.max_blocks_per_seq];
    let mut stats = launch_checked(
        &p.scores,
        &mut [
            Arg::output(&mut scores),
            Arg::In(&q),
            Arg::In(&k),
            Arg::input(&host.block_tables),
            Arg::input(&host.context_lens),
            Arg::input(&host.cu_seqlens_q),
            Arg::input(&roles),
            Arg::input(&plan.host.budget_blocks),
            Arg::I32(shape.num_heads as i32),
            Arg::I32(shape.num_kv_heads as i32),
            Arg::I32(host.max_blocks_per_seq as i32),
            Arg::I32(p.blocks_per_cta as i32),
            Arg::I32(layer as i32),
        ],
    )
    .map_err(emu)?;
    let mut new = vec![0i32; old.len()];
    stats += launch_checked(
        &p.topk,
        &mut [
            Arg::output(&mut new),
            Arg::input(&old),
            Arg::input(&scores),
            Arg::input(&host.context_lens),
            Arg::input(&roles),
            Arg::input(&plan.host.budget_blocks),
            Arg::input(&plan.host.sink_blocks),
            Arg::input(&plan.host.recent_blocks),
            Arg::I32(shape.num_kv_heads as i32),
            Arg::I32(host.max_blocks_per_seq as i32),
            Arg::I32(plan.width as i32),
            Arg::I32(shape.block_size as i32),
            Arg::I32(layer as i32),
        ],
    )
    .map_err(emu)?;
    Ok((Tensor::from_vec(new, selection.dims(), &Device::Cpu)?, stats))
}
