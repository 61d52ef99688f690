//! The kernel loader on arbitrary files: [`boot::load_kernel`] (ELF vmlinux, with or without
//! the PVH note, or bzImage, through linux-loader) into a 16 MiB guest built as the VMM
//! builds it, then, for a kernel it accepts, [`boot::load_initrd`] above it and
//! [`boot::write_boot_info`] for its entry mode. The input is the file; it reaches the loader
//! through a path, as in the VMM (a memfd seen as `/proc/self/fd/N`, rewritten per input).
//!
//! Checked: no panic, no abort on a huge allocation (libFuzzer's -rss_limit_mb /
//! -malloc_limit_mb), and an accepted image lies inside guest memory.

#![no_main]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm::arch::x86_64::boot;
use vmm::vstate::vm::create_guest_memory;

const MEM_BYTES: u64 = 16 << 20;

struct Bed {
    mem: GuestMemoryMmap,
    file: File,
    path: PathBuf,
}

fn bed() -> &'static Mutex<Bed> {
    static BED: OnceLock<Mutex<Bed>> = OnceLock::new();
    BED.get_or_init(|| {
        let mem = create_guest_memory(MEM_BYTES, false).expect("guest memory");
        // SAFETY: a plain system call with a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"kernel".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Mutex::new(Bed { mem, file, path })
    })
}

/// `FUZZ_VERBOSE=1`: print what the loader made of each input (to check seeds).
fn verbose() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("FUZZ_VERBOSE").is_some())
}

fuzz_target!(|data: &[u8]| {
    let bed = bed().lock().expect("lock");
    bed.file.set_len(0).expect("truncate");
    bed.file.write_all_at(data, 0).expect("write");
    (&bed.file).flush().expect("flush");

    let loaded = boot::load_kernel(&bed.mem, &bed.path);
    if verbose() {
        eprintln!("load_kernel: {loaded:x?}");
    }
    let Ok(kernel) = loaded else { return };
    let end = bed.mem.last_addr().0 + 1;
    assert!(kernel.end <= end, "kernel end {:#x} beyond guest memory {end:#x}", kernel.end);
    // The same bytes as an initrd above the kernel, then the boot information.
    let initrd = boot::load_initrd(&bed.mem, &bed.path, kernel.end).ok();
    if let Some((addr, size)) = initrd {
        assert!(addr >= kernel.end && addr + size <= end, "initrd {addr:#x}+{size:#x}");
    }
    let _ = boot::write_boot_info(&bed.mem, &kernel, "console=ttyS0 reboot=k panic=-1", initrd, MEM_BYTES);
});
