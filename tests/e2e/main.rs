//! End-to-end suite: real daemons over real gRPC (see `evergreen_e2e::Sandbox`).

mod archive;
mod bad_input;
mod closed_loop;
mod config_reference;
mod demo;
mod faults;
mod hostile;
mod lifecycle;
mod monitor;
mod ops;
mod phaseout;
mod platform;
mod s3_artifacts;
mod security;
mod server;
mod trainer;
mod watch;
