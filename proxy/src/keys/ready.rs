//! The eligible keys, ordered by `(priority, slot)` like [`Heap`], but O(1) on the common
//! path: a picked key's new priority is at least every other priority of its lane
//! (least-recently-used orders: round robin, least used, time window; and, per weight,
//! stride scheduling), so it goes to the back of that lane's FIFO instead of sifting through
//! a heap. A key that enters out of order (back from a cooldown with its old priority) goes
//! to a side [`Heap`]. The minimum is the least of the lanes' fronts and the heap's top.
//!
//! Removal is lazy: each slot carries a stamp, bumped whenever the slot leaves or changes
//! priority, and FIFO entries with an old stamp are skipped when they reach the front (and
//! swept when a lane grows past twice the members).

use super::heap::Heap;
use std::collections::VecDeque;

/// Lanes kept as FIFOs; weights beyond this many distinct values use the heap.
pub(super) const MAX_LANES: usize = 8;
/// A lane index meaning "no FIFO: the heap".
pub(super) const NO_LANE: u8 = u8::MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Loc {
    Absent,
    Lane(u8),
    Heap,
}

#[derive(Clone, Copy)]
struct SlotState {
    loc: Loc,
    priority: u128,
    stamp: u32,
    /// Position in `members`.
    member: u32,
}

impl Default for SlotState {
    fn default() -> Self {
        Self {
            loc: Loc::Absent,
            priority: 0,
            stamp: 0,
            member: u32::MAX,
        }
    }
}

/// One FIFO entry: `(priority, slot, stamp)`.
type Entry = (u128, u32, u32);

#[derive(Default)]
pub(super) struct Ready {
    lanes: Vec<VecDeque<Entry>>,
    heap: Heap,
    slots: Vec<SlotState>,
    /// Every member once, in no order (uniform sampling).
    members: Vec<u32>,
}

