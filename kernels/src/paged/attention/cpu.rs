//! CPU kernel of `paged_attention`: online-softmax attention over paged K/V, in parallel with rayon.
//!
//! Work is split into items of (sequence, kv head, query tile, range of logical blocks). One
//! item streams its kv head's blocks once for all `group` query heads of every query in its tile
//! (GQA-aware: a K/V block is loaded once per `tile × group` rows). Long prefill chunks are cut
//! into query tiles, and long key ranges are split too, flash-decoding style, so one long decode
//! sequence still keeps every core busy; each item leaves a partial `(max, sum, acc)` per row
//! and [`merge`] combines them. No `[T, context]` score matrix is ever built: an item holds one
//! block's scores per row.
//!
//! Batch invariance: key splits sit at fixed positions (multiples of [`SPLIT_KEYS`]), never
//! chosen from the batch's shape or the thread count, so a query's result is the same bits
//! whether it runs alone, in a big batch, in a long prefill chunk or as a decode row after a
//! prefix-cache hit. That is what makes prefix hits and continuous batching bit-exact.
//!
//! Sparse heads (LycheeDecode, `crate::paged::sparse`): an item walks either a contiguous range
//! of the sequence's logical blocks (full attention, what `paged_attention` does) or a slice of a
//! [`BlockSelection`] row (the logical blocks a sparse head attends), through the same inner loop.
//! A selected head's walk is cut every `SPLIT_KEYS / block_size` *selected* blocks, so a
//! selection listing every block yields the very items, and bits, of the full walk. Since every
//! item holds at most [`SPLIT_KEYS`] keys whatever its head's role, a full head simply becomes
//! more items than a sparse one and rayon spreads them evenly: the CPU analogue of the paper's
//! split-KV load balancing (`num_split_full = ceil(num_split_sparse · total / selected)`).
//!
//! Cache dtypes: an item reads each block's rows through [`KvRows`]: float rows as f32, or
//! int8/fp8 codes as f32 with one scale per row, applied after the q·k dot (keys) and folded into
//! the probabilities (values), so dequantized rows are never built. On x86 the inner step is the
//! vector block step ([`super::block_step`]), which also reads f16/bf16 rows where they are stored
//! in a decode; the portable step below is the reference and the fallback. Each item prefetches
//! its next block while it computes the current one.
//!
//! Must not know: candle tensors or metadata validation (the caller guarantees in-range block
//! ids and consistent lengths; see `AttentionMetadata::new`).

use rayon::prelude::*;

use crate::elem::{KernelFloat, StoredFloats};
use crate::prefetch::prefetch_lines;
use crate::paged::kv_dtype::{KvDtype, SCALE_BYTES};
use crate::paged::quant::decode_row;
use crate::paged::HostMetadata;

/// Queries per tile in a prefill chunk: large enough that a K/V block in L1 serves many rows,
/// small enough that a long chunk yields several items.
const QUERY_TILE: usize = 32;
/// Keys per split (a multiple of every supported block size). Large enough that rayon's per-task
/// cost and the merge are small next to the work, small enough that a 2K-context decode yields
/// several items per kv head.
pub(crate) const SPLIT_KEYS: usize = 512;

pub(crate) struct Geometry {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl Geometry {
    fn group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WorkItem {
    seq: usize,
    kv_head: usize,
    /// Query range within the sequence's chunk.
    q_start: usize,
    q_end: usize,
    /// Range of the walked list: logical blocks (indices into the sequence's block table) or,
    /// when `selected`, entries of the (seq, kv head) row of the [`BlockSelection`].
    block_start: usize,
    block_end: usize,
    selected: bool,
}

/// The blocks sparse heads attend instead of the whole context: per (sequence, KV head) either
/// the full context or the first `n` entries of its row of `indices`. The caller guarantees those
/// entries are distinct, ascending logical blocks inside the sequence's context, and selects
/// only for single-query (decode) rows, whose every valid key is visible.
pub(crate) struct BlockSelection<'a> {
    /// `[S, num_kv_heads, width]` logical block indices.
    pub indices: &'a [i32],
    pub width: usize,
    /// `[S * num_kv_heads]`: `Some(n)` walks the row's first `n` entries, `None` every block.
    pub walk: Vec<Option<usize>>,
}

impl BlockSelection<'_> {
    fn row(&self, seq: usize, kv_head: usize, num_kv_heads: usize) -> &[i32] {
        let start = (seq * num_kv_heads + kv_head) * self.width;
        &self.indices[start..start + self.width]
    }
}

/// The logical blocks one item visits, in order.
enum BlockWalk<'a> {
    Range(std::ops::Range<usize>),
    Selected(std::slice::Iter<'a, i32>),
}

impl Iterator for BlockWalk<'_> {
    type Item = usize;

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        match self {
            BlockWalk::Range(range) => range.next(),
            BlockWalk::Selected(entries) => entries.next().map(|&b| b as usize),
        }
    }
}

