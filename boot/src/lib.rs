//! Everything ivmm prepares before the first guest instruction, as plain data:
//! the machine's address map, kernel images placed in guest memory, boot
//! parameters, ACPI tables, initial vCPU state and CPUID. This crate never
//! touches `/dev/kvm`; it uses kvm-bindings only for its data types.

pub mod acpi;
pub mod cpu_model;
pub mod cpuid;
pub mod kernel;
pub mod layout;
pub mod memory_map;
pub mod params;
pub mod regs;
