//! A small map from a type to one value of it, carried by each call's [`CallContext`]
//! (hooks put what they learn there for the handlers).
//!
//! [`CallContext`]: super::CallContext

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

/// Values keyed by their type, at most one per type: what hooks attach to a call for its
/// handler (a trace span, a decoded account, a tenant).
///
/// ```
/// use wsrpc_core::rpc::Extensions;
///
/// #[derive(Debug, PartialEq)]
/// struct Tenant(&'static str);
///
/// let mut ext = Extensions::new();
/// assert!(ext.insert(Tenant("acme")).is_none());
/// assert_eq!(ext.get::<Tenant>(), Some(&Tenant("acme")));
/// assert_eq!(ext.get::<u32>(), None);
/// ```
///
/// Empty, it holds no memory, so a call nobody attaches anything to costs nothing; cloning
/// (an async handler's context is a clone) shares the values instead of copying them.
#[derive(Clone, Default)]
pub struct Extensions {
    // A list, not a hash map: a call carries a handful of values at most, and a linear scan
    // of a few `TypeId`s is faster than hashing one.
    values: Vec<(TypeId, Arc<dyn Any + Send + Sync>)>,
}

impl Extensions {
    /// An empty map (allocates nothing).
    pub const fn new() -> Self {
        Self { values: Vec::new() }
    }

    /// Stores `value`, returning the value of the same type it replaces.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<Arc<T>> {
        self.insert_shared(Arc::new(value))
    }

    /// Stores a value already behind an `Arc` (shared with other calls without copying),
    /// returning the value of the same type it replaces.
    pub fn insert_shared<T: Send + Sync + 'static>(&mut self, value: Arc<T>) -> Option<Arc<T>> {
        let key = TypeId::of::<T>();
        match self.values.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => {
                let old = std::mem::replace(slot, value);
                old.downcast::<T>().ok()
            }
            None => {
                self.values.push((key, value));
                None
            }
        }
    }

    /// The value of type `T`, if one was inserted.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        let key = TypeId::of::<T>();
        self.values.iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.downcast_ref::<T>())
    }

    /// The value of type `T` as its shared `Arc` (to keep beyond the call).
    pub fn get_shared<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let key = TypeId::of::<T>();
        let (_, v) = self.values.iter().find(|(k, _)| *k == key)?;
        v.clone().downcast::<T>().ok()
    }

    /// Whether a value of type `T` is present.
    pub fn contains<T: Send + Sync + 'static>(&self) -> bool {
        let key = TypeId::of::<T>();
        self.values.iter().any(|(k, _)| *k == key)
    }

    /// Takes the value of type `T` out.
    pub fn remove<T: Send + Sync + 'static>(&mut self) -> Option<Arc<T>> {
        let key = TypeId::of::<T>();
        let at = self.values.iter().position(|(k, _)| *k == key)?;
        self.values.swap_remove(at).1.downcast::<T>().ok()
    }

    /// Removes every value (keeps the list's memory for the next call).
    pub fn clear(&mut self) {
        self.values.clear();
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions").field("len", &self.values.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_type() {
        let mut ext = Extensions::new();
        assert!(ext.is_empty());
        assert_eq!(ext.insert(1u32), None);
        assert_eq!(ext.insert("name"), None);
        assert_eq!(ext.insert(2u32).as_deref(), Some(&1));
        assert_eq!(ext.len(), 2);
        assert_eq!(ext.get::<u32>(), Some(&2));
        assert_eq!(ext.get::<&str>(), Some(&"name"));
        assert!(!ext.contains::<u64>());
        let shared = ext.clone();
        assert_eq!(ext.remove::<u32>().as_deref(), Some(&2));
        assert_eq!(ext.get::<u32>(), None);
        assert_eq!(shared.get::<u32>(), Some(&2), "a clone keeps its values");
        ext.clear();
        assert!(ext.is_empty());
    }

    #[test]
    fn an_empty_map_holds_no_memory() {
        let ext = Extensions::new();
        assert_eq!(ext.values.capacity(), 0);
        assert_eq!(ext.clone().values.capacity(), 0);
    }
}
