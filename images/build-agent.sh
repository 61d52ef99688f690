#!/usr/bin/env bash
# Builds the guest agent (guest-agent/) as a static binary, the /init of every `microvm run`
# guest, and prints its path as the last line of stdout; everything else goes to stderr.
# microvm finds it as runtime/src/layout.rs says: --agent, $MICROVM_AGENT, the config file,
# install.sh's place (PREFIX/lib/microvm/microvm-agent), or this build's place under target/static.
set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
target=x86_64-unknown-linux-gnu
# Own target dir: other RUSTFLAGS than the main build (see build-smoke-initramfs.sh).
RUSTFLAGS='-C target-feature=+crt-static' CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --manifest-path "$root/Cargo.toml" --release -p guest-agent \
    --target "$target" --target-dir "$root/target/static" >&2
bin=$root/target/static/$target/release/guest-agent
if ! file -b -- "$bin" | grep -Eq 'statically linked|static-pie linked'; then
    echo "error: $bin is not statically linked: $(file -b -- "$bin")" >&2
    exit 1
fi
echo "$bin"