impl Ready {
    /// Makes room for slot indexes below `slots`.
    pub(super) fn reserve_slots(&mut self, slots: usize) {
        if self.slots.len() < slots {
            self.slots.resize(slots, SlotState::default());
        }
        self.heap.reserve_slots(slots);
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member at position `i` (any order), for sampling.
    pub(super) fn at(&self, i: usize) -> u32 {
        self.members[i]
    }

    /// Loads `slot`'s entry into the cache ahead of a change (the load overlaps the caller's
    /// other cache misses instead of following them).
    pub(super) fn touch(&self, slot: u32) {
        std::hint::black_box(self.slots.get(slot as usize).map(|s| s.stamp));
    }

    /// The member with the least `(priority, slot)`.
    pub(super) fn peek(&mut self) -> Option<u32> {
        let mut best = self.heap.peek_entry();
        for lane in 0..self.lanes.len() {
            let front = self.front(lane);
            if let Some((p, s)) = front
                && best.is_none_or(|b| (p, s) < b)
            {
                best = Some((p, s));
            }
        }
        best.map(|(_, slot)| slot)
    }

    /// The first live entry of a lane, dropping stale ones on the way.
    fn front(&mut self, lane: usize) -> Option<(u128, u32)> {
        let slots = &self.slots;
        let fifo = &mut self.lanes[lane];
        while let Some(&(p, slot, stamp)) = fifo.front() {
            let st = slots[slot as usize];
            if st.loc == Loc::Lane(lane as u8) && st.stamp == stamp {
                return Some((p, slot));
            }
            fifo.pop_front();
        }
        None
    }

    /// Adds `slot` (or moves it) with `priority`, in `lane` when it keeps the lane sorted.
    pub(super) fn push(&mut self, slot: u32, priority: u128, lane: u8) {
        self.reserve_slots(slot as usize + 1);
        if self.slots[slot as usize].loc != Loc::Absent {
            self.remove(slot);
        }
        let i = slot as usize;
        self.slots[i].member = self.members.len() as u32;
        self.members.push(slot);
        self.place(slot, priority, lane);
    }

    /// Changes a member's priority (pushes it if it is not a member). Keeps its place when
    /// the priority stays (a lease released).
    pub(super) fn update(&mut self, slot: u32, priority: u128, lane: u8) {
        let Some(st) = self.slots.get(slot as usize).copied() else {
            return self.push(slot, priority, lane);
        };
        if st.loc != Loc::Absent && st.priority == priority {
            return;
        }
        match st.loc {
            Loc::Absent => self.push(slot, priority, lane),
            Loc::Heap => {
                if self.fits(lane, priority, slot) {
                    self.heap.remove(slot);
                    self.place(slot, priority, lane);
                } else {
                    self.slots[slot as usize].priority = priority;
                    self.heap.update(slot, priority);
                }
            }
            Loc::Lane(_) => {
                self.slots[slot as usize].stamp = st.stamp.wrapping_add(1);
                self.place(slot, priority, lane);
            }
        }
    }

    /// Removes `slot`; true if it was a member.
    pub(super) fn remove(&mut self, slot: u32) -> bool {
        let Some(st) = self.slots.get(slot as usize).copied() else {
            return false;
        };
        match st.loc {
            Loc::Absent => return false,
            Loc::Heap => {
                self.heap.remove(slot);
            }
            Loc::Lane(_) => {}
        }
        let i = slot as usize;
        self.slots[i].loc = Loc::Absent;
        self.slots[i].stamp = st.stamp.wrapping_add(1);
        let m = st.member as usize;
        self.members.swap_remove(m);
        if let Some(&moved) = self.members.get(m) {
            self.slots[moved as usize].member = m as u32;
        }
        self.slots[i].member = u32::MAX;
        true
    }

    /// Whether `(priority, slot)` can go to the back of `lane`.
    fn fits(&self, lane: u8, priority: u128, slot: u32) -> bool {
        if lane == NO_LANE {
            return false;
        }
        match self.lanes.get(lane as usize).and_then(|l| l.back()) {
            Some(&(p, s, _)) => (priority, slot) > (p, s),
            None => true,
        }
    }

    /// Files a member (already in `members`) in its lane or the heap.
    fn place(&mut self, slot: u32, priority: u128, lane: u8) {
        let i = slot as usize;
        self.slots[i].priority = priority;
        if self.fits(lane, priority, slot) {
            let l = lane as usize;
            if self.lanes.len() <= l {
                self.lanes.resize_with(l + 1, VecDeque::new);
            }
            self.slots[i].loc = Loc::Lane(lane);
            let stamp = self.slots[i].stamp;
            self.lanes[l].push_back((priority, slot, stamp));
            if self.lanes[l].len() > 2 * self.members.len() + 64 {
                self.sweep(l);
            }
        } else {
            self.slots[i].loc = Loc::Heap;
            self.heap.push(slot, priority);
        }
    }

    /// Drops a lane's stale entries.
    fn sweep(&mut self, lane: usize) {
        let slots = &self.slots;
        self.lanes[lane].retain(|&(_, slot, stamp)| {
            let st = slots[slot as usize];
            st.loc == Loc::Lane(lane as u8) && st.stamp == stamp
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain heap, with random operations: the same minimum after every step.
    #[test]
    fn same_minimum_as_a_heap() {
        let mut ready = Ready::default();
        let mut heap = Heap::default();
        let mut next = 1u128;
        for step in 0..200_000u32 {
            let slot = rand::random_range(0..64u32);
            let lane = (slot % 3) as u8;
            match rand::random_range(0..10) {
                // A pick: the minimum takes the largest priority so far.
                0..=5 => {
                    if let Some(min) = heap.peek() {
                        assert_eq!(ready.peek(), Some(min), "step {step}");
                        next += 1;
                        heap.update(min, next);
                        ready.update(min, next, lane_of(min));
                    }
                }
                // A key enters with an old priority.
                6 | 7 => {
                    let p = rand::random_range(0..next);
                    heap.push(slot, p);
                    ready.push(slot, p, lane);
                }
                _ => {
                    heap.remove(slot);
                    ready.remove(slot);
                }
            }
            assert_eq!(ready.len(), heap.len(), "step {step}");
            assert_eq!(ready.peek(), heap.peek(), "step {step}");
        }

        fn lane_of(slot: u32) -> u8 {
            if slot.is_multiple_of(5) {
                NO_LANE
            } else {
                (slot % 3) as u8
            }
        }
    }

    #[test]
    fn members_are_sampled_once_each() {
        let mut ready = Ready::default();
        for s in 0..10 {
            ready.push(s, u128::from(s), 0);
        }
        ready.remove(3);
        ready.update(5, 100, 0);
        let mut seen: Vec<u32> = (0..ready.len()).map(|i| ready.at(i)).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(ready.peek(), Some(0));
    }
}
