//! What every command looks at on a live cluster: which load balancer holds the VIP, which
//! interface carries an address, how HAProxy rates the API servers, and what each etcd member
//! says about itself. Pure parsers of the tools' own output (unit-tested on output captured
//! from the lab, in `testdata/`), plus one-shot fetchers. `status` composes them, `drill`'s
//! watcher polls them, `doctor` and `apply` reuse them.

pub mod etcd;
pub mod haproxy;
pub mod iface;
pub mod vip;

/// HAProxy's frontend and backend for the Kubernetes API: the config names it, and the
/// stats, the alert rules and the drill read it back by this name.
pub const API_BACKEND: &str = "k8s-api";
