//! Handles on the routing table: the controller's one [`TablePublisher`] and everyone
//! else's read-only [`TableReader`].

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::RoutingTable;

/// The one writer's side of the table: the controller holds the only one (it is not
/// `Clone`), and hands out [`TableReader`]s.
#[derive(Debug)]
pub struct TablePublisher(Arc<ArcSwap<RoutingTable>>);

impl TablePublisher {
    /// A table slot holding `first`.
    pub fn new(first: RoutingTable) -> TablePublisher {
        TablePublisher(Arc::new(ArcSwap::from_pointee(first)))
    }

    /// Publishes `table`: every later load sees it; loads in flight keep theirs.
    pub fn store(&self, table: Arc<RoutingTable>) {
        self.0.store(table);
    }

    /// The table serving now (a cheap guard, for a short look).
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.0.load()
    }

    /// The table serving now, kept.
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.0.load_full()
    }

    /// A read-only handle on this table.
    pub fn reader(&self) -> TableReader {
        TableReader(self.0.clone())
    }
}

/// The handle everyone but the controller holds: it can load the table, never store one.
#[derive(Debug, Clone)]
pub struct TableReader(Arc<ArcSwap<RoutingTable>>);

impl TableReader {
    /// The table serving now (a cheap guard, for a short look).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.0.load()
    }

    /// The table serving now, kept (the proxy keeps it for the whole request).
    #[inline]
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.0.load_full()
    }
}
