//! x86_64 specifics: memory layout, boot protocols, CPUID, registers and the MP table.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod regs;
