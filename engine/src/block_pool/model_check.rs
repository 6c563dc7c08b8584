//! Randomized model check: thousands of random add / schedule / append / preempt / finish /
//! disable-caching / lookup / reset sequences run against `KvCacheManager` and against a
//! deliberately naive model of vLLM's semantics (a `VecDeque` free list with O(n) removal, ref
//! counts in a `Vec`, and each cached block remembered by the *full token prefix* it holds rather
//! than by a hash). After every operation the two must agree exactly — returned hits, new block
//! ids, free-queue order, ref counts, block tables, which blocks are hittable — and every pool
//! invariant must hold.
//!
//! Because the model keys cached blocks by their whole prefix, agreement also proves every hit is
//! content-correct: a hit block holds the KV of exactly the queried tokens.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};

/// What a cached block's KV means: the salt and every token up to the end of the block.
type Content = (Option<u8>, Vec<u32>);

#[derive(Debug, Clone)]
struct ModelReq {
    tokens: Vec<u32>,
    salt: Option<u8>,
    table: Vec<BlockId>,
    slotted: usize,
    cached_blocks: usize,
    hashable: bool,
}

#[derive(Debug)]
struct Model {
    bs: usize,
    free: VecDeque<BlockId>,
    refs: Vec<u32>,
    /// For each block: (order it was cached in, content) if hittable.
    content: Vec<Option<(u64, Content)>>,
    next_seq: u64,
    reqs: BTreeMap<RequestId, ModelReq>,
}

impl Model {
    fn new(num_blocks: usize, bs: usize) -> Model {
        Model {
            bs,
            free: (0..num_blocks as BlockId).collect(),
            refs: vec![0; num_blocks],
            content: vec![None; num_blocks],
            next_seq: 0,
            reqs: BTreeMap::new(),
        }
    }

    fn lookup(&self, tokens: &[u32], salt: Option<u8>) -> Vec<BlockId> {
        let max_blocks = tokens.len().saturating_sub(1) / self.bs;
        let mut hit = Vec::new();
        for i in 0..max_blocks {
            let want: Content = (salt, tokens[..(i + 1) * self.bs].to_vec());
            let best = (0..self.content.len())
                .filter_map(|b| match &self.content[b] {
                    Some((seq, c)) if *c == want => Some((*seq, b as BlockId)),
                    _ => None,
                })
                .min();
            match best {
                Some((_, b)) => hit.push(b),
                None => break,
            }
        }
        hit
    }

    fn touch(&mut self, b: BlockId) {
        if self.refs[b as usize] == 0 {
            self.free.retain(|&x| x != b);
        }
        self.refs[b as usize] += 1;
    }

    fn pop(&mut self) -> BlockId {
        let b = self.free.pop_front().expect("model checked capacity");
        self.content[b as usize] = None;
        self.refs[b as usize] = 1;
        b
    }

    fn release(&mut self, b: BlockId) {
        self.refs[b as usize] -= 1;
        if self.refs[b as usize] == 0 {
            if self.content[b as usize].is_some() {
                self.free.push_back(b);
            } else {
                self.free.push_front(b);
            }
        }
    }

    /// Expected result of `allocate_slots(id, n, hit)`: new blocks, or None if it must fail.
    fn allocate(&mut self, id: RequestId, n: usize, hit: &[BlockId]) -> Option<Vec<BlockId>> {
        let bs = self.bs;
        let r = &self.reqs[&id];
        let total = r.slotted + hit.len() * bs + n;
        let new = total.div_ceil(bs).saturating_sub(r.table.len() + hit.len());
        let free_hits = hit.iter().filter(|&&b| self.refs[b as usize] == 0).count();
        if new + free_hits > self.free.len() {
            return None;
        }
        for &b in hit {
            self.touch(b);
        }
        let fresh: Vec<BlockId> = (0..new).map(|_| self.pop()).collect();
        let r = self.reqs.get_mut(&id).expect("known");
        r.table.extend_from_slice(hit);
        r.cached_blocks += hit.len();
        r.table.extend_from_slice(&fresh);
        r.slotted = total;
        if r.hashable {
            let full = total / bs;
            for i in r.cached_blocks..full {
                let b = r.table[i] as usize;
                if self.content[b].is_none() {
                    self.content[b] =
                        Some((self.next_seq, (r.salt, r.tokens[..(i + 1) * bs].to_vec())));
                    self.next_seq += 1;
                }
            }
            r.cached_blocks = r.cached_blocks.max(full);
        }
        Some(fresh)
    }

