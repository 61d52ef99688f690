//! `linux.seccomp`, compiled and installed with the `oci-seccomp` crate.

use oci_spec::runtime::LinuxSeccomp;

use super::fail::Failure;

pub struct Filter(oci_seccomp::Compiled);

pub fn compile(seccomp: &LinuxSeccomp) -> Result<Filter, Failure> {
    oci_seccomp::compile(seccomp)
        .map(Filter)
        .map_err(|e| Failure::new("compile the seccomp profile", e))
}

pub fn apply(filter: &Filter) -> Result<(), Failure> {
    oci_seccomp::apply(&filter.0.programs)
        .map_err(|e| Failure::new("install the seccomp filter", e))
}