/// Row state of an item: rows are `(query in tile) × (head in group)`, row-major.
struct Partial {
    item: WorkItem,
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

/// Where an item reads one KV head's rows of one cache block: a float cache (converted to f32,
/// or borrowed as-is when it is f32) or quantized rows (codes as f32 plus one scale per row).
/// Every method is `inline(always)` so the conversion loops compile into the item kernel's
/// feature level (AVX2, AVX-512) rather than the crate's baseline.
pub(crate) trait KvRows: Sync {
    /// Rows `[0, n)` of slab `slab` (= physical block · num_kv_heads + kv head) as f32; for a
    /// quantized cache also writes their scales into `scales[..n]` and returns true.
    fn rows<'a>(&'a self, slab: usize, n: usize, scratch: &'a mut Vec<f32>, scales: &mut [f32]) -> (&'a [f32], bool);
    /// Asks the CPU to start loading slab `slab`'s rows ([`crate::prefetch`]): without it a long
    /// decode waits on memory at the start of every block (f16 then decoded no faster than f32).
    fn prefetch(&self, slab: usize);
    /// Rows `[0, n)` of slab `slab` as stored, when they are floats (the vector block step
    /// widens them while it loads: no converted copy); None for quantized rows.
    fn stored(&self, slab: usize, n: usize) -> Option<StoredFloats<'_>>;
}

/// A float cache `[num_blocks, num_kv_heads, block_size, head_dim]`.
pub(crate) struct FloatRows<'c, C> {
    pub data: &'c [C],
    pub head_dim: usize,
    pub block_size: usize,
}

impl<C: KernelFloat> KvRows for FloatRows<'_, C> {
    #[inline(always)]
    fn rows<'a>(&'a self, slab: usize, n: usize, scratch: &'a mut Vec<f32>, _scales: &mut [f32]) -> (&'a [f32], bool) {
        let base = slab * self.block_size * self.head_dim;
        (C::as_f32(&self.data[base..base + n * self.head_dim], scratch), false)
    }

    #[inline(always)]
    fn stored(&self, slab: usize, n: usize) -> Option<StoredFloats<'_>> {
        let base = slab * self.block_size * self.head_dim;
        Some(C::as_stored(&self.data[base..base + n * self.head_dim]))
    }

    #[inline(always)]
    fn prefetch(&self, slab: usize) {
        let len = self.block_size * self.head_dim;
        prefetch_lines(&self.data[slab * len..(slab + 1) * len]);
    }
}

/// A quantized cache: rows of `head_dim` codes then the f32 scale ([`crate::paged::quant`]).
pub(crate) struct QuantRows<'c> {
    pub data: &'c [u8],
    pub kind: KvDtype,
    pub head_dim: usize,
    pub block_size: usize,
}

impl KvRows for QuantRows<'_> {
    #[inline(always)]
    fn rows<'a>(&'a self, slab: usize, n: usize, scratch: &'a mut Vec<f32>, scales: &mut [f32]) -> (&'a [f32], bool) {
        let (hd, row) = (self.head_dim, self.head_dim + SCALE_BYTES);
        scratch.resize(self.block_size * hd, 0.0);
        let base = slab * self.block_size * row;
        let rows = self.data[base..base + n * row].chunks_exact(row);
        for ((bytes, out), scale) in rows.zip(scratch.chunks_exact_mut(hd)).zip(scales.iter_mut()) {
            *scale = decode_row(self.kind, bytes, out);
        }
        (&scratch[..], true)
    }

    #[inline(always)]
    fn stored(&self, _slab: usize, _n: usize) -> Option<StoredFloats<'_>> {
        None
    }

    #[inline(always)]
    fn prefetch(&self, slab: usize) {
        let len = self.block_size * (self.head_dim + SCALE_BYTES);
        prefetch_lines(&self.data[slab * len..(slab + 1) * len]);
    }
}

/// Output `[T, num_heads, head_dim]` in f32. `q` is `[T, num_heads, head_dim]`; `key`/`value` are
/// the whole cache, read through [`KvRows`].
pub(super) fn attention<K: KvRows>(
    q: &[f32],
    key: &K,
    value: &K,
    host: &HostMetadata,
    geometry: &Geometry,
    scale: f32,
) -> Vec<f32> {
    let level = Level::detect();
    attention_at(level, q, key, value, host, geometry, scale)
}

/// [`attention`] at a chosen instruction-set level (tests compare the levels).
pub(super) fn attention_at<K: KvRows>(
    level: Level,
    q: &[f32],
    key: &K,
    value: &K,
    host: &HostMetadata,
    geometry: &Geometry,
    scale: f32,
) -> Vec<f32> {
    run(level, &plan(host, geometry), q, key, value, host, geometry, scale, None)
}

