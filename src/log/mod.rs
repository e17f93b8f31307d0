//! The durable log of one group.
