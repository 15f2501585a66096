//! The levels: a tree of 64-slot nodes, each node's occupied and cascaded
//! bitfields, and the slot lists threaded through the entries. Changes nodes
//! (allocating, freeing, growing the root) and the list links of entries; it
//! never reads the clock and knows nothing of the front.
//!
//! The non-generic functions here are `#[inline]`: they used to be methods of
//! the generic `Wheel<T>`, instantiated and inlined in the crate that uses the
//! wheel, and they stay inlinable there.

use std::ops::{Index, IndexMut};

use super::entry::Entries;
use super::NIL;

/// log2 of the slots per node.
pub(super) const SLOT_BITS: u32 = 6;
/// Slots per node.
const SLOTS: usize = 1 << SLOT_BITS;
/// Highest node level; `MAX_LEVEL + 1` levels cover `64^10 = 2^60` ticks.
pub(super) const MAX_LEVEL: u8 = 9;

/// A slot: the ends of its entry list, or (when cascaded) its child node.
#[derive(Clone, Copy)]
pub(super) struct Slot {
    pub(super) head: u32,
    /// Tail of the list, or the child node index when the slot is cascaded.
    pub(super) tail: u32,
}

const EMPTY_SLOT: Slot = Slot {
    head: NIL,
    tail: NIL,
};

/// One level-`level` node: 64 slots of `64^level` ticks each.
pub(super) struct Node {
    /// Bit `s` set ⇔ slot `s` holds at least one timer (listed or below).
    pub(super) occupied: u64,
    /// Bit `s` set ⇔ slot `s` is cascaded into the child node `slots[s].tail`.
    cascaded: u64,
    /// Parent node (`NIL` for the root), or the next free node when vacant.
    parent: u32,
    /// Slot of the parent that points at this node.
    parent_slot: u8,
    /// 0 for single-tick slots.
    pub(super) level: u8,
    pub(super) slots: [Slot; SLOTS],
}

impl Node {
    /// An empty node.
    #[inline]
    fn new(level: u8, parent: u32, parent_slot: u8) -> Self {
        Node {
            occupied: 0,
            cascaded: 0,
            parent,
            parent_slot,
            level,
            slots: [EMPTY_SLOT; SLOTS],
        }
    }

    /// The child node of slot `slot`, if the slot is cascaded.
    #[inline]
    pub(super) fn child(&self, slot: u8) -> Option<u32> {
        (self.cascaded & (1 << slot) != 0).then_some(self.slots[slot as usize].tail)
    }
}

/// Slot of `tick` in a node of `level`.
#[inline]
pub(super) fn slot_of(tick: u64, level: u8) -> u8 {
    ((tick >> (SLOT_BITS * u32::from(level))) & (SLOTS as u64 - 1)) as u8
}

/// The nodes of a wheel, indexed by `u32`, in one contiguous `Vec` whose
/// freed nodes are reused, and which of them is the root.
pub(super) struct Nodes {
    cells: Vec<Node>,
    /// Head of the vacant nodes (linked through `Node::parent`).
    free: u32,
    root: u32,
}

impl Nodes {
    /// A level-0 root and nothing else, with room for a tree holding `cap`
    /// timers before the storage grows.
    pub(super) fn with_capacity(cap: usize) -> Self {
        let mut cells = Vec::with_capacity(1 + cap / 16);
        cells.push(Node::new(0, NIL, 0));
        Nodes {
            cells,
            free: NIL,
            root: 0,
        }
    }

    /// The root node.
    #[inline]
    pub(super) fn root(&self) -> u32 {
        self.root
    }

    /// Allocates an empty node (reusing a freed one if any).
    #[inline]
    pub(super) fn alloc(&mut self, level: u8, parent: u32, parent_slot: u8) -> u32 {
        if self.free != NIL {
            let index = self.free;
            let n = &mut self.cells[index as usize];
            self.free = n.parent;
            // A node is freed only once empty: its bitfields are 0 and its
            // slots are empty already.
            n.parent = parent;
            n.parent_slot = parent_slot;
            n.level = level;
            return index;
        }
        let index = u32::try_from(self.cells.len())
            .ok()
            .filter(|&i| i != NIL)
            .expect(
            "timer wheel: fewer than 2^32 nodes (each holds a live timer; memory runs out first)",
        );
        self.cells.push(Node::new(level, parent, parent_slot));
        index
    }

