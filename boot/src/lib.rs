//! Everything ivmm prepares before the first guest instruction, as plain data:
//! the machine's address map, kernel images placed in guest memory, boot
//! parameters, ACPI tables and CPUID. This crate never touches `/dev/kvm`.

pub mod acpi;
pub mod layout;
