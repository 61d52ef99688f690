#!/usr/bin/env bash
# Builds the smoke-test initramfs: smoke-init (a static Rust binary) as /init, plus /dev/console
# and empty /proc, /sys and /dev. Writes target/images/smoke-initramfs.cpio under the repository
# root and prints its absolute path as the last line of stdout; everything else goes to stderr.
# Runs from any directory; needs cargo, no root.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd -- "$here/.." && pwd)
# shellcheck source=SCRIPTDIR/lib/newc.sh
source "$here/lib/newc.sh"

target=x86_64-unknown-linux-gnu
# Its own target dir: RUSTFLAGS differ from the main build's, and sharing target/ would make
# each build throw away the other's cache. Stripping (an env override of the workspace release
# profile) keeps the initramfs, which the VMM copies into guest memory at every boot, small.
static_dir=$root/target/static
out_dir=$root/target/images
out=$out_dir/smoke-initramfs.cpio

echo "building smoke-init (static, release)" >&2
RUSTFLAGS='-C target-feature=+crt-static' CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --manifest-path "$root/Cargo.toml" --release \
    -p smoke-init --target "$target" --target-dir "$static_dir" >&2
init_bin=$static_dir/$target/release/smoke-init

# A dynamically linked /init would fail with ENOENT (no loader in the image); catch it here.
if ! file -b -- "$init_bin" | grep -Eq 'statically linked|static-pie linked'; then
    echo "error: $init_bin is not statically linked: $(file -b -- "$init_bin")" >&2
    exit 1
fi

mkdir -p -- "$out_dir"
tmp=$(mktemp -- "$out.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
{
    newc_dir dev 0755
    newc_char dev/console 0600 5 1
    newc_dir proc 0755
    newc_dir sys 0755
    newc_file init 0755 "$init_bin"
    newc_trailer
} >"$tmp"
chmod 0644 -- "$tmp"
mv -f -- "$tmp" "$out"
trap - EXIT

echo "wrote $out ($(stat -c %s -- "$out") bytes)" >&2
echo "$out"
