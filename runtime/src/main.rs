//! `microvm`: runs containers in KVM microVMs. One file per verb under `cli/`.

mod cli;
mod host;
mod initramfs;
mod jail;
mod launch_checks;
mod rootfs;
mod sandbox;
mod spec;
mod tty;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// Exit status when microvm itself fails (bad input, no KVM), as `docker run` uses 125.
const EXIT_RUNTIME_ERROR: u8 = 125;

#[derive(Parser)]
#[command(name = "microvm", version, about = "Run containers in KVM microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(Box<cli::run::RunArgs>),
    Pack(cli::pack::PackArgs),
    Boot(cli::boot::BootArgs),
    Check(cli::check::CheckArgs),
}

fn main() -> ExitCode {
    let start = Instant::now();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run(_) | Command::Boot(_)) {
        // Nothing a caller left open reaches the VMM.
        jail::close_inherited_fds();
    }
    let result = match cli.command {
        Command::Run(args) => cli::run::run(*args, start),
        Command::Pack(args) => cli::pack::run(args),
        Command::Boot(args) => cli::boot::run(args, start),
        Command::Check(args) => cli::check::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("microvm: {e:#}");
            ExitCode::from(EXIT_RUNTIME_ERROR)
        }
    }
}
