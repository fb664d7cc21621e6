//! thinlayer: container image and container layers as thin snapshots in a
//! device-mapper thin pool, so copy-on-write happens per block, in the kernel.
//!
//! The layers of the crate, bottom up:
//! - [`digest`]: sha256 content digests, for the records' journal and for
//!   images;
//! - [`kernel`]: every kernel call (device-mapper, loop devices, mounts, the
//!   block tools), behind the [`kernel::Kernel`] trait, with a simulated
//!   kernel for tests;
//! - [`pool`]: the thin pool, its backing and its status;
//! - [`thin`]: thin devices in the pool, and exact usage from its metadata;
//! - [`tree`]: the snapshot tree of layers and images, pure rules;
//! - [`records`]: the tree and the pool's configuration on disk, atomic, and
//!   the transaction protocol that keeps them consistent with the kernel;
//! - [`fs`]: the filesystem inside the layers;
//! - [`layer`]: layer content: applying a layer tar into a mounted layer,
//!   writing a layer's changes as a tar;
//! - [`image`]: OCI image layouts and `docker save` archives;
//! - [`driver`]: the operations, which tie all of the above together, and
//!   the reconciler that repairs what a crash left;
//! - [`service`]: containerd's snapshotter API over the driver;
//! - [`metrics`]: what `thinlayer serve` exposes to Prometheus;
//! - [`trace`]: the spans that time each operation and its steps;
//! - [`cli`]: the `thinlayer` command.

pub mod cli;
pub mod digest;
pub mod driver;
pub mod error;
pub mod failpoint;
pub mod fs;
pub mod image;
pub mod kernel;
pub mod layer;
pub mod metrics;
pub mod pool;
pub mod records;
pub mod service;
pub mod thin;
pub mod trace;
pub mod tree;
pub mod units;

#[cfg(test)]
pub(crate) mod testutil;

pub use driver::Driver;
pub use error::{Error, Result};
