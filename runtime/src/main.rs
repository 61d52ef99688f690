//! `microvm`: runs containers in KVM microVMs. One file per verb under `cli/`.

mod binds;
mod cli;
mod confinement;
mod errors;
mod helper;
mod host;
mod initramfs;
mod jail;
mod launch_checks;
mod layout;
mod oci;
mod rootfs;
mod sandbox;
mod tap_net;
mod session;
mod spec;
mod tty;
mod user_net;
mod volumes;
mod vm;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// Exit status when microvm itself fails (bad input, no KVM), as `docker run` uses 125.
const EXIT_RUNTIME_ERROR: u8 = 125;

#[derive(Parser)]
#[command(
    name = "microvm",
    about = "Run containers in KVM microVMs",
    disable_version_flag = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Print the version, as runc does (version, commit, spec)
    #[arg(short = 'v', long)]
    version: bool,
    #[command(flatten)]
    global: cli::oci::GlobalArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    Run(Box<cli::run::RunArgs>),
    Pack(cli::pack::PackArgs),
    Cache(cli::cache::CacheArgs),
    Boot(cli::boot::BootArgs),
    Check(cli::check::CheckArgs),
    #[command(flatten)]
    Oci(cli::oci::OciCommand),
}

fn main() -> ExitCode {
    let start = Instant::now();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colour codes only for a person: a caller that keeps our stderr gets plain lines.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match &cli.command {
        // Nothing a caller left open reaches the VMM...
        Some(Command::Run(_) | Command::Boot(_)) => jail::close_fds_from(3),
        // ...but the VMM process of a container keeps create's pipe.
        Some(Command::Oci(cli::oci::OciCommand::Monitor(_))) => {
            jail::close_fds_from(oci::monitor::GO_FD as u32 + 1)
        }
        // ...as a detached exec's stand-in keeps exec's.
        Some(Command::Oci(cli::oci::OciCommand::ExecProcess(_))) => {
            jail::close_fds_from(oci::exec::READY_FD as u32 + 1)
        }
        _ => {}
    }
    // runc's callers expect 1 from a failed verb; microvm's own commands use 125, as docker.
    let failure = match &cli.command {
        Some(Command::Oci(_)) => 1,
        _ => EXIT_RUNTIME_ERROR,
    };
    let result = match cli.command {
        None => {
            println!(
                "microvm version {}\ncommit: {}\nspec: {}",
                env!("CARGO_PKG_VERSION"),
                option_env!("MICROVM_COMMIT").unwrap_or("unknown"),
                cli::oci::OCI_VERSION
            );
            Ok(0)
        }
        Some(Command::Run(args)) => cli::run::run(*args, start),
        Some(Command::Pack(args)) => cli::pack::run(args),
        Some(Command::Cache(args)) => cli::cache::run(args),
        Some(Command::Boot(args)) => cli::boot::run(args, start),
        Some(Command::Check(args)) => cli::check::run(args),
        Some(Command::Oci(command)) => cli::oci::run(&cli.global, command, start),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("microvm: {}", errors::one_line(&e));
            ExitCode::from(failure)
        }
    }
}
