//! The netmap backend (in progress).
pub mod abi;
