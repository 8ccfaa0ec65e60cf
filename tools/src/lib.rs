//! # fused-optim-tools
//!
//! What the fused-optim library's users do not link, but its examples and checks need: the
//! golden-trajectory replay (`optim-golden/1` and `/2`, [`golden`]) and the optimizer
//! playground ([`playground`]: test functions, small models, data, an MNIST reader). Not
//! published (`publish = false`).

#![warn(missing_docs)]

pub mod error;
pub mod golden;
pub mod playground;

pub use error::{Error, Result};
