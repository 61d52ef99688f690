//! `microvm pack ROOTFS`: packs a root filesystem directory into the image `run` would use
//! (or finds it in the cache) and prints its path, so images can be prepared ahead of time.

use std::path::PathBuf;

use clap::Args;

/// Pack a root filesystem directory into its cached EROFS image and print the image's path
#[derive(Args)]
pub struct PackArgs {
    rootfs: PathBuf,
}

pub fn run(args: PackArgs) -> anyhow::Result<u8> {
    let cache = crate::layout::Layout::load()?.image_cache()?.path;
    let packed = crate::rootfs::pack(&args.rootfs, &cache)?;
    println!("{}", packed.image.display());
    eprintln!("microvm: {}", if packed.cached { "cached" } else { "packed" });
    Ok(0)
}