    fn free_req(&mut self, id: RequestId) {
        let r = self.reqs.get_mut(&id).expect("known");
        let table = std::mem::take(&mut r.table);
        r.slotted = 0;
        r.cached_blocks = 0;
        for &b in table.iter().rev() {
            self.release(b);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Add {
        base: usize,
        tail: Vec<u32>,
        salt: Option<u8>,
    },
    Schedule {
        pick: usize,
        chunk: usize,
    },
    Append {
        pick: usize,
        token: u32,
    },
    Preempt {
        pick: usize,
    },
    Finish {
        pick: usize,
    },
    DisableCaching {
        pick: usize,
    },
    Query {
        base: usize,
        tail: Vec<u32>,
        salt: Option<u8>,
    },
    Reset,
}

/// Prompts share prefixes from a tiny alphabet so hits, partial hits and duplicates are common.
const BASES: [&[u32]; 3] = [
    &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    &[1, 2, 3, 4, 0, 0, 0, 0],
    &[],
];

fn op() -> impl Strategy<Value = Op> {
    let tail = || proptest::collection::vec(0u32..3, 0..10);
    let salt = || proptest::option::weighted(0.2, 0u8..2);
    prop_oneof![
        3 => (0..BASES.len(), tail(), salt()).prop_map(|(base, tail, salt)| Op::Add { base, tail, salt }),
        6 => (any::<usize>(), 1usize..12).prop_map(|(pick, chunk)| Op::Schedule { pick, chunk }),
        3 => (any::<usize>(), 0u32..3).prop_map(|(pick, token)| Op::Append { pick, token }),
        1 => any::<usize>().prop_map(|pick| Op::Preempt { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Finish { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DisableCaching { pick }),
        2 => (0..BASES.len(), tail(), salt()).prop_map(|(base, tail, salt)| Op::Query { base, tail, salt }),
        1 => Just(Op::Reset),
    ]
}

fn extra(salt: Option<u8>) -> ExtraKeys {
    match salt {
        Some(s) => ExtraKeys::with_cache_salt(format!("salt-{s}")),
        None => ExtraKeys::none(),
    }
}

fn prompt(base: usize, tail: &[u32]) -> Vec<u32> {
    let mut p = BASES[base].to_vec();
    p.extend_from_slice(tail);
    p
}

/// Runs one op on both sides; returns an error describing the first disagreement.
fn step(
    m: &mut KvCacheManager,
    model: &mut Model,
    next_id: &mut RequestId,
    op: &Op,
) -> Result<(), String> {
    let ids: Vec<RequestId> = model.reqs.keys().copied().collect();
    let pick = |p: usize| ids.get(p % ids.len().max(1)).copied();
    match op {
        Op::Add { base, tail, salt } => {
            let tokens = prompt(*base, tail);
            if tokens.is_empty() {
                return Ok(());
            }
            let id = *next_id;
            *next_id += 1;
            m.add_request(id, &tokens, extra(*salt))
                .map_err(|e| e.to_string())?;
            let r = ModelReq {
                tokens,
                salt: *salt,
                table: vec![],
                slotted: 0,
                cached_blocks: 0,
                hashable: true,
            };
            model.reqs.insert(id, r);
        }
        Op::Schedule { pick: p, chunk } => {
            let Some(id) = pick(*p) else { return Ok(()) };
            let r = model.reqs[&id].clone();
            let expected_hit = if r.table.is_empty() && r.hashable {
                model.lookup(&r.tokens, r.salt)
            } else {
                vec![]
            };
            let hit = m.computed_blocks(id).map_err(|e| e.to_string())?;
            if hit.blocks != expected_hit {
                return Err(format!("hit {:?}, model {:?}", hit.blocks, expected_hit));
            }
            let n = (*chunk).min(r.tokens.len() - r.slotted - hit.num_tokens);
            if n == 0 && hit.blocks.is_empty() {
                return Ok(());
            }
            let expected = model.allocate(id, n, &expected_hit);
            let got = m.allocate_slots(id, n, &hit);
            match (got, expected) {
                (Ok(g), Some(e)) if g == e => {}
                (Err(KvCacheError::NotEnoughBlocks(_)), None) => {}
                (g, e) => return Err(format!("allocate_slots {g:?}, model {e:?}")),
            }
        }
        Op::Append { pick: p, token } => {
            let Some(id) = pick(*p) else { return Ok(()) };
            m.append_tokens(id, &[*token]).map_err(|e| e.to_string())?;
            model.reqs.get_mut(&id).expect("known").tokens.push(*token);
        }
        Op::Preempt { pick: p } => {
            let Some(id) = pick(*p) else { return Ok(()) };
            m.free(id).map_err(|e| e.to_string())?;
            model.free_req(id);
        }
        Op::Finish { pick: p } => {
            let Some(id) = pick(*p) else { return Ok(()) };
            m.remove_request(id).map_err(|e| e.to_string())?;
            model.free_req(id);
            model.reqs.remove(&id);
        }
        Op::DisableCaching { pick: p } => {
            let Some(id) = pick(*p) else { return Ok(()) };
            m.disable_caching(id).map_err(|e| e.to_string())?;
            let table = model.reqs[&id].table.clone();
            for b in table {
                if model.refs[b as usize] == 1 {
                    model.content[b as usize] = None;
                }
            }
            model.reqs.get_mut(&id).expect("known").hashable = false;
        }
        Op::Query { base, tail, salt } => {
            let tokens = prompt(*base, tail);
            let got = m.find_prefix_hit(&tokens, &extra(*salt));
            let want = model.lookup(&tokens, *salt);
            if got.blocks != want || got.num_tokens != want.len() * model.bs {
                return Err(format!("query hit {got:?}, model {want:?}"));
            }
        }
        Op::Reset => {
            let expect_ok = model.refs.iter().all(|&r| r == 0);
            if m.pool_mut().reset_prefix_cache() != expect_ok {
                return Err(format!(
                    "reset_prefix_cache disagrees (model expects {expect_ok})"
                ));
            }
            if expect_ok {
                model.content.iter_mut().for_each(|c| *c = None);
            }
        }
    }
    compare(m, model)
}

fn compare(m: &KvCacheManager, model: &Model) -> Result<(), String> {
    m.check_invariants()?;
    let pool = m.pool();
    let free: Vec<BlockId> = model.free.iter().copied().collect();
    if pool.free_order() != free {
        return Err(format!(
            "free order {:?}, model {free:?}",
            pool.free_order()
        ));
    }
    for b in 0..model.refs.len() {
        if pool.ref_count(b as BlockId) != Some(model.refs[b]) {
            return Err(format!(
                "block {b}: ref {:?}, model {}",
                pool.ref_count(b as BlockId),
                model.refs[b]
            ));
        }
        if pool.block_hash(b as BlockId).is_some() != model.content[b].is_some() {
            return Err(format!(
                "block {b}: hittable {}, model {}",
                pool.block_hash(b as BlockId).is_some(),
                model.content[b].is_some()
            ));
        }
    }
    if m.num_requests() != model.reqs.len() {
        return Err("request count differs".into());
    }
    for (id, r) in &model.reqs {
        if m.block_table(*id) != Some(r.table.as_slice())
            || m.num_slotted_tokens(*id) != Some(r.slotted)
        {
            return Err(format!(
                "request {id}: table {:?}, model {:?}",
                m.block_table(*id),
                r.table
            ));
        }
    }
    let held = model.refs.iter().filter(|&&r| r > 0).count();
    let want_usage = held as f64 / model.refs.len().max(1) as f64;
    if (m.pool().usage() - want_usage).abs() > 1e-12 {
        return Err(format!("usage {}, model {want_usage}", m.pool().usage()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn manager_agrees_with_naive_model_and_keeps_invariants(
        num_blocks in 1usize..14,
        bs in 1usize..5,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut m = KvCacheManager::new(num_blocks, bs, true).expect("valid sizes");
        let mut model = Model::new(num_blocks, bs);
        let mut next_id: RequestId = 0;
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = step(&mut m, &mut model, &mut next_id, op) {
                prop_assert!(false, "op #{i} {op:?}: {e}");
            }
        }
    }
}
