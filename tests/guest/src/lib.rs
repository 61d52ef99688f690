//! Tests that boot the project's Linux guest kernel. They need hardware KVM (or real KVM
//! nested in the test bed, tests/bed/nested.sh); `tests/run.sh` decides where they run.
