//! Writes a tiny guest to a file, for benchmarks:
//! `tiny-guest OUT.elf reset` (boot-timer write, then i8042 reset; the default) or
//! `tiny-guest OUT.elf park` (boot-timer write, then halted with interrupts on, forever).

use std::process::ExitCode;

use test_support::tiny::{elf, program, BOOT_TIMER, I8042_RESET, STI_HLT_LOOP};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.get(1).map(String::as_str) {
        None | Some("reset") => program(&[BOOT_TIMER, I8042_RESET]),
        Some("park") => program(&[BOOT_TIMER, STI_HLT_LOOP]),
        Some(other) => {
            eprintln!("tiny-guest: unknown kind {other:?} (reset or park)");
            return ExitCode::from(2);
        }
    };
    let Some(path) = args.first() else {
        eprintln!("usage: tiny-guest OUT.elf [reset|park]");
        return ExitCode::from(2);
    };
    match std::fs::write(path, elf(&code)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tiny-guest: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
