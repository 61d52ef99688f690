//! `microvm cache prune [--all]`: removes packed root filesystem images from the image cache,
//! the least recently used first, down to the cache's limit (`cache_limit_mib` in the config
//! file) or, with `--all`, every image not used in the last minute.

use clap::{Args, Subcommand};

/// Manage the image cache (packed root filesystems)
#[derive(Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Remove the least recently used images down to the cache's limit
    Prune {
        /// Remove every image not in use (used in the last minute)
        #[arg(long)]
        all: bool,
    },
}

pub fn run(args: CacheArgs) -> anyhow::Result<u8> {
    let CacheCommand::Prune { all } = args.command;
    let layout = crate::layout::Layout::load()?;
    let cache = layout.image_cache()?.path;
    let limit = if all { 0 } else { layout.cache_limit() };
    let pruned = crate::rootfs::prune(&cache, limit)?;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "removed {} images ({:.1} MiB); {} left ({:.1} MiB) in {}",
        pruned.removed,
        mib(pruned.freed),
        pruned.kept,
        mib(pruned.size),
        cache.join("rootfs").display()
    );
    Ok(0)
}
