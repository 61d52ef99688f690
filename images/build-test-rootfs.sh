#!/usr/bin/env bash
# Builds the test root filesystems (directories, as a user or an OCI bundle would give them):
#   target/images/rootfs-busybox/  Debian's busybox-static with its applets, /etc/passwd
#                                  (root, user 1000), a non-executable /bin/not-executable,
#                                  and showids (static) with a setuid-root copy showids-suid
#   target/images/rootfs-dynamic/  a dynamically linked program (libc-hello) with the loader
#                                  and the C library it needs, copied in, and nothing else
# Prints the busybox rootfs path as the last line of stdout; everything else goes to stderr.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
out=$(cd -- "$here/.." && pwd)/target/images
missing=()
[[ -x /bin/busybox ]] && /bin/busybox --list >/dev/null 2>&1 || missing+=(busybox-static)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi
mkdir -p -- "$out"

# Build each tree next to its final place and rename it in, so a reader never sees half.
build_busybox() {
    local dir=$1
    mkdir -p "$dir"/{bin,etc,tmp,proc,sys,dev,root,home/user}
    cp /bin/busybox "$dir/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -s busybox "$dir/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$dir/etc/passwd"
    printf 'root:x:0:\nuser:x:1000:\n' >"$dir/etc/group"
    printf '#!/bin/sh\necho never runs\n' >"$dir/bin/not-executable"
    chmod 0644 "$dir/bin/not-executable"
    gcc -static -O2 -o "$dir/bin/showids" "$here/test-rootfs/showids.c"
    cp "$dir/bin/showids" "$dir/bin/showids-suid"
    chown 0:0 "$dir/bin/showids-suid"
    chmod 4755 "$dir/bin/showids-suid"
    chmod 1777 "$dir/tmp"
    chown 1000:1000 "$dir/home/user"
}

build_dynamic() {
    local dir=$1 lib
    mkdir -p "$dir"/{bin,tmp,proc,sys,dev}
    gcc -O2 -o "$dir/bin/libc-hello" "$here/test-rootfs/libc-hello.c"
    # The loader and libraries exactly as ldd resolves them, at the same paths.
    for lib in $(ldd "$dir/bin/libc-hello" | grep -o '/[^ ]*'); do
        mkdir -p "$dir$(dirname "$lib")"
        cp -L "$lib" "$dir$lib"
    done
}

for kind in busybox dynamic; do
    final=$out/rootfs-$kind
    tmp=$(mktemp -d "$final.XXXXXX")
    "build_$kind" "$tmp"
    chmod 0755 "$tmp"
    rm -rf -- "$final"
    mv -T -- "$tmp" "$final"
    echo "built $final ($(du -sh "$final" | cut -f1))" >&2
done
echo "$out/rootfs-busybox"
