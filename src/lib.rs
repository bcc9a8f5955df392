//! hakube: build and operate highly-available on-premises Kubernetes control planes.
//!
//! Layers, from the spec outwards: [`spec`] (the `cluster.yaml` model and its validation),
//! [`plan`] (topology, failure tolerance, single points of failure), [`render`] (every config
//! file for every host), [`pki`] (certificates) and [`lab`] (a real multi-host lab on one machine).

pub mod apply;
pub mod backup;
pub mod certs;
pub mod drill;
pub mod etcd;
pub mod exporter;
pub mod install;
pub mod lab;
pub mod observe;
pub mod output;
pub mod pki;
pub mod plan;
pub mod probe;
pub mod render;
pub mod spec;
pub mod state;
pub mod status;
pub mod transport;
pub mod upgrade;