/// [`attention_at`] where the heads `selection` walks attend only their selected blocks. A head
/// that selects no block leaves zeros.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_selected_at<K: KvRows>(
    level: Level,
    q: &[f32],
    key: &K,
    value: &K,
    host: &HostMetadata,
    geometry: &Geometry,
    scale: f32,
    selection: &BlockSelection,
) -> Vec<f32> {
    let items = plan_walks(host, geometry, Some(selection));
    run(level, &items, q, key, value, host, geometry, scale, Some(selection))
}

#[allow(clippy::too_many_arguments)]
fn run<K: KvRows>(
    level: Level,
    items: &[WorkItem],
    q: &[f32],
    key: &K,
    value: &K,
    host: &HostMetadata,
    geometry: &Geometry,
    scale: f32,
    selection: Option<&BlockSelection>,
) -> Vec<f32> {
    let partials: Vec<Partial> = items
        .par_iter()
        .map(|item| {
            let walk = match (item.selected, selection) {
                (true, Some(sel)) => {
                    let row = sel.row(item.seq, item.kv_head, geometry.num_kv_heads);
                    BlockWalk::Selected(row[item.block_start..item.block_end].iter())
                }
                _ => BlockWalk::Range(item.block_start..item.block_end),
            };
            run_item_dispatch(level, item, walk, q, key, value, host, geometry, scale)
        })
        .collect();
    merge(&partials, host, geometry, q.len())
}

fn plan(host: &HostMetadata, g: &Geometry) -> Vec<WorkItem> {
    plan_walks(host, g, None)
}

fn plan_walks(host: &HostMetadata, g: &Geometry, selection: Option<&BlockSelection>) -> Vec<WorkItem> {
    // (seq, q_start, q_end, blocks the tile's last query needs)
    let mut tiles = Vec::new();
    for seq in 0..host.context_lens.len() {
        let q_len = host.query_range(seq).len();
        let ctx = host.context_lens[seq] as usize;
        for q_start in (0..q_len).step_by(QUERY_TILE) {
            let q_end = (q_start + QUERY_TILE).min(q_len);
            let keys = ctx - q_len + q_end;
            tiles.push((seq, q_start, q_end, keys.div_ceil(g.block_size)));
        }
    }
    let per_split = (SPLIT_KEYS / g.block_size).max(1);
    let mut items = Vec::new();
    for (seq, q_start, q_end, blocks) in tiles {
        for kv_head in 0..g.num_kv_heads {
            // Full heads split their logical blocks, sparse heads their selected ones, at the
            // same stride: a selection of every block splits exactly like the full walk.
            let walked = selection.and_then(|sel| sel.walk[seq * g.num_kv_heads + kv_head]);
            let (len, selected) = walked.map_or((blocks, false), |n| (n, true));
            for block_start in (0..len).step_by(per_split) {
                let block_end = (block_start + per_split).min(len);
                items.push(WorkItem { seq, kv_head, q_start, q_end, block_start, block_end, selected });
            }
        }
    }
    items
}

/// How many work items the planner makes for this batch on this machine (tests check splitting).
#[cfg(test)]
pub(super) fn plan_len(host: &HostMetadata, g: &Geometry) -> usize {
    plan(host, g).len()
}

/// The instruction-set level the item kernel runs at. The block step is the same 8-lane
/// AVX2+FMA+F16C instructions at both x86 levels ([`super::block_step`]), so every cache dtype
/// gives the same bits on an AVX2 and an AVX-512 machine; AVX-512 only adds registers (a query's
/// GQA rows run together) and widens the loops LLVM vectorises (dequantizing int8/fp8 codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Portable,
    Avx2,
    Avx512,
}

impl Level {
    pub(crate) fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                    return Level::Avx512;
                }
                return Level::Avx2;
            }
        }
        Level::Portable
    }

    /// The levels this CPU can run, lowest first.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Level> {
        let top = Level::detect();
        [Level::Portable, Level::Avx2, Level::Avx512].into_iter().filter(|l| *l as u8 <= top as u8).collect()
    }
}

/// The kernel compiled three times: portable (the crate's baseline target, SSE2 on x86-64), with
/// AVX2+FMA, and with AVX-512 (the AVX2 inner loops, wider conversions), picked at run time.
#[allow(clippy::too_many_arguments)]
fn run_item_dispatch<K: KvRows>(
    level: Level,
    item: &WorkItem,
    walk: BlockWalk,
    q: &[f32],
    key: &K,
    value: &K,
    host: &HostMetadata,
    g: &Geometry,
    scale: f32,
) -> Partial {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: `level` comes from `Level::detect` (or a test's `Level::available`), which
        // checked every feature the function is compiled for on this CPU.
        Level::Avx512 => return unsafe { run_item_avx512(item, walk, q, key, value, host, g, scale) },
        // SAFETY: as above.
        Level::Avx2 => return unsafe { run_item_avx2(item, walk, q, key, value, host, g, scale) },
        Level::Portable => {}
    }
    let _ = level;
    run_item::<K, false, false>(item, walk, q, key, value, host, g, scale)
}

