//! `--net nat`: the services each ivmm process runs on its NAT network's gateway address.

pub mod dhcp;
pub mod dns;
pub mod leases;
