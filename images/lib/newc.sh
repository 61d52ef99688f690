# shellcheck shell=bash
# A writer for the "newc" cpio format (the one the kernel unpacks as an initramfs; see the
# kernel's Documentation/driver-api/early-userspace/buffer-format.rst), in plain bash.
#
# Why not cpio(1): it copies owners, modes and mtimes from files on disk, so /dev/console would
# need mknod (root) or fakeroot, and every file a fixed mtime. Writing the headers here takes
# every field from the caller instead: no root, and the same inputs give the same bytes.
#
# Each entry is a 110-byte ASCII header ("070701" + 13 fields of 8 hex digits), the name with
# its NUL, zero padding to 4 bytes, the data, zero padding to 4 bytes. The archive ends with an
# entry named TRAILER!!!. Source this file, then write entries to stdout:
#   newc_dir  NAME MODE                 e.g. newc_dir dev 0755
#   newc_char NAME MODE MAJOR MINOR     e.g. newc_char dev/console 0600 5 1
#   newc_file NAME MODE SOURCE_PATH     e.g. newc_file init 0755 ./smoke-init
#   newc_trailer
# Owner is root (0:0); mtime is $SOURCE_DATE_EPOCH, or 0; inode numbers count up from 1.

NEWC_INO=0

# newc_pad LEN: zero bytes up to the next multiple of 4 after LEN bytes.
newc_pad() {
    local pad=$(( (4 - $1 % 4) % 4 ))
    if (( pad > 0 )); then head -c "$pad" /dev/zero; fi
}

# newc_header NAME MODE(octal, with type bits) NLINK FILESIZE RDEVMAJOR RDEVMINOR
newc_header() {
    local name=$1 mode=$2 nlink=$3 size=$4 rmaj=$5 rmin=$6
    local namesize=$(( ${#name} + 1 )) ino=0
    if [[ $name != "TRAILER!!!" ]]; then
        NEWC_INO=$(( NEWC_INO + 1 ))
        ino=$NEWC_INO
    fi
    # Fields: magic ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
    # namesize check.
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$(( 8#$mode ))" 0 0 "$nlink" "${SOURCE_DATE_EPOCH:-0}" "$size" \
        0 0 "$rmaj" "$rmin" "$namesize" 0
    printf '%s\0' "$name"
    newc_pad $(( 110 + namesize ))
}

newc_dir() {
    newc_header "$1" "04$2" 2 0 0 0
}

newc_char() {
    newc_header "$1" "02$2" 1 0 "$3" "$4"
}

newc_file() {
    local size
    size=$(stat -L -c %s -- "$3")
    newc_header "$1" "010$2" 1 "$size" 0 0
    cat -- "$3"
    newc_pad "$size"
}

newc_trailer() {
    newc_header "TRAILER!!!" 0 1 0 0 0
}