/// An x86 entry point: [`run_item`] with the AVX2 inner loops, compiled for `$features`.
macro_rules! x86_entry {
    ($name:ident, $features:literal, $wide:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<K: KvRows>(
            item: &WorkItem,
            walk: BlockWalk,
            q: &[f32],
            key: &K,
            value: &K,
            host: &HostMetadata,
            g: &Geometry,
            scale: f32,
        ) -> Partial {
            run_item::<K, true, $wide>(item, walk, q, key, value, host, g, scale)
        }
    };
}
x86_entry!(run_item_avx2, "avx2,fma,f16c", false);
// With AVX-512VL the 8-lane loops get ymm16–31: enough registers to run a query's group of rows
// together (WIDE), same instructions, same bits.
x86_entry!(run_item_avx512, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", true);

/// `AVX`: use the AVX2+FMA inner loops; only the x86 entry points (entered after detection) set it.
/// `WIDE`: run a query's group of rows together in the vector block step (AVX-512VL's registers).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn run_item<K: KvRows, const AVX: bool, const WIDE: bool>(
    item: &WorkItem,
    walk: BlockWalk,
    q: &[f32],
    key: &K,
    value: &K,
    host: &HostMetadata,
    g: &Geometry,
    scale: f32,
) -> Partial {
    let (group, hd, bs) = (g.group(), g.head_dim, g.block_size);
    let n_queries = item.q_end - item.q_start;
    let rows = n_queries * group;
    let token0 = host.query_range(item.seq).start + item.q_start;
    let q_len = host.query_range(item.seq).len();
    let ctx = host.context_lens[item.seq] as usize;

    // The group's heads of one token are adjacent in q, so each query contributes one run.
    let mut q_rows = Vec::with_capacity(rows * hd);
    for t in token0..token0 + n_queries {
        let start = (t * g.num_heads + item.kv_head * group) * hd;
        q_rows.extend(q[start..start + group * hd].iter().map(|&x| x * scale));
    }

    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let mut acc = vec![0f32; rows * hd];
    // The AVX2 block step runs a query's group of rows together and reduces keys eight at a
    // time: scratch for every row rounded up, and a zero row for the missing keys of a group.
    let mut scores = vec![0f32; group * bs.div_ceil(8) * 8];
    let vector_block = AVX && hd % 8 == 0;
    let zero_row = if vector_block { vec![0f32; hd] } else { Vec::new() };
    let (mut k_scratch, mut v_scratch) = (Vec::new(), Vec::new());
    // Quantized caches: per-row scales of the current block, and probabilities times V scales.
    let (mut k_scales, mut v_scales, mut weights) = (vec![0f32; bs], vec![0f32; bs], vec![0f32; bs]);
    let table = host.block_table(item.seq);
    let last_key = ctx - q_len + item.q_end; // keys the tile's last query sees
    let slab_of = |logical: usize| table[logical] as usize * g.num_kv_heads + item.kv_head;
    let mut walk = walk.peekable();
    while let Some(logical) = walk.next() {
        let slab = slab_of(logical);
        if let Some(&next) = walk.peek() {
            key.prefetch(slab_of(next));
            value.prefetch(slab_of(next));
        }
        let first_key = logical * bs;
        // Rows past every query's view may hold another sequence's leftovers: never decoded.
        let rows_needed = (last_key - first_key).min(bs);
        // The vector block step reads float rows where they are stored when one query reads
        // the block (decode: converting into scratch would be a second pass over memory);
        // a prefill tile, which reads each block once per query, converts f16/bf16 once into
        // scratch instead. f32 rows are always read in place.
        let stored = if vector_block { key.stored(slab, rows_needed).zip(value.stored(slab, rows_needed)) } else { None };
        let stored = stored.filter(|(k, _)| n_queries == 1 || matches!(k, StoredFloats::F32(_)));
        let ((k, k_quant), (v, v_quant)) = match stored {
            Some(_) => ((&[][..], false), (&[][..], false)),
            None => (
                key.rows(slab, rows_needed, &mut k_scratch, &mut k_scales),
                value.rows(slab, rows_needed, &mut v_scratch, &mut v_scales),
            ),
        };
        let scales = Scales {
            key: k_quant.then_some(&k_scales[..]),
            value: v_quant.then_some(&v_scales[..]),
        };
        for j in 0..n_queries {
            // Keys this query may see: [0, ctx - q_len + j_in_chunk].
            let visible = ctx - q_len + item.q_start + j + 1;
            if visible <= first_key {
                continue;
            }
            let n = (visible - first_key).min(bs);
            #[cfg(target_arch = "x86_64")]
            if vector_block {
                let (r0, r1) = (j * group, (j + 1) * group);
                let (k_rows, v_rows) = stored.unwrap_or((StoredFloats::F32(k), StoredFloats::F32(v)));
                // SAFETY: `vector_block` implies AVX, true only inside the x86 entry points,
                // entered after detecting avx2, fma and f16c (and avx512vl when WIDE).
                let step = if WIDE { super::block_step::avx512::attend_rows } else { super::block_step::avx2::attend_rows };
                unsafe {
                    step(
                        &q_rows[r0 * hd..r1 * hd],
                        k_rows,
                        v_rows,
                        n,
                        scales.key,
                        scales.value,
                        &zero_row,
                        &mut scores,
                        &mut max[r0..r1],
                        &mut sum[r0..r1],
                        &mut acc[r0 * hd..r1 * hd],
                    )
                };
                continue;
            }
            for h in 0..group {
                let r = j * group + h;
                attend_block::<AVX>(
                    &q_rows[r * hd..(r + 1) * hd],
                    &k[..n * hd],
                    &v[..n * hd],
                    &scales,
                    &mut scores[..n],
                    &mut weights[..n],
                    &mut max[r],
                    &mut sum[r],
                    &mut acc[r * hd..(r + 1) * hd],
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (vector_block, zero_row);
    Partial { item: *item, max, sum, acc }
}

/// Per-row scales of a quantized block (None: a float cache, values as stored).
struct Scales<'a> {
    key: Option<&'a [f32]>,
    value: Option<&'a [f32]>,
}

/// One online-softmax step of one row over `n` keys (`k`, `v`: `n × head_dim`): the row's running
/// max, sum and unnormalised output are rescaled once per block, not once per key. With a
/// quantized cache the key scale multiplies the q·codes dot, and the value scale is folded into
/// each probability before the weighted sum (the softmax sum itself uses the plain probability).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_block<const AVX: bool>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scales: &Scales,
    scores: &mut [f32],
    weights: &mut [f32],
    max: &mut f32,
    sum: &mut f32,
    acc: &mut [f32],
) {
    let hd = q.len();
    let mut block_max = f32::NEG_INFINITY;
    for (s, k_row) in scores.iter_mut().zip(k.chunks_exact(hd)) {
        *s = if AVX {
            // SAFETY: AVX is only true inside the x86 entry points, entered after detecting avx2+fma.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                super::simd::dot_avx2(q, k_row)
            }
            #[cfg(not(target_arch = "x86_64"))]
            dot(q, k_row)
        } else {
            dot(q, k_row)
        };
    }
    if let Some(ks) = scales.key {
        scores.iter_mut().zip(ks).for_each(|(s, &c)| *s *= c);
    }
    for &s in scores.iter() {
        block_max = block_max.max(s);
    }
    let new_max = max.max(block_max);
    let mut block_sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - new_max).exp();
        block_sum += *s;
    }
    let correction = (*max - new_max).exp(); // 0 on the first block (max = -inf)
    if correction != 1.0 {
        acc.iter_mut().for_each(|a| *a *= correction);
    }
    *sum = *sum * correction + block_sum;
    *max = new_max;
    let probs: &[f32] = match scales.value {
        Some(vs) => {
            weights.iter_mut().zip(scores.iter()).zip(vs).for_each(|((w, &p), &c)| *w = p * c);
            weights
        }
        None => scores,
    };
    if AVX {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            super::simd::weighted_sum_avx2(acc, probs, v)
        }
        #[cfg(not(target_arch = "x86_64"))]
        weighted_sum(acc, probs, v)
    } else {
        weighted_sum(acc, probs, v)
    }
}

