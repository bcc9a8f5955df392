use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Bring up the lab hosts.
    Up,
}

pub fn run(_args: LabArgs) -> anyhow::Result<i32> {
    anyhow::bail!("the lab is not built yet")
}

/// Entry point when the binary is invoked as `systemctl` on a lab host.
pub fn systemctl_main() -> i32 {
    eprintln!("hakube lab systemctl: not built yet");
    1
}
