//! placeholder

pub mod block;