/// `dot` with the AVX2+FMA loop when this CPU has it (for callers outside the item kernel,
/// which pick once per item instead).
#[inline]
pub(super) fn dot_dispatch(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected on this CPU.
        return unsafe { super::simd::dot_avx2(a, b) };
    }
    dot(a, b)
}

/// `dot` at an instruction-set level (the AVX2+FMA loop at both x86 levels, as in the item kernel).
#[inline]
pub(crate) fn dot_at(level: Level, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level != Level::Portable {
        // SAFETY: `level` comes from `Level::detect` (or `Level::available`), which found avx2+fma.
        return unsafe { super::simd::dot_avx2(a, b) };
    }
    let _ = level;
    dot(a, b)
}

/// Dot product with 16 independent accumulators (two AVX or four SSE registers), written with
/// zipped iterators so there are no bounds checks and LLVM emits SIMD without reassociation flags.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0f32; LANES];
    let (a16, b16) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a16.remainder().iter().zip(b16.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a16.zip(b16) {
        // Fixed-size arrays let LLVM see 16 lanes and load them as full vectors.
        let (Ok(x), Ok(y)) = (<&[f32; LANES]>::try_from(x), <&[f32; LANES]>::try_from(y)) else {
            continue; // unreachable: chunks_exact yields LANES-long chunks
        };
        for i in 0..LANES {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0] + tail
}

/// `acc += Σ_i probs[i] · v_i` over the block's rows `v_i` (`v`: `probs.len() × acc.len()`).
#[inline(always)]
fn weighted_sum(acc: &mut [f32], probs: &[f32], v: &[f32]) {
    for (&p, v_row) in probs.iter().zip(v.chunks_exact(acc.len())) {
        axpy(acc, p, v_row);
    }
}

#[inline(always)]
fn axpy(acc: &mut [f32], p: f32, v: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a += p * x;
    }
}

