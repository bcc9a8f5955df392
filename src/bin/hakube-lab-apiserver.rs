//! `hakube-lab-apiserver`: the hakube lab's stand-in for kube-apiserver (not kube-apiserver).
//! The logic lives in `hakube::lab::apiserver`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = hakube::lab::apiserver::Args::parse();
    ExitCode::from(hakube::lab::apiserver::run(args) as u8)
}