    /// Makes slot `slot` of `node` a cascaded slot whose timers are under
    /// `child`. The slot's list, if any, must have been moved already.
    #[inline]
    pub(super) fn attach(&mut self, node: u32, slot: u8, child: u32) {
        let n = &mut self[node];
        n.slots[slot as usize] = Slot {
            head: NIL,
            tail: child,
        };
        n.cascaded |= 1 << slot;
        n.occupied |= 1 << slot;
    }

    /// Adds root levels until the root covers `tick`.
    #[inline]
    pub(super) fn grow_to(&mut self, tick: u64) {
        loop {
            let root = &self[self.root];
            let level = root.level;
            // A level-`level` node covers `64^(level + 1)` ticks from 0.
            if level >= MAX_LEVEL || tick >> (SLOT_BITS * (u32::from(level) + 1)) == 0 {
                return;
            }
            if root.occupied == 0 {
                let root = self.root;
                self[root].level = level + 1;
                continue;
            }
            let old = self.root;
            let new = self.alloc(level + 1, NIL, 0);
            self.attach(new, 0, old);
            let o = &mut self[old];
            o.parent = new;
            o.parent_slot = 0;
            self.root = new;
        }
    }

    /// The child node of slot `slot` of `node`, cascading the slot first if it
    /// is not yet. Only for slots with no list, as during a cascade.
    #[inline]
    pub(super) fn child_node(&mut self, node: u32, slot: u8) -> u32 {
        let n = &self[node];
        if let Some(child) = n.child(slot) {
            return child;
        }
        debug_assert_eq!(
            n.slots[slot as usize].head, NIL,
            "child_node on a listed slot"
        );
        let child = self.alloc(n.level - 1, node, slot);
        self.attach(node, slot, child);
        child
    }

    /// Links entry `index` at the tail of list slot `slot` of `node`.
    pub(super) fn push_back<T>(
        &mut self,
        entries: &mut Entries<T>,
        node: u32,
        slot: u8,
        index: u32,
    ) {
        let n = &mut self[node];
        let s = &mut n.slots[slot as usize];
        let tail = s.tail;
        if tail == NIL {
            s.head = index;
        }
        s.tail = index;
        n.occupied |= 1 << slot;
        if tail != NIL {
            entries[tail].next = index;
        }
        let e = &mut entries[index];
        e.prev = tail;
        e.next = NIL;
        e.node = node;
        e.slot = slot;
    }

    /// Unlinks entry `index` from its slot list. When the slot empties, clears
    /// its bit and frees nodes left empty above it. Returns whether the slot
    /// emptied and the lowest node that still holds timers (`NIL` if none).
    pub(super) fn unlink<T>(&mut self, entries: &mut Entries<T>, index: u32) -> (bool, u32) {
        let (prev, next, mut node, slot) = {
            let e = &entries[index];
            (e.prev, e.next, e.node, e.slot)
        };
        if prev != NIL {
            entries[prev].next = next;
        } else {
            self[node].slots[slot as usize].head = next;
        }
        if next != NIL {
            entries[next].prev = prev;
        } else {
            self[node].slots[slot as usize].tail = prev;
        }
        if prev != NIL || next != NIL {
            return (false, node);
        }
        // The slot emptied: clear its bit, then free empty nodes bottom-up.
        self[node].occupied &= !(1 << slot);
        loop {
            let n = &self[node];
            if n.occupied != 0 {
                return (true, node);
            }
            if node == self.root {
                return (true, NIL);
            }
            let (parent, parent_slot) = (n.parent, n.parent_slot);
            self[node].parent = self.free;
            self.free = node;
            let p = &mut self[parent];
            p.slots[parent_slot as usize] = EMPTY_SLOT;
            p.occupied &= !(1 << parent_slot);
            p.cascaded &= !(1 << parent_slot);
            node = parent;
        }
    }

    /// Number of nodes, live or vacant: what the storage has grown to.
    #[cfg(test)]
    pub(super) fn cells(&self) -> usize {
        self.cells.len()
    }
}

impl Index<u32> for Nodes {
    type Output = Node;

    #[inline]
    fn index(&self, index: u32) -> &Node {
        &self.cells[index as usize]
    }
}

impl IndexMut<u32> for Nodes {
    #[inline]
    fn index_mut(&mut self, index: u32) -> &mut Node {
        &mut self.cells[index as usize]
    }
}
