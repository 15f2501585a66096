//! Timer storage: the slab of entry cells, its free list, and the generations
//! that make stale keys harmless. Changes a cell's tick, payload and generation,
//! and the link of vacant cells; the slot-list links of a live cell are
//! `level.rs`'s to write.

use std::ops::{Index, IndexMut};

use super::{TimerKey, NIL};

/// One timer (or a vacant cell of the entry slab when `payload` is `None`).
///
/// `repr(C)` keeps the fields a cascade walk reads (`tick`, `next`) and the
/// links it writes in the first 16 bytes, which never straddle a cache line
/// for the usual entry sizes (multiples of 16): one miss per entry, not two.
#[repr(C)]
pub(super) struct Entry<T> {
    /// Deadline tick (already rounded up and clamped).
    pub(super) tick: u64,
    /// Next entry in the slot list, or the next vacant cell when vacant.
    pub(super) next: u32,
    /// Previous entry in the slot list (`NIL` at the head).
    pub(super) prev: u32,
    /// Node whose slot lists this entry.
    pub(super) node: u32,
    /// Bumped every time the cell is vacated, to detect stale keys.
    generation: u32,
    /// Slot within `node`.
    pub(super) slot: u8,
    /// The timer's payload; `None` for a vacant cell.
    payload: Option<T>,
}

/// The entry cells of a wheel, indexed by `u32`, in one contiguous `Vec`
/// whose vacated cells are reused before it grows.
pub(super) struct Entries<T> {
    cells: Vec<Entry<T>>,
    /// Head of the vacant cells (linked through `Entry::next`).
    free: u32,
}

impl<T> Entries<T> {
    /// No cells yet, with room for `cap` before the storage grows.
    pub(super) fn with_capacity(cap: usize) -> Self {
        Entries {
            cells: Vec::with_capacity(cap),
            free: NIL,
        }
    }

    /// Whether `key` names a timer that has neither fired nor been cancelled.
    pub(super) fn is_live(&self, key: TimerKey) -> bool {
        self.cells
            .get(key.index() as usize)
            .is_some_and(|e| e.generation == key.generation && e.payload.is_some())
    }

    /// The key of the live entry `index`.
    pub(super) fn key(&self, index: u32) -> TimerKey {
        TimerKey::new(index, self.cells[index as usize].generation)
    }

    /// Stores a timer in a vacant cell (a new one if none is vacant) and
    /// returns its index. The cell is not linked into any slot yet.
    pub(super) fn alloc(&mut self, tick: u64, payload: T) -> u32 {
        if self.free != NIL {
            let index = self.free;
            let e = &mut self.cells[index as usize];
            self.free = e.next;
            e.tick = tick;
            e.payload = Some(payload);
            return index;
        }
        let index = u32::try_from(self.cells.len())
            .ok()
            .filter(|&i| i != NIL)
            .expect("timer wheel: at most 2^32 - 1 timers may be live at once");
        self.cells.push(Entry {
            tick,
            prev: NIL,
            next: NIL,
            node: NIL,
            slot: 0,
            generation: 0,
            payload: Some(payload),
        });
        index
    }

    /// Vacates an unlinked entry cell and returns its payload.
    pub(super) fn free(&mut self, index: u32) -> T {
        let e = &mut self.cells[index as usize];
        e.generation = e.generation.wrapping_add(1);
        e.next = self.free;
        self.free = index;
        e.payload
            .take()
            .expect("timer wheel: a linked entry always holds its payload")
    }

    /// Number of cells, live or vacant: what the storage has grown to.
    #[cfg(test)]
    pub(super) fn cells(&self) -> usize {
        self.cells.len()
    }
}

impl<T> Index<u32> for Entries<T> {
    type Output = Entry<T>;

    fn index(&self, index: u32) -> &Entry<T> {
        &self.cells[index as usize]
    }
}

impl<T> IndexMut<u32> for Entries<T> {
    fn index_mut(&mut self, index: u32) -> &mut Entry<T> {
        &mut self.cells[index as usize]
    }
}
