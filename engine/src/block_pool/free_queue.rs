//! The free-block queue: an intrusive doubly linked list threaded through one `Vec` of links
//! indexed by block id, with two sentinel entries so no operation has an edge-case branch.
//!
//! Owns: the eviction order of free blocks (head = evicted/reused first) and O(1) `popleft`,
//! `append`, `prepend` and `remove` of an arbitrary block.
//!
//! Must not know: ref counts, hashes or why a block is freed; the pool decides where it goes.
//!
//! NOTE(why): a `VecDeque` would make `remove` O(n); the pool removes a free block from the
//! middle of the queue on every prefix hit (`touch`), so that must be O(1).

/// Marks a link that is not in the queue.
const DETACHED: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Link {
    prev: u32,
    next: u32,
}

#[derive(Debug, Clone)]
pub struct FreeQueue {
    /// `links[0..n]` are the blocks, `links[n]` is the head sentinel, `links[n + 1]` the tail.
    links: Vec<Link>,
    len: usize,
}

impl FreeQueue {
    /// A queue holding every block `0..num_blocks` in id order.
    pub fn new_full(num_blocks: usize) -> FreeQueue {
        let head = num_blocks as u32;
        let tail = head + 1;
        let mut links = Vec::with_capacity(num_blocks + 2);
        for i in 0..num_blocks as u32 {
            let prev = if i == 0 { head } else { i - 1 };
            let next = if i + 1 == num_blocks as u32 {
                tail
            } else {
                i + 1
            };
            links.push(Link { prev, next });
        }
        let first = if num_blocks == 0 { tail } else { 0 };
        let last = if num_blocks == 0 {
            head
        } else {
            num_blocks as u32 - 1
        };
        links.push(Link {
            prev: DETACHED,
            next: first,
        });
        links.push(Link {
            prev: last,
            next: DETACHED,
        });
        FreeQueue {
            links,
            len: num_blocks,
        }
    }

    fn head(&self) -> u32 {
        (self.links.len() - 2) as u32
    }

    fn tail(&self) -> u32 {
        (self.links.len() - 1) as u32
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `block` is currently in the queue. Out-of-range ids are never in it.
    pub fn contains(&self, block: u32) -> bool {
        (block as usize) < self.links.len() - 2 && self.links[block as usize].prev != DETACHED
    }

    /// Takes the block at the head (the next one to reuse).
    pub fn popleft(&mut self) -> Option<u32> {
        let first = self.links[self.head() as usize].next;
        if first == self.tail() {
            return None;
        }
        self.unlink(first);
        Some(first)
    }

    /// Removes `block` from anywhere in the queue. Returns false if it was not in the queue.
    pub fn remove(&mut self, block: u32) -> bool {
        if !self.contains(block) {
            return false;
        }
        self.unlink(block);
        true
    }

    /// Puts `block` at the tail (reused last). Returns false if it is already queued or out of
    /// range, leaving the queue unchanged.
    pub fn append(&mut self, block: u32) -> bool {
        let tail = self.tail();
        let before = self.links[tail as usize].prev;
        self.insert_between(block, before, tail)
    }

    /// Puts `block` at the head (reused first). Same failure rules as `append`.
    pub fn prepend(&mut self, block: u32) -> bool {
        let head = self.head();
        let after = self.links[head as usize].next;
        self.insert_between(block, head, after)
    }

    /// Block ids from head to tail.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let tail = self.tail();
        let mut cur = self.links[self.head() as usize].next;
        std::iter::from_fn(move || {
            if cur == tail {
                return None;
            }
            let out = cur;
            cur = self.links[cur as usize].next;
            Some(out)
        })
    }

    fn unlink(&mut self, block: u32) {
        let Link { prev, next } = self.links[block as usize];
        self.links[prev as usize].next = next;
        self.links[next as usize].prev = prev;
        self.links[block as usize] = Link {
            prev: DETACHED,
            next: DETACHED,
        };
        self.len -= 1;
    }

    fn insert_between(&mut self, block: u32, prev: u32, next: u32) -> bool {
        if (block as usize) >= self.links.len() - 2 || self.contains(block) {
            return false;
        }
        self.links[block as usize] = Link { prev, next };
        self.links[prev as usize].next = block;
        self.links[next as usize].prev = block;
        self.len += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(q: &FreeQueue) -> Vec<u32> {
        q.iter().collect()
    }

    #[test]
    fn starts_in_block_id_order() {
        let q = FreeQueue::new_full(4);
        assert_eq!(order(&q), vec![0, 1, 2, 3]);
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn popleft_takes_head_and_empties() {
        let mut q = FreeQueue::new_full(2);
        assert_eq!(q.popleft(), Some(0));
        assert_eq!(q.popleft(), Some(1));
        assert_eq!(q.popleft(), None);
        assert!(q.is_empty());
        assert!(!q.contains(0));
    }

    #[test]
    fn remove_from_middle_keeps_order_of_others() {
        let mut q = FreeQueue::new_full(5);
        assert!(q.remove(2));
        assert_eq!(order(&q), vec![0, 1, 3, 4]);
        assert!(!q.remove(2), "second remove of the same block must fail");
        assert!(q.remove(0) && q.remove(4));
        assert_eq!(order(&q), vec![1, 3]);
    }

    #[test]
    fn append_goes_to_tail_and_prepend_to_head() {
        let mut q = FreeQueue::new_full(4);
        for _ in 0..4 {
            q.popleft();
        }
        assert!(q.append(2));
        assert!(q.append(0));
        assert!(q.prepend(3));
        assert_eq!(order(&q), vec![3, 2, 0]);
        assert_eq!(q.popleft(), Some(3));
    }

    #[test]
    fn double_insert_and_out_of_range_are_rejected() {
        let mut q = FreeQueue::new_full(3);
        assert!(!q.append(1));
        assert!(!q.prepend(1));
        assert!(!q.append(3), "index 3 is the head sentinel, not a block");
        assert!(!q.contains(4));
        assert_eq!(order(&q), vec![0, 1, 2]);
    }

    #[test]
    fn empty_queue_of_zero_blocks_works() {
        let mut q = FreeQueue::new_full(0);
        assert_eq!(q.popleft(), None);
        assert_eq!(order(&q), Vec::<u32>::new());
    }
}
