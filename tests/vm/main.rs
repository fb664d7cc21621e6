//! Device tests: everything that needs a kernel with device-mapper thin
//! provisioning. Cargo's runner (`vm-tests/cargo-runner`) executes this
//! binary inside the QEMU VM of `vm-tests/run` when the host kernel has no
//! device-mapper. Every test runs in the shared [`fixture`].

mod fixture;

mod autoextend;
mod bench;
mod cli;
mod concurrency;
mod conformance;
mod containerd;
mod crash;
mod cri;
mod docker;
mod faults;
mod images;
mod kernel;
mod metrics;
mod pool;
mod scenario;
mod served;
mod size;
mod space;
