//! An indexed binary min-heap of key slots: push, remove any slot, change a slot's priority,
//! peek the minimum, all O(log n). The side heap of [`super::ready::Ready`] (keys that enter
//! out of order).

/// Position marker for "not in the heap".
const ABSENT: u32 = u32::MAX;

/// Slots ordered by `(priority, slot)`; ties go to the lower slot, so the order is total and
/// deterministic.
#[derive(Default)]
pub(super) struct Heap {
    items: Vec<(u128, u32)>,
    /// Position of each slot in `items`, or `ABSENT`.
    pos: Vec<u32>,
}

impl Heap {
    /// Makes room for slot indexes below `slots`.
    pub(super) fn reserve_slots(&mut self, slots: usize) {
        if self.pos.len() < slots {
            self.pos.resize(slots, ABSENT);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    #[cfg(test)]
    pub(super) fn peek(&self) -> Option<u32> {
        self.items.first().map(|e| e.1)
    }

    /// The minimum with its priority.
    pub(super) fn peek_entry(&self) -> Option<(u128, u32)> {
        self.items.first().copied()
    }

    pub(super) fn push(&mut self, slot: u32, priority: u128) {
        self.reserve_slots(slot as usize + 1);
        if self.pos[slot as usize] != ABSENT {
            self.remove(slot);
        }
        let i = self.items.len();
        self.items.push((priority, slot));
        self.pos[slot as usize] = i as u32;
        self.sift_up(i);
    }

    /// Changes a member's priority in place (one sift instead of a remove and a push);
    /// pushes it if it is not a member.
    pub(super) fn update(&mut self, slot: u32, priority: u128) {
        let i = self.pos.get(slot as usize).copied().unwrap_or(ABSENT);
        if i == ABSENT {
            self.push(slot, priority);
            return;
        }
        let i = i as usize;
        let old = self.items[i].0;
        self.items[i].0 = priority;
        if priority > old {
            self.sift_down(i);
        } else {
            self.sift_up(i);
        }
    }

    /// Removes `slot`, returning its priority if it was a member.
    pub(super) fn remove(&mut self, slot: u32) -> Option<u128> {
        let i = *self.pos.get(slot as usize)?;
        if i == ABSENT {
            return None;
        }
        let i = i as usize;
        let last = self.items.len() - 1;
        self.items.swap(i, last);
        let (priority, _) = self.items.pop()?;
        self.pos[slot as usize] = ABSENT;
        if i < last {
            self.pos[self.items[i].1 as usize] = i as u32;
            self.sift_down(i);
            self.sift_up(i);
        }
        Some(priority)
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.items[i] >= self.items[parent] {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.items.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.items[r] < self.items[l] {
                r
            } else {
                l
            };
            if self.items[i] <= self.items[c] {
                break;
            }
            self.swap(i, c);
            i = c;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.items.swap(a, b);
        self.pos[self.items[a].1 as usize] = a as u32;
        self.pos[self.items[b].1 as usize] = b as u32;
    }
}
