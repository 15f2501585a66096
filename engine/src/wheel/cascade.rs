//! Placement, removal and cascading: keeps the wheel's *front* (the slot of
//! the earliest timer and its exact tick) true after every change. Changes the
//! front and the cascade buffers, and the tree only through `level.rs`; it
//! never allocates or frees entries and never reads the clock.

use super::level::slot_of;
use super::{Wheel, NIL};

/// Slots of this level (64^2 ticks, 4 s) and below cascade straight to
/// level 0; see `Wheel::cascade`.
const DEEP_CASCADE_LEVEL: u8 = 2;
/// `Front::tick` when the wheel is empty.
pub(super) const NO_TICK: u64 = u64::MAX;

/// Where the earliest timer is, and its tick.
#[derive(Clone, Copy)]
pub(super) struct Front {
    /// Earliest deadline tick, `NO_TICK` when the wheel is empty.
    pub(super) tick: u64,
    pub(super) node: u32,
    pub(super) slot: u8,
}

pub(super) const NO_FRONT: Front = Front {
    tick: NO_TICK,
    node: NIL,
    slot: 0,
};

impl<T> Wheel<T> {
    /// Links the unlinked entry `index` (its `tick` set) into the tree and
    /// updates the front.
    pub(super) fn place(&mut self, index: u32) {
        let tick = self.entries[index].tick;
        self.nodes.grow_to(tick);
        let mut node = self.nodes.root();
        loop {
            let n = &self.nodes[node];
            let slot = slot_of(tick, n.level);
            if let Some(child) = n.child(slot) {
                node = child;
                continue;
            }
            self.nodes.push_back(&mut self.entries, node, slot, index);
            if tick < self.front.tick {
                // Earliest timer (strictly, so earlier timers of the same tick
                // keep the front): its slot is the front, with a known minimum.
                self.front = Front { tick, node, slot };
            }
            return;
        }
    }

    /// Unlinks entry `index` and restores the front if it was affected.
    pub(super) fn remove(&mut self, index: u32) {
        let (tick, node, slot) = {
            let e = &self.entries[index];
            (e.tick, e.node, e.slot)
        };
        let in_front = node == self.front.node && slot == self.front.slot;
        let (emptied, holder) = self.nodes.unlink(&mut self.entries, index);
        if !in_front {
            // Timers outside the front slot are later than the front: it stands.
            return;
        }
        if emptied {
            // The earliest timer left and its slot is empty: the next one is the
            // earliest under `holder`, the lowest node still holding timers
            // above it (everything outside `holder` lies beyond its span).
            if holder == NIL {
                self.front = NO_FRONT;
            } else {
                self.find_front(holder);
            }
            return;
        }
        let n = &self.nodes[node];
        if tick != self.front.tick || n.level == 0 {
            // A later timer of the front slot left, or one of several timers of
            // the same tick: the minimum stands.
            return;
        }
        let list = n.slots[slot as usize];
        if list.head == list.tail {
            // One timer left in the coarse slot: it is the minimum.
            self.front.tick = self.entries[list.head].tick;
        } else {
            // The minimum of a coarse slot left: cascade to find the next one.
            self.find_front(node);
        }
    }

    /// Sets the front to the earliest timer under `node`, which must hold the
    /// earliest timer of the wheel. Descends by lowest occupied slot and
    /// cascades coarse slots of several timers until the minimum is known.
    pub(super) fn find_front(&mut self, mut node: u32) {
        loop {
            let n = &self.nodes[node];
            let slot = n.occupied.trailing_zeros() as u8;
            debug_assert!(n.occupied != 0, "find_front starts at a non-empty node");
            if n.occupied == 0 {
                // Unreachable by construction; degrade to an empty front
                // rather than loop or panic in release builds.
                self.front = NO_FRONT;
                return;
            }
            if let Some(child) = n.child(slot) {
                node = child;
                continue;
            }
            let list = n.slots[slot as usize];
            if n.level == 0 || list.head == list.tail {
                self.front = Front {
                    tick: self.entries[list.head].tick,
                    node,
                    slot,
                };
                return;
            }
            node = self.cascade(node, slot);
        }
    }

    /// Moves the timers of list slot `slot` of `node` into a new child node one
    /// level down (keeping their order) and returns the child.
    ///
    /// A slot of level ≤ [`DEEP_CASCADE_LEVEL`] sends each timer straight to
    /// its single-tick slot, creating the nodes in between: walking a list is a
    /// chain of dependent loads (a cache miss per timer in a large wheel), so
    /// one walk instead of up to three is the main saving of the expiry path.
    /// Higher slots move one level at a time, so that sparse far-away slots do
    /// not fan out into many nodes.
    fn cascade(&mut self, node: u32, slot: u8) -> u32 {
        let (level, list) = {
            let n = &self.nodes[node];
            (n.level, n.slots[slot as usize])
        };
        let child = self.nodes.alloc(level - 1, node, slot);
        // Collect the list walking from both ends at once: two independent
        // chains of loads, so two cache misses are in flight instead of one.
        // The buffers are kept in the wheel and reused.
        let mut ahead = std::mem::take(&mut self.scratch_ahead);
        let mut behind = std::mem::take(&mut self.scratch_behind);
        let (mut first, mut last) = (list.head, list.tail);
        while first != NIL {
            ahead.push(first);
            if first == last {
                break;
            }
            behind.push(last);
            let next = self.entries[first].next;
            if next == last {
                break;
            }
            first = next;
            last = self.entries[last].prev;
        }
        for &index in ahead.iter().chain(behind.iter().rev()) {
            let tick = self.entries[index].tick;
            let mut target = child;
            if level <= DEEP_CASCADE_LEVEL {
                // Down to the single-tick node of `tick`.
                for l in (1..level).rev() {
                    target = self.nodes.child_node(target, slot_of(tick, l));
                }
                self.nodes
                    .push_back(&mut self.entries, target, slot_of(tick, 0), index);
            } else {
                self.nodes
                    .push_back(&mut self.entries, child, slot_of(tick, level - 1), index);
            }
        }
        ahead.clear();
        behind.clear();
        self.scratch_ahead = ahead;
        self.scratch_behind = behind;
        // The slot was occupied by its list; now it is by `child`.
        self.nodes.attach(node, slot, child);
        child
    }
}
