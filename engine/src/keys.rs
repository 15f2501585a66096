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

    #[inline]
    pub(crate) fn remove(&mut self, key: K) -> Option<T> {
        self.slab.try_remove(key.index())
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.slab.iter().map(|(i, v)| (K::from_index(i), v))
    }

    /// Every key in use, collected: for loops that remove as they go.
    pub(crate) fn keys(&self) -> Vec<K> {
        self.slab.iter().map(|(i, _)| K::from_index(i)).collect()
    }
}
