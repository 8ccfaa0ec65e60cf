//! Small checks shared by every config's `validate`.

use crate::error::{Error, Result};

/// `value` must be finite and `>= 0`.
pub(crate) fn non_negative(optimizer: &'static str, name: &'static str, value: f64) -> Result<()> {
    require(
        optimizer,
        name,
        value,
        value.is_finite() && value >= 0.0,
        "must be finite and >= 0",
    )
}

/// `value` must be finite and `> 0`.
pub(crate) fn require_positive(
    optimizer: &'static str,
    name: &'static str,
    value: f64,
) -> Result<()> {
    require(
        optimizer,
        name,
        value,
        value.is_finite() && value > 0.0,
        "must be finite and > 0",
    )
}

/// `value` must be finite.
pub(crate) fn finite(optimizer: &'static str, name: &'static str, value: f64) -> Result<()> {
    require(optimizer, name, value, value.is_finite(), "must be finite")
}

/// A decay rate in `[0, 1)`.
pub(crate) fn beta(optimizer: &'static str, name: &'static str, value: f64) -> Result<()> {
    require(
        optimizer,
        name,
        value,
        (0.0..1.0).contains(&value),
        "must be in [0, 1)",
    )
}

/// A rate in `[0, 1]`.
pub(crate) fn unit_interval(optimizer: &'static str, name: &'static str, value: f64) -> Result<()> {
    require(
        optimizer,
        name,
        value,
        (0.0..=1.0).contains(&value),
        "must be in [0, 1]",
    )
}

fn require(
    optimizer: &'static str,
    name: &'static str,
    value: f64,
    ok: bool,
    requirement: &'static str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidHyperParameter {
            optimizer,
            name,
            value,
            requirement,
        })
    }
}
