//! The ivmm virtual machine monitor: the VM and its vCPUs, the event loop,
//! device wiring and the command line.

pub mod cli;
pub mod config;
pub mod control;
pub mod cpu_cmd;
pub mod event_loop;
pub mod img;
pub mod interrupts;
pub mod logger;
pub mod nat;
pub mod pci_devices;
pub mod run;
pub mod seccomp;
pub mod snapshot;
pub mod spawner;
pub mod terminal;
pub mod vcpu;
pub mod vm;
