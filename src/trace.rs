//! Spans that time an operation and its steps.
//!
//! The driver marks each operation it runs ([`op!`](crate::op!), e.g. `prepare`) and
//! the steps inside it ([`step!`](crate::step!), e.g. `create_snap`, `mount`) with
//! tracing spans of their own targets. They cost nothing unless a
//! subscriber wants them: `thinlayer serve` times them into the histogram
//! `thinlayer_step_duration_seconds{op,step}` (see
//! [`crate::metrics::steps`]), so each figure of a benchmark can be split
//! into the kernel calls and writes it is made of. A step's operation is
//! the nearest enclosing `op!` span; a step outside any is counted under
//! the operation `other`.

/// The target of operation spans.
pub const OP_TARGET: &str = "thinlayer::op";
/// The target of step spans.
pub const STEP_TARGET: &str = "thinlayer::step";

/// Enters the span of an operation, named by a `&str` (a snapshotter
/// call's method, say); it lasts until the returned guard is dropped.
#[macro_export]
macro_rules! op {
    ($name:expr) => {
        ::tracing::info_span!(target: "thinlayer::op", "op", name = $name).entered()
    };
}

/// Enters the span of a step named by a string literal, inside the
/// current operation; it lasts until the returned guard is dropped.
#[macro_export]
macro_rules! step {
    ($name:literal) => {
        ::tracing::info_span!(target: "thinlayer::step", $name).entered()
    };
}
