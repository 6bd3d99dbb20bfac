//! The ivmm virtual machine monitor: the VM and its vCPUs, the event loop,
//! device wiring and the command line.

pub mod img;
