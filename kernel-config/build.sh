#!/usr/bin/env bash
# Build (or fetch from cache) the microvm guest kernel: Linux 6.1 from Debian's
# linux-source-6.1 package, `make tinyconfig` + kernel-config/microvm.config.
#
# Usage:
#   KDIR=$(kernel-config/build.sh)        # build if needed; last stdout line = cache dir
#   kernel-config/build.sh --print-dir    # print the cache dir; exit 1 if not built yet
#
# Cache: ${MICROVM_CACHE:-$HOME/.cache/microvm}/kernel/<key>/{vmlinux,bzImage,config,build-seconds}
# key = sha256 over: this script, microvm.config, the linux-source-6.1 package version and
# `gcc --version`. Entries are built in a temp dir next to them and renamed into place, so
# a killed build never leaves a partial entry. All progress output goes to stderr.
set -euo pipefail

exec 3>&1 1>&2   # fd 3 = real stdout (only the final path goes there)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$HERE/microvm.config"
SRC_PKG=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz
# lz4: CONFIG_KERNEL_LZ4 compresses the bzImage payload with the lz4 tool.
# xz-utils: to unpack the source tarball.
PKGS=(linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev lz4 xz-utils)
CACHE_ROOT="${MICROVM_CACHE:-$HOME/.cache/microvm}/kernel"

log() { printf 'kernel-config/build.sh: %s\n' "$*"; }
die() { log "ERROR: $*"; exit 1; }

print_dir_only=0
case "${1:-}" in
  "") ;;
  --print-dir) print_dir_only=1 ;;
  -h|--help) sed -n '2,12p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (use --print-dir or no argument)" ;;
esac

[[ $(uname -m) == x86_64 ]] || die "only x86_64 hosts are supported (no cross build)"
[[ -f $FRAGMENT ]] || die "missing $FRAGMENT"

missing_pkgs() {   # one dpkg-query call: keeps the warm path fast
  local -A ok=()
  local p st
  while read -r p st; do [[ $st == installed ]] && ok[$p]=1; done \
    < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PKGS[@]}" 2>/dev/null || true)
  for p in "${PKGS[@]}"; do [[ -n ${ok[$p]:-} ]] || printf '%s\n' "$p"; done
}

cache_key() {
  local ver gccv
  ver=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) || return 1
  gccv=$(gcc --version 2>/dev/null) || return 1
  {
    printf 'script\n'; cat "$SELF"
    printf '\nfragment\n'; cat "$FRAGMENT"
    printf '\n%s-version %s\n' "$SRC_PKG" "$ver"
    printf 'gcc\n%s\n' "$gccv"
  } | sha256sum | cut -d' ' -f1
}

# `kernel/current` names the newest entry used, for `microvm` to find by default. Replaced
# atomically (new link, then rename over the old one).
point_current() {
  ln -sfn "$key" "$CACHE_ROOT/.current.$$"
  mv -T "$CACHE_ROOT/.current.$$" "$CACHE_ROOT/current"
}

entry_complete() {
  local d=$1 f
  for f in vmlinux bzImage config build-seconds; do [[ -s $d/$f ]] || return 1; done
}

if (( print_dir_only )); then
  key=$(cache_key) || { log "toolchain or $SRC_PKG not installed: nothing built"; exit 1; }
  dir="$CACHE_ROOT/$key"
  echo "$dir" >&3
  entry_complete "$dir" || exit 1
  exit 0
fi

# --- dependencies (apt only when something is missing) ----------------------------------
mapfile -t need < <(missing_pkgs)
if (( ${#need[@]} )); then
  SUDO=(); (( EUID == 0 )) || SUDO=(sudo)
  log "installing missing packages: ${need[*]}"
  "${SUDO[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y --no-install-recommends "${need[@]}"
fi
[[ -f $TARBALL ]] || die "$TARBALL not found after installing $SRC_PKG"

key=$(cache_key) || die "could not compute cache key"
dir="$CACHE_ROOT/$key"

# --- warm path --------------------------------------------------------------------------
if entry_complete "$dir"; then
  log "cached: $dir"
  point_current
  echo "$dir" >&3
  exit 0
fi

# --- cold path --------------------------------------------------------------------------
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
log "waiting for build lock $CACHE_ROOT/.lock"
flock 9
if entry_complete "$dir"; then   # someone else built it while we waited
  log "cached (built concurrently): $dir"
  point_current
  echo "$dir" >&3
  exit 0
fi
# We hold the lock, so any leftover temp dir is from a killed build.
rm -rf "$CACHE_ROOT"/.tmp.* "$dir"

tmp=$(mktemp -d "$CACHE_ROOT/.tmp.$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

log "cold build in $tmp (key $key)"
log "extracting $TARBALL"
tar -C "$tmp" -xJf "$TARBALL"
src="$tmp/linux-source-6.1"
[[ -f $src/Makefile ]] || die "unexpected tarball layout (no linux-source-6.1/Makefile)"

MAKE=(make -C "$src" ARCH=x86_64 KBUILD_BUILD_USER=microvm KBUILD_BUILD_HOST=microvm)

log "configuring: tinyconfig + $(basename "$FRAGMENT")"
"${MAKE[@]}" tinyconfig
(cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$FRAGMENT")
"${MAKE[@]}" olddefconfig

# Kconfig silently drops symbols whose dependencies are not met: check every explicit
# `=y` and `is not set` line of the fragment against the final .config.
mismatches=()
while IFS= read -r line || [[ -n $line ]]; do
  line=${line%"${line##*[![:space:]]}"}
  if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=y$ ]]; then
    sym=${BASH_REMATCH[1]}
    if ! grep -qx "$sym=y" "$src/.config"; then
      got=$(grep -E "^(# )?${sym}[= ]" "$src/.config" || true)
      mismatches+=("$sym: wanted =y, got '${got:-absent (dependencies not met)}'")
    fi
  elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    sym=${BASH_REMATCH[1]}
    if got=$(grep -E "^$sym=" "$src/.config"); then
      mismatches+=("$sym: wanted unset, got '$got' (selected or forced by another option)")
    fi
  fi
done < "$FRAGMENT"
if (( ${#mismatches[@]} )); then
  log "CONFIG VERIFICATION FAILED: ${#mismatches[@]} option(s) of $FRAGMENT did not stick:"
  printf '  %s\n' "${mismatches[@]}"
  exit 1
fi
log "config verified: $(grep -c '=y$' "$src/.config") options =y"

log "building vmlinux bzImage with -j$(nproc)"
"${MAKE[@]}" -j"$(nproc)" vmlinux bzImage

out="$tmp/out"
mkdir "$out"
cp "$src/vmlinux" "$out/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
cp "$src/.config" "$out/config"
echo $(( $(date +%s) - start )) > "$out/build-seconds"
mv -T "$out" "$dir"
log "built in $(cat "$dir/build-seconds")s: $dir"
log "  vmlinux $(stat -c %s "$dir/vmlinux") bytes, bzImage $(stat -c %s "$dir/bzImage") bytes"
point_current
echo "$dir" >&3