/// Combines the items' partial rows into the normalised output `[T, num_heads, head_dim]`.
fn merge(partials: &[Partial], host: &HostMetadata, g: &Geometry, len: usize) -> Vec<f32> {
    let (group, hd) = (g.group(), g.head_dim);
    let rows_total = len / hd;
    let mut max = vec![f32::NEG_INFINITY; rows_total];
    let mut sum = vec![0f32; rows_total];
    let mut out = vec![0f32; len];
    for p in partials {
        let token0 = host.query_range(p.item.seq).start + p.item.q_start;
        for (r, (&m, &s)) in p.max.iter().zip(&p.sum).enumerate() {
            if s == 0.0 {
                continue; // this split held no key the row may see
            }
            let (j, h) = (r / group, r % group);
            let dst = (token0 + j) * g.num_heads + p.item.kv_head * group + h;
            let src_acc = &p.acc[r * hd..(r + 1) * hd];
            let dst_acc = &mut out[dst * hd..(dst + 1) * hd];
            if sum[dst] == 0.0 {
                dst_acc.copy_from_slice(src_acc);
                max[dst] = m;
                sum[dst] = s;
                continue;
            }
            let new_max = max[dst].max(m);
            let (a, b) = ((max[dst] - new_max).exp(), (m - new_max).exp());
            for (d, &x) in dst_acc.iter_mut().zip(src_acc) {
                *d = *d * a + x * b;
            }
            sum[dst] = sum[dst] * a + s * b;
            max[dst] = new_max;
        }
    }
    for (row, &s) in out.chunks_exact_mut(hd).zip(&sum) {
        if s == 0.0 {
            continue; // a sparse head that selected nothing: zeros, not 0/0
        }
        let inv = 1.0 / s;
        row.iter_mut().for_each(|x| *x *= inv);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(query_lens: &[usize], context_lens: &[usize], block_size: usize) -> HostMetadata {
        let mut cu = vec![0u32];
        for q in query_lens {
            cu.push(cu.last().copied().unwrap_or(0) + *q as u32);
        }
        let max_blocks = context_lens.iter().map(|c| c.div_ceil(block_size)).max().unwrap_or(0);
        HostMetadata {
            slot_mapping: vec![-1; cu[query_lens.len()] as usize],
            positions: vec![0; cu[query_lens.len()] as usize],
            block_tables: vec![0; query_lens.len() * max_blocks],
            max_blocks_per_seq: max_blocks,
            cu_seqlens_q: cu,
            context_lens: context_lens.iter().map(|&c| c as u32).collect(),
            block_size,
            max_block_id: 0,
            max_slot: None,
        }
    }

    fn geometry(num_kv_heads: usize) -> Geometry {
        Geometry { num_heads: num_kv_heads * 3, num_kv_heads, head_dim: 8, block_size: 16 }
    }

    #[test]
    fn plan_covers_every_query_and_needed_block_exactly_once() {
        let host = host(&[1, 70, 5], &[2048, 100, 5], 16);
        let g = geometry(3);
        let items = plan(&host, &g);
        for seq in 0..3 {
            let q_len = host.query_range(seq).len();
            let ctx = host.context_lens[seq] as usize;
            for kv_head in 0..3 {
                for j in 0..q_len {
                    let needed = (ctx - q_len + j + 1).div_ceil(16);
                    for block in 0..needed {
                        let covering = items
                            .iter()
                            .filter(|it| it.seq == seq && it.kv_head == kv_head)
                            .filter(|it| (it.q_start..it.q_end).contains(&j))
                            .filter(|it| (it.block_start..it.block_end).contains(&block))
                            .count();
                        assert_eq!(covering, 1, "seq {seq} head {kv_head} query {j} block {block}");
                    }
                }
            }
        }
    }

    #[test]
    fn one_long_decode_is_split_across_threads_but_short_ones_are_not() {
        let g = geometry(3);
        let long = plan(&host(&[1], &[2048], 16), &g);
        assert_eq!(long.len(), 3 * 2048 / SPLIT_KEYS, "one item per kv head and 512-key split");
        let short = plan(&host(&[1], &[100], 16), &g);
        assert_eq!(short.len(), 3, "one item per kv head when the context is short");
    }

    #[test]
    fn split_boundaries_do_not_depend_on_the_rest_of_the_batch() {
        // The same 1500-key decode row, alone and next to a long prefill chunk: its items cover
        // the same block ranges, so its partials (and their merge order) are identical.
        let g = geometry(1);
        let ranges = |items: Vec<WorkItem>, seq: usize| -> Vec<(usize, usize)> {
            items.into_iter().filter(|i| i.seq == seq).map(|i| (i.block_start, i.block_end)).collect()
        };
        let alone = ranges(plan(&host(&[1], &[1500], 16), &g), 0);
        let batched = ranges(plan(&host(&[300, 1], &[900, 1500], 16), &g), 1);
        assert_eq!(alone, batched);
    }

    /// A selection for `host` where every (seq, kv head) walks `rows[seq]` (one row per sequence,
    /// shared by its heads), or attends fully when `rows[seq]` is None.
    fn selection(rows: &[Option<Vec<i32>>], num_kv_heads: usize, width: usize) -> (Vec<i32>, Vec<Option<usize>>) {
        let mut indices = Vec::new();
        let mut walk = Vec::new();
        for row in rows {
            for _ in 0..num_kv_heads {
                let entries = row.clone().unwrap_or_default();
                walk.push(row.as_ref().map(|r| r.len()));
                indices.extend(entries.iter().copied().chain(std::iter::repeat(-1)).take(width));
            }
        }
        (indices, walk)
    }

    #[test]
    fn a_selection_of_every_block_plans_the_items_of_the_full_walk() {
        // Decode rows of 2048 and 1500 keys (128 and 94 blocks) beside a prefill chunk.
        let host = host(&[1, 70, 1], &[2048, 100, 1500], 16);
        let g = geometry(3);
        let rows = [Some((0..128).collect::<Vec<i32>>()), None, Some((0..94).collect())];
        let (indices, walk) = selection(&rows, 3, 128);
        let sel = BlockSelection { indices: &indices, width: 128, walk };
        let strip = |items: Vec<WorkItem>| -> Vec<WorkItem> { items.into_iter().map(|i| WorkItem { selected: false, ..i }).collect() };
        let sparse = plan_walks(&host, &g, Some(&sel));
        assert!(sparse.iter().filter(|i| i.seq != 1).all(|i| i.selected));
        assert_eq!(strip(sparse), strip(plan(&host, &g)));
    }

    #[test]
    fn every_item_holds_at_most_split_keys_whatever_its_heads_role() {
        // One 8K-key decode row: full heads split into 16 items, a 64-block selection into 2.
        let host = host(&[1], &[8192], 16);
        let g = geometry(3);
        let rows = [Some((0..64).map(|b| b * 8).collect::<Vec<i32>>())];
        let (indices, mut walk) = selection(&rows, 3, 64);
        walk[0] = None; // kv head 0 attends fully
        let sel = BlockSelection { indices: &indices, width: 64, walk };
        let items = plan_walks(&host, &g, Some(&sel));
        let per_head = |h: usize| items.iter().filter(|i| i.kv_head == h).count();
        assert_eq!((per_head(0), per_head(1), per_head(2)), (16, 2, 2));
        assert!(items.iter().all(|i| (i.block_end - i.block_start) * 16 <= SPLIT_KEYS));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_dot_axpy_and_weighted_sum_match_portable_ones_for_all_tail_lengths() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return; // nothing to compare on this CPU: the portable path is the only one used
        }
        for n in [1usize, 7, 8, 9, 16, 23, 40, 64, 129] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            // SAFETY: features detected above.
            let fast = unsafe { super::super::simd::dot_avx2(&a, &b) };
            assert!((fast - dot(&a, &b)).abs() < 1e-4, "dot n={n}");
            let (mut x, mut y) = (a.clone(), a.clone());
            // SAFETY: features detected above.
            unsafe { super::super::simd::axpy_avx2(&mut x, 0.5, &b) };
            axpy(&mut y, 0.5, &b);
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() < 1e-6, "axpy n={n}");
            }
            // 3 rows of width n, weighted into an accumulator that starts non-zero.
            let probs = [0.25f32, -1.5, 2.0];
            let rows: Vec<f32> = (0..3 * n).map(|i| (i as f32 * 0.07).sin()).collect();
            let (mut x, mut y) = (b.clone(), b.clone());
            // SAFETY: features detected above.
            unsafe { super::super::simd::weighted_sum_avx2(&mut x, &probs, &rows) };
            weighted_sum(&mut y, &probs, &rows);
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() < 1e-5, "weighted_sum n={n}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_block_step_matches_the_portable_one_for_every_partial_group() {
        if Level::detect() == Level::Portable {
            return;
        }
        let hd = 16;
        for n in 1..=32usize {
            for quantized in [false, true] {
                let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.41).sin()).collect();
                let k: Vec<f32> = (0..n * hd).map(|i| (i as f32 * 0.23).cos() * 3.0).collect();
                let v: Vec<f32> = (0..n * hd).map(|i| (i as f32 * 0.17).sin()).collect();
                let ks: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.01).collect();
                let vs: Vec<f32> = (0..n).map(|i| 1.5 - i as f32 * 0.02).collect();
                let (key, value) = if quantized { (Some(&ks[..]), Some(&vs[..])) } else { (None, None) };
                // A row that already saw a block: the step must rescale it.
                let (mut max_a, mut sum_a, mut acc_a) = (0.7f32, 2.0f32, vec![0.25f32; hd]);
                let (mut max_b, mut sum_b, mut acc_b) = (max_a, sum_a, acc_a.clone());
                let (mut probs, zero) = (vec![0f32; n.div_ceil(8) * 8], vec![0f32; hd]);
                // SAFETY: features detected above.
                unsafe {
                    super::super::block_step::avx2::attend_rows(
                        &q,
                        StoredFloats::F32(&k),
                        StoredFloats::F32(&v),
                        n,
                        key,
                        value,
                        &zero,
                        &mut probs,
                        std::slice::from_mut(&mut max_a),
                        std::slice::from_mut(&mut sum_a),
                        &mut acc_a,
                    )
                };
                let (mut scores, mut weights) = (vec![0f32; n], vec![0f32; n]);
                let scales = Scales { key, value };
                attend_block::<false>(
                    &q, &k, &v, &scales, &mut scores, &mut weights, &mut max_b, &mut sum_b, &mut acc_b,
                );
                assert!((max_a - max_b).abs() <= 1e-5 * max_b.abs(), "n={n}: max {max_a} vs {max_b}");
                assert!((sum_a - sum_b).abs() <= 1e-5 * sum_b, "n={n}: sum {sum_a} vs {sum_b}");
                for (a, b) in acc_a.iter().zip(&acc_b) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "n={n}: acc {a} vs {b}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn half_rows_read_as_stored_give_the_bits_of_rows_converted_first() {
        if Level::detect() == Level::Portable {
            return;
        }
        use half::{bf16, f16};
        let (hd, n) = (24, 13);
        let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.31).cos()).collect();
        let k: Vec<f32> = (0..n * hd).map(|i| (i as f32 * 0.19).sin() * 2.0).collect();
        let v: Vec<f32> = (0..n * hd).map(|i| (i as f32 * 0.07).cos()).collect();
        let step = |k: StoredFloats, v: StoredFloats| {
            let (mut max, mut sum, mut acc) = (f32::NEG_INFINITY, 0f32, vec![0f32; hd]);
            let (mut probs, zero) = (vec![0f32; 16], vec![0f32; hd]);
            // SAFETY: the level check above found avx2, fma and f16c.
            unsafe {
                super::super::block_step::avx2::attend_rows(
                    &q,
                    k,
                    v,
                    n,
                    None,
                    None,
                    &zero,
                    &mut probs,
                    std::slice::from_mut(&mut max),
                    std::slice::from_mut(&mut sum),
                    &mut acc,
                )
            };
            (max.to_bits(), sum.to_bits(), acc.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        };
        let (kh, vh): (Vec<f16>, Vec<f16>) = (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
        let widened = |h: &[f16]| h.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
        let (kw, vw) = (widened(&kh), widened(&vh));
        assert_eq!(step(StoredFloats::F16(&kh), StoredFloats::F16(&vh)), step(StoredFloats::F32(&kw), StoredFloats::F32(&vw)));
        let (kb, vb): (Vec<bf16>, Vec<bf16>) = (k.iter().map(|&x| bf16::from_f32(x)).collect(), v.iter().map(|&x| bf16::from_f32(x)).collect());
        let (kw, vw): (Vec<f32>, Vec<f32>) = (kb.iter().map(|x| x.to_f32()).collect(), vb.iter().map(|x| x.to_f32()).collect());
        assert_eq!(step(StoredFloats::Bf16(&kb), StoredFloats::Bf16(&vb)), step(StoredFloats::F32(&kw), StoredFloats::F32(&vw)));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_ulp_of_libm_over_the_softmax_range() {
        if Level::detect() == Level::Portable {
            return;
        }
        use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
        let mut worst = 0u32;
        for i in 0..100_000 {
            let base = -87.0 + 87.0 * i as f32 / 100_000.0;
            let x: [f32; 8] = std::array::from_fn(|l| (base + l as f32 * 1e-4).min(0.0));
            let mut y = [0f32; 8];
            // SAFETY: features detected above.
            unsafe { _mm256_storeu_ps(y.as_mut_ptr(), super::super::block_step::avx2::exp8(_mm256_loadu_ps(x.as_ptr()))) };
            for (xi, yi) in x.iter().zip(y) {
                worst = worst.max(xi.exp().to_bits().abs_diff(yi.to_bits()));
            }
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        let mut one = [0f32; 8];
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(one.as_mut_ptr(), super::super::block_step::avx2::exp8(_mm256_loadu_ps([0f32; 8].as_ptr()))) };
        assert_eq!(one, [1.0; 8], "the row's max must weigh exactly 1");
    }

    #[test]
    fn dot_matches_plain_sum_for_odd_lengths() {
        let a: Vec<f32> = (0..13).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..13).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
    }
}
