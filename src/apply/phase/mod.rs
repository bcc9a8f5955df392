//! The phases of apply, one file each, in the order [`super::phases`] runs them: prepare, PKI,
//! etcd, load balancers, control plane, backups, workers, verify. A phase changes hosts only through
//! [`super::Ctx`]'s helpers, which also describe each step in `--dry-run`.

pub mod backups;
pub mod control_plane;
pub mod etcd;
pub mod etcd_member;
pub mod load_balancers;
pub mod pki;
pub mod prepare;
pub mod verify;
pub mod workers;

#[cfg(test)]
mod tests;

use crate::spec::Host;
pub use verify::convergence_limit;

fn names<'a>(it: impl Iterator<Item = &'a Host>) -> Vec<String> {
    it.map(|h| h.name.clone()).collect()
}
