//! Typed slot keys, and the slab that hands them out.
//!
//! Connections, requests and pools live in slabs and refer to each other by
//! slot. A bare `usize` says nothing about which slab it indexes; these
//! newtypes do, at no cost. A slot is reused once freed, so a key that may
//! outlive its value is checked against the value's own id (see
//! `Engine::live`).

use std::marker::PhantomData;

use slab::Slab;

/// A key into one kind of [`Slots`].
pub(crate) trait Key: Copy {
    fn from_index(i: usize) -> Self;
    fn index(self) -> usize;
}

macro_rules! key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) struct $name(usize);

        impl Key for $name {
#[inline]
            fn from_index(i: usize) -> Self {
                $name(i)
            }
#[inline]
            fn index(self) -> usize {
                self.0
            }
        }
    };
}

key!(
    /// A connection's slot; with the engine's token base, also its mio token.
    ConnKey
);
key!(
    /// A request's slot.
    ReqKey
);
key!(
    /// A pool's slot (pools are never removed).
    PoolKey
);

/// A slab whose keys are typed.
pub(crate) struct Slots<K, T> {
    slab: Slab<T>,
    key: PhantomData<K>,
}

/// Slots an empty slab keeps (see [`Slots::remove`]); also the room other
/// collections that a burst grows keep once they are empty again.
pub(crate) const SHRINK_ABOVE: usize = 256;

impl<K: Key, T> Default for Slots<K, T> {
    fn default() -> Self {
        Slots {
            slab: Slab::new(),
            key: PhantomData,
        }
    }
}

impl<K: Key, T> Slots<K, T> {
    #[inline]
    pub(crate) fn insert(&mut self, value: T) -> K {
        K::from_index(self.slab.insert(value))
    }

    #[inline]
    pub(crate) fn get(&self, key: K) -> Option<&T> {
        self.slab.get(key.index())
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: K) -> Option<&mut T> {
        self.slab.get_mut(key.index())
    }

    /// Removes the value at `key`. A slab that this leaves empty after a
    /// burst (more than [`SHRINK_ABOVE`] slots) gives its memory back: 10,000
    /// requests submitted at once would otherwise keep ~7 MiB of empty
    /// request slots for the engine's life. Below that, the slots stay for
    /// the next burst, so a steady load never reallocates.
    #[inline]
    pub(crate) fn remove(&mut self, key: K) -> Option<T> {
        if self.slab.len() == 1 && self.slab.capacity() > SHRINK_ABOVE {
            return self.remove_last(key);
        }
        self.slab.try_remove(key.index())
    }

    /// [`Slots::remove`] of what may be the last value of a large slab.
    #[cold]
    #[inline(never)]
    fn remove_last(&mut self, key: K) -> Option<T> {
        let value = self.slab.try_remove(key.index());
        if self.slab.is_empty() {
            self.slab = Slab::new();
        }
        value
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.slab.iter().map(|(i, v)| (K::from_index(i), v))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (K, &mut T)> {
        self.slab.iter_mut().map(|(i, v)| (K::from_index(i), v))
    }

    /// Every key in use, collected: for loops that remove as they go.
    pub(crate) fn keys(&self) -> Vec<K> {
        self.slab.iter().map(|(i, _)| K::from_index(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnKey, Key, Slots, SHRINK_ABOVE};

    #[test]
    fn an_emptied_slab_gives_back_a_burst_but_keeps_a_small_one() {
        let mut small: Slots<ConnKey, u64> = Slots::default();
        let keys: Vec<ConnKey> = (0..8).map(|n| small.insert(n)).collect();
        for k in keys {
            small.remove(k);
        }
        assert!(small.slab.capacity() >= 8, "a small slab keeps its slots");
        let mut burst: Slots<ConnKey, u64> = Slots::default();
        let keys: Vec<ConnKey> = (0..=SHRINK_ABOVE as u64).map(|n| burst.insert(n)).collect();
        for k in &keys[1..] {
            burst.remove(*k);
            assert!(
                burst.slab.capacity() > SHRINK_ABOVE,
                "not while one is left"
            );
        }
        assert_eq!(burst.remove(keys[0]), Some(0));
        assert_eq!((burst.len(), burst.slab.capacity()), (0, 0));
        assert_eq!(burst.insert(7).index(), 0);
    }
}
