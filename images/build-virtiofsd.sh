#!/usr/bin/env bash
# Installs virtiofsd (the Rust one, from crates.io) into a cache outside the repository and
# prints its path as the last line of stdout; everything else goes to stderr. Volumes
# (virtio-fs) need it: one virtiofsd per sandbox serves the shared directories.
#
# Cache: ${MICROVM_CACHE:-$HOME/.cache/microvm}/virtiofsd/VERSION/bin/virtiofsd, keyed by the
# pinned version, and virtiofsd/current naming it (where microvm looks when nothing else names
# a virtiofsd, see runtime/src/layout.rs); a cold install takes a few minutes (it needs libcap-ng-dev and
# libseccomp-dev, installed here when missing).
set -euo pipefail

VERSION=1.14.0
cache=${MICROVM_CACHE:-$HOME/.cache/microvm}/virtiofsd
root=$cache/$VERSION
bin=$root/bin/virtiofsd
if [[ ! -x $bin ]]; then
    need=()
    for p in libcap-ng-dev libseccomp-dev pkg-config; do
        dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || need+=("$p")
    done
    if ((${#need[@]})); then
        echo "build-virtiofsd.sh: installing ${need[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
    fi
    # Into a temporary root renamed into place, so a killed install leaves no half entry.
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    cargo install --locked --quiet --root "$tmp" "virtiofsd@$VERSION" >&2
    rm -rf "$root"
    chmod 0755 "$tmp"
    mv -T "$tmp" "$root"
    trap - EXIT
fi
# Replaced atomically, and only when it names another version (the cache may be read-only
# where it is only read, as in the nested bed).
if [[ $(readlink "$cache/current" 2>/dev/null) != "$VERSION" ]]; then
    ln -sfn "$VERSION" "$cache/.current.$$"
    mv -T "$cache/.current.$$" "$cache/current"
fi
echo "$bin"
