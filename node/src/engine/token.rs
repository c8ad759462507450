//! The one type both the engine's inputs and its call table name, in a leaf of its own so that
//! neither depends on the other.

/// Identifies an answer the engine waits for: a store job, a local handler's reply, or a
/// node-originated CALL made from outside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub u64);
