//! Topology, failure tolerance and single points of failure.

use crate::spec::Cluster;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub spofs: Vec<String>,
}

pub fn analyze(_c: &Cluster) -> Report {
    Report { spofs: Vec::new() }
}

pub fn render_text(_c: &Cluster, _r: &Report) -> String {
    String::new()
}
