//! The lab: a real multi-host HA cluster on one Linux machine (network, mount and UTS
//! namespaces as hosts, each with its own sshd). See `hakube lab --help` and docs/lab.md.

pub mod apiserver;
mod calendar;
pub mod cli;
mod files;
mod host;
mod lifecycle;
pub mod monitoring;
mod net;
pub mod prereq;
pub mod proc;
pub mod state;
pub mod systemctl;
pub mod unit;
pub mod user;
