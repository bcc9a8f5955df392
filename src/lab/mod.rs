//! The lab: a real multi-host HA cluster on one Linux machine (network, mount and UTS
//! namespaces as hosts, each with its own sshd). See `hakube lab --help`.

pub mod cli;
