//! placeholder
pub mod block;
