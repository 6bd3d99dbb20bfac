//! Host-side checks of the generated tables: their structure, by parsing the
//! bytes back, and their acceptance by ACPICA's own tools (`iasl`,
//! `acpiexec`), the code Linux runs. The tools come from acpica-tools; a
//! missing tool fails the test, it never skips.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::irq::{self, Polarity, Trigger};
use super::*;
use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, APIC_START, IOAPIC_ID, IOAPIC_START, MMIO32_START, MMIO64_SIZE,
};

const TEST_MMIO64_START: u64 = 0x2_0000_0000;
const HEADER_LEN: usize = 36;

// ---- helpers ------------------------------------------------------------------

fn cfg_with_ids(apic_ids: Vec<u32>) -> AcpiConfig {
    AcpiConfig {
        apic_ids,
        mmio64: (TEST_MMIO64_START, MMIO64_SIZE),
    }
}

fn cfg(vcpus: u32) -> AcpiConfig {
    cfg_with_ids((0..vcpus).collect())
}

fn build_ok(cfg: &AcpiConfig) -> AcpiTables {
    build(cfg).expect("tables build")
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn byte_sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
}

/// The blob at guest address `addr`.
fn blob_at(t: &AcpiTables, addr: u64) -> &[u8] {
    t.blobs
        .iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, b)| b.as_slice())
        .unwrap_or_else(|| panic!("no table at {addr:#x}"))
}

/// The one SDT with signature `sig` and its address.
fn sdt<'a>(t: &'a AcpiTables, sig: &[u8; 4]) -> (u64, &'a [u8]) {
    let mut found = t.blobs.iter().filter(|(_, b)| b.starts_with(sig));
    let (addr, bytes) = found.next().expect("table present");
    assert!(found.next().is_none(), "duplicate {sig:?}");
    (*addr, bytes)
}

/// MADT interrupt controller structures as (type, bytes).
fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
    let mut entries = Vec::new();
    let mut off = 44;
    while off < madt.len() {
        let (ty, len) = (madt[off], usize::from(madt[off + 1]));
        assert!(
            len >= 2 && off + len <= madt.len(),
            "bad MADT entry at {off}"
        );
        entries.push((ty, &madt[off..off + len]));
        off += len;
    }
    assert_eq!(off, madt.len(), "MADT entries must end at the table end");
    entries
}

/// (processor UID, APIC ID, MADT entry type) of each enabled processor.
fn madt_processors(madt: &[u8]) -> Vec<(u32, u32, u8)> {
    madt_entries(madt)
        .into_iter()
        .filter_map(|(ty, e)| match ty {
            0 => {
                assert_eq!(e.len(), 8);
                assert_eq!(u32_at(e, 4), 1, "LAPIC must be enabled");
                Some((u32::from(e[2]), u32::from(e[3]), ty))
            }
            9 => {
                assert_eq!(e.len(), 16);
                assert_eq!(u32_at(e, 8), 1, "x2APIC must be enabled");
                Some((u32_at(e, 12), u32_at(e, 4), ty))
            }
            _ => None,
        })
        .collect()
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ivmm-acpi-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes every SDT (not the RSDP, which iasl cannot read on its own) as
/// `<signature>.dat` and returns the file names.
fn write_tables(dir: &Path, t: &AcpiTables) -> Vec<String> {
    t.blobs
        .iter()
        .filter(|(_, b)| !b.starts_with(b"RSD PTR "))
        .map(|(_, b)| {
            let name = format!("{}.dat", String::from_utf8_lossy(&b[..4]).to_lowercase());
            std::fs::write(dir.join(&name), b).unwrap();
            name
        })
        .collect()
}

/// Runs an acpica-tools program in `dir`; returns stdout + stderr. Fails the
/// test if the tool is missing or exits with an error.
fn run_tool(dir: &Path, tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{tool}` ({e}): install acpica-tools, run scripts/setup.sh")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

/// iasl reports problems (bad checksum, truncated structure, ...) as lines
/// with "Error" or "Warning"; its banner contains neither word.
fn assert_no_diagnostics(what: &str, text: &str) {
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") || l.contains("Warning") || l.contains("****"))
        .collect();
    assert!(bad.is_empty(), "{what}: {bad:#?}\n{text}");
}

/// Parses iasl's "Compilation successful. 0 Errors, 0 Warnings, 0 Remarks"
/// summary and requires all three counts to be zero.
fn assert_clean_compile(what: &str, text: &str) {
    let summary = text
        .lines()
        .find(|l| l.starts_with("Compilation successful."))
        .unwrap_or_else(|| panic!("{what}: no compile summary:\n{text}"));
    for kind in ["Errors", "Warnings", "Remarks"] {
        assert!(
            summary.contains(&format!(" 0 {kind}")),
            "{what}: {summary}\n{text}"
        );
    }
}

/// Loads the tables into acpiexec and runs debugger `commands`.
fn acpiexec(t: &AcpiTables, extra_args: &[&str], commands: &str) -> String {
    let dir = TempDir::new();
    let files = write_tables(&dir.0, t);
    // acpiexec makes its own RSDP/XSDT; ours would be a second XSDT.
    let mut args: Vec<&str> = extra_args.to_vec();
    args.extend(["-b", commands]);
    args.extend(
        files
            .iter()
            .map(String::as_str)
            .filter(|f| *f != "xsdt.dat"),
    );
    let out = run_tool(&dir.0, "acpiexec", &args);
    assert!(
        !out.contains("ACPI Error") && !out.contains("ACPI Exception"),
        "acpiexec reported a failure:\n{out}"
    );
    out
}

// ---- structure -------------------------------------------------------------------

#[test]
fn build_every_sdt_has_zero_checksum_and_matching_length() {
    for vcpus in [1, 2, 4, 255, 288] {
        let t = build_ok(&cfg(vcpus));
        for (addr, b) in t.blobs.iter().skip(1) {
            assert!(b.len() >= HEADER_LEN, "table at {addr:#x} too short");
            assert_eq!(u32_at(b, 4) as usize, b.len(), "length of {:?}", &b[..4]);
            assert_eq!(byte_sum(b), 0, "checksum of {:?}", &b[..4]);
            assert_eq!(&b[10..16], b"IVMM  ", "OEM ID of {:?}", &b[..4]);
        }
    }
}

#[test]
fn build_rsdp_is_first_with_both_checksums() {
    let t = build_ok(&cfg(2));
    assert_eq!(t.rsdp_addr, ACPI_START);
    let (addr, rsdp) = &t.blobs[0];
    assert_eq!(*addr, ACPI_START);
    assert_eq!(rsdp.len(), 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(byte_sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(byte_sum(rsdp), 0, "extended checksum");
    assert_eq!(u32_at(rsdp, 16), 0, "no RSDT");
    assert_eq!(u32_at(rsdp, 20), 36, "length");
    let xsdt = blob_at(&t, u64_at(rsdp, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
}

#[test]
fn build_places_blobs_in_order_inside_acpi_area() {
    for vcpus in [1, 4, 288] {
        let t = build_ok(&cfg(vcpus));
        let mut next = ACPI_START;
        for (addr, b) in &t.blobs {
            assert!(*addr >= next, "overlap at {addr:#x}");
            assert_eq!(addr % 16, 0, "alignment of {addr:#x}");
            next = addr + b.len() as u64;
        }
        assert!(next <= ACPI_START + ACPI_SIZE);
    }
}

#[test]
fn build_xsdt_points_at_fadt_madt_mcfg_and_fadt_at_dsdt() {
    let t = build_ok(&cfg(4));
    let (_, xsdt) = sdt(&t, b"XSDT");
    assert_eq!(xsdt[8], 1, "XSDT revision");
    let sigs: Vec<&[u8]> = (HEADER_LEN..xsdt.len())
        .step_by(8)
        .map(|off| &blob_at(&t, u64_at(xsdt, off))[..4])
        .collect();
    assert_eq!(sigs, [b"FACP", b"APIC", b"MCFG"]);

    let (dsdt_addr, _) = sdt(&t, b"DSDT");
    let (_, fadt) = sdt(&t, b"FACP");
    assert_eq!(
        u32_at(fadt, 40),
        0,
        "32-bit DSDT must be 0 when X_DSDT is set"
    );
    assert_eq!(u64_at(fadt, 140), dsdt_addr, "X_DSDT");
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
    let t = build_ok(&cfg(1));
    let (_, f) = sdt(&t, b"FACP");
    assert_eq!(f.len(), 276);
    assert_eq!((f[8], f[131]), (6, 5), "FADT 6.5");
    let flags = u32_at(f, 112);
    for (bit, name) in [
        (0, "WBINVD"),
        (4, "PWR_BUTTON"),
        (5, "SLP_BUTTON"),
        (6, "FIX_RTC"),
        (10, "RESET_REG_SUP"),
        (20, "HW_REDUCED_ACPI"),
    ] {
        assert_ne!(flags & (1 << bit), 0, "{name}");
    }
    assert_eq!(flags, 0x0010_0471, "no other flag");
    assert_eq!(u16_at(f, 109), 0b1_0100, "IAPC_BOOT_ARCH: no VGA, no ASPM");
    // GAS: SystemIO, 8 bits, offset 0, byte access, port.
    let gas = |off: usize| {
        (
            f[off],
            f[off + 1],
            f[off + 2],
            f[off + 3],
            u64_at(f, off + 4),
        )
    };
    assert_eq!(gas(116), (1, 8, 0, 1, u64::from(ACPI_RESET_PORT)));
    assert_eq!(f[128], ACPI_RESET_VALUE);
    assert_eq!(gas(244), (1, 8, 0, 1, u64::from(ACPI_SLEEP_CONTROL_PORT)));
    assert_eq!(gas(256), (1, 8, 0, 1, u64::from(ACPI_SLEEP_STATUS_PORT)));
    // No FACS, no SCI, no legacy blocks: all zero from FIRMWARE_CTRL to the
    // end of the fixed blocks, and from X_FIRMWARE_CTRL past X_DSDT.
    assert!(f[36..40].iter().all(|&b| b == 0), "FIRMWARE_CTRL");
    assert!(f[44..109].iter().all(|&b| b == 0), "legacy fields");
    assert!(f[132..140].iter().all(|&b| b == 0), "X_FIRMWARE_CTRL");
    assert!(f[148..244].iter().all(|&b| b == 0), "X_ PM/GPE blocks");
    assert_eq!(&f[268..276], b"IVMM-KVM");
}

#[test]
fn madt_has_one_enabled_lapic_per_vcpu() {
    for vcpus in [1u32, 2, 4, 255, 256, 288] {
        let t = build_ok(&cfg(vcpus));
        let (_, madt) = sdt(&t, b"APIC");
        assert_eq!(madt[8], 6, "MADT revision");
        assert_eq!(u32_at(madt, 36), APIC_START as u32);
        assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
        let cpus = madt_processors(madt);
        assert_eq!(cpus.len(), vcpus as usize);
        for (i, &(uid, apic_id, ty)) in cpus.iter().enumerate() {
            assert_eq!((uid, apic_id), (i as u32, i as u32));
            assert_eq!(
                ty,
                if apic_id <= 254 { 0 } else { 9 },
                "entry type of {apic_id}"
            );
        }
    }
}

#[test]
fn madt_keeps_given_sparse_apic_ids() {
    let ids = vec![0, 2, 4, 6, 254, 255, 1000];
    let t = build_ok(&cfg_with_ids(ids.clone()));
    let (_, madt) = sdt(&t, b"APIC");
    let got: Vec<u32> = madt_processors(madt).iter().map(|p| p.1).collect();
    assert_eq!(got, ids);
}

#[test]
fn madt_has_ioapic_timer_override_and_lint1_nmi() {
    for (vcpus, x2apic) in [(2, false), (300, true)] {
        let t = build_ok(&cfg(vcpus));
        let (_, madt) = sdt(&t, b"APIC");
        let entries = madt_entries(madt);
        let of_type = |ty| {
            entries
                .iter()
                .filter(move |(t, _)| *t == ty)
                .map(|(_, e)| *e)
        };

        let ioapics: Vec<&[u8]> = of_type(1).collect();
        assert_eq!(ioapics.len(), 1);
        let io = ioapics[0];
        assert_eq!(
            (io[2], u32_at(io, 4), u32_at(io, 8)),
            (IOAPIC_ID, IOAPIC_START as u32, 0)
        );

        let isos: Vec<&[u8]> = of_type(2).collect();
        assert_eq!(isos.len(), 1, "only IRQ0 is overridden");
        let iso = isos[0];
        // ISA bus, IRQ 0 -> GSI 2, edge (01) active high (01).
        assert_eq!(
            (iso[2], iso[3], u32_at(iso, 4), u16_at(iso, 8)),
            (0, 0, 2, 0b0101)
        );

        let nmis: Vec<&[u8]> = of_type(4).collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!(
            (nmis[0][2], u16_at(nmis[0], 3), nmis[0][5]),
            (0xff, 0b0101, 1)
        );

        let x2nmis: Vec<&[u8]> = of_type(0xa).collect();
        assert_eq!(x2nmis.len(), usize::from(x2apic));
        if let Some(n) = x2nmis.first() {
            assert_eq!((u16_at(n, 2), u32_at(n, 4), n[8]), (0b0101, u32::MAX, 1));
        }
    }
}

#[test]
fn mcfg_describes_ecam_of_segment_bus_range() {
    let t = build_ok(&cfg(1));
    let (_, m) = sdt(&t, b"MCFG");
    assert_eq!(m.len(), HEADER_LEN + 8 + 16, "one allocation");
    assert_eq!(u64_at(m, 44), ECAM_START);
    assert_eq!(u16_at(m, 52), PCI_SEGMENT);
    assert_eq!((m[54], m[55]), (PCI_BUS_START, PCI_BUS_END));
}

#[test]
fn dsdt_crs_carries_mmio64_window_from_config() {
    let start = 0x40_0000_0000;
    let size = 0x8_0000_0000;
    let t = build_ok(&AcpiConfig {
        apic_ids: vec![0],
        mmio64: (start, size),
    });
    let (_, dsdt) = sdt(&t, b"DSDT");
    // QWordMemory body: granularity 0, min, max, translation 0, length.
    let mut want = Vec::new();
    for v in [0, start, start + size - 1, 0, size] {
        want.extend_from_slice(&u64::to_le_bytes(v));
    }
    assert!(dsdt.windows(want.len()).any(|w| w == want.as_slice()));
}

#[test]
fn build_is_deterministic() {
    assert_eq!(build_ok(&cfg(3)), build_ok(&cfg(3)));
}

// ---- errors --------------------------------------------------------------------

#[test]
fn build_rejects_bad_vcpu_lists() {
    assert_eq!(build(&cfg(0)), Err(AcpiError::NoVcpus));
    assert_eq!(
        build(&cfg_with_ids(vec![0, 1, 1])),
        Err(AcpiError::DuplicateApicId(1))
    );
    assert_eq!(
        build(&cfg_with_ids(vec![0, u32::MAX])),
        Err(AcpiError::InvalidApicId(u32::MAX))
    );
    // vCPU 256 has an xAPIC ID, but a Local APIC entry's UID is one byte.
    let mut ids: Vec<u32> = (1000..1256).collect();
    ids.push(7);
    assert_eq!(
        build(&cfg_with_ids(ids)),
        Err(AcpiError::ProcessorUidTooLarge {
            index: 256,
            apic_id: 7
        })
    );
}

#[test]
fn build_rejects_too_many_vcpus_for_acpi_area() {
    // 16-byte x2APIC entries: 10000 of them exceed the 128 KiB area.
    let err = build(&cfg_with_ids((0..10_000).map(|i| i + 1000).collect())).unwrap_err();
    assert!(
        matches!(err, AcpiError::DoesNotFit { table: "APIC", available, .. } if available == ACPI_SIZE),
        "{err}"
    );
}

#[test]
fn build_rejects_bad_mmio64_window() {
    for (start, size) in [
        (TEST_MMIO64_START, 0),
        (MMIO32_START, 0x1000),
        (u64::MAX - 0xfff, 0x2000),
    ] {
        let cfg = AcpiConfig {
            apic_ids: vec![0],
            mmio64: (start, size),
        };
        assert_eq!(build(&cfg), Err(AcpiError::InvalidMmio64 { start, size }));
    }
    // The last byte of the address space is fine.
    let cfg = AcpiConfig {
        apic_ids: vec![0],
        mmio64: (u64::MAX - 0xfff, 0x1000),
    };
    assert!(build(&cfg).is_ok());
}

// ---- interrupt lines -----------------------------------------------------------

#[test]
fn pci_intx_swizzles_over_four_level_low_gsis() {
    let gsi = |slot, pin| irq::pci_intx_irq(slot, pin).unwrap().gsi;
    assert_eq!(
        [gsi(0, 0), gsi(0, 3), gsi(1, 0), gsi(1, 3), gsi(31, 1)],
        [16, 19, 17, 16, 16]
    );
    let line = irq::pci_intx_irq(5, 2).unwrap();
    assert_eq!(
        (line.trigger, line.polarity),
        (Trigger::Level, Polarity::ActiveLow)
    );
    assert_eq!(irq::pci_intx_irq(32, 0), None);
    assert_eq!(irq::pci_intx_irq(0, 4), None);
}

#[test]
fn irq_lines_lists_each_driven_gsi_once() {
    let lines = irq::irq_lines();
    let gsis: HashSet<u32> = lines.iter().map(|l| l.gsi).collect();
    assert_eq!(gsis.len(), lines.len());
    let by_gsi: HashMap<u32, (Trigger, Polarity)> = lines
        .iter()
        .map(|l| (l.gsi, (l.trigger, l.polarity)))
        .collect();
    let edge_high = (Trigger::Edge, Polarity::ActiveHigh);
    let level_low = (Trigger::Level, Polarity::ActiveLow);
    assert_eq!(by_gsi[&4], edge_high, "COM1");
    assert_eq!(by_gsi[&8], edge_high, "RTC");
    assert_eq!(by_gsi[&9], edge_high, "GED");
    for gsi in 16..20 {
        assert_eq!(by_gsi[&gsi], level_low, "PCI INTx");
    }
}

// ---- ACPICA tools ---------------------------------------------------------------

#[test]
fn iasl_disassembles_and_recompiles_every_table_cleanly() {
    for vcpus in [1, 300] {
        let t = build_ok(&cfg(vcpus));
        let dir = TempDir::new();
        let files = write_tables(&dir.0, &t);
        assert_eq!(files.len(), 5);
        for file in &files {
            let out = run_tool(&dir.0, "iasl", &["-d", file]);
            assert_no_diagnostics(&format!("iasl -d {file}"), &out);
            assert!(
                out.contains("Binary file appears to be a valid ACPI table"),
                "{out}"
            );
            let dsl = file.replace(".dat", ".dsl");
            let text = std::fs::read_to_string(dir.0.join(&dsl)).unwrap();
            assert_no_diagnostics(&dsl, &text);
            // Recompiling runs iasl's semantic checks (predefined names,
            // resource descriptors, data table fields).
            let stem = file.replace(".dat", "-re");
            let out = run_tool(&dir.0, "iasl", &["-p", &stem, &dsl]);
            assert_clean_compile(&format!("iasl {dsl}"), &out);
        }
    }
}

#[test]
fn iasl_dsdt_disassembly_lists_expected_devices() {
    let t = build_ok(&cfg(2));
    let dir = TempDir::new();
    write_tables(&dir.0, &t);
    run_tool(&dir.0, "iasl", &["-d", "dsdt.dat"]);
    let dsl = std::fs::read_to_string(dir.0.join("dsdt.dsl")).unwrap();
    for needle in [
        "Name (\\_S5, Package (0x02)",
        "Device (PCI0)",
        "EisaId (\"PNP0A08\")",
        "EisaId (\"PNP0A03\")",
        "Name (_PRT, Package (0x80)",
        "Method (_OSC, 4, Serialized)",
        "EisaId (\"PNP0C02\")",
        "EisaId (\"PNP0501\")",
        "EisaId (\"PNP0B00\")",
        "\"QEMU0001\"",
        "EisaId (\"PNP0C0C\")",
        "\"ACPI0013\"",
        "OperationRegion (GEDR, SystemIO, 0x0604, 0x04)",
        "Method (_EVT, 1, Serialized)",
        "Notify (\\_SB.PWRB, 0x80)",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "Memory32Fixed (ReadWrite,",
        "0xE0000000,         // Address Base",
    ] {
        assert!(dsl.contains(needle), "missing `{needle}` in:\n{dsl}");
    }
    assert!(!dsl.contains("PNP0303"), "no i8042 device");
}

#[test]
fn acpiexec_s5_uses_extended_sleep_registers() {
    let out = acpiexec(&build_ok(&cfg(1)), &[], "sleep 5");
    assert!(
        out.contains(&format!("Sleep-A: {ACPI_S5_SLP_TYP:02X}")),
        "{out}"
    );
    // ACPICA's hardware-reduced path: SLP_TYP/SLP_EN go to the sleep
    // control register, not to PM1 control.
    assert!(out.contains("HwExtendedSleep"), "{out}");
}

#[test]
fn acpiexec_osc_grants_pcie_control_and_flags_unknown_uuid() {
    // Arg0 = PCI host bridge UUID bytes, Arg1 = revision 1, Arg2 = 3
    // dwords, Arg3 = {CDW1 0, CDW2 support 0x1f, CDW3 control 0xff}.
    let pci_uuid = "(5B 4D DB 33 F7 1F 1C 40 96 57 74 41 C0 3D D7 66)";
    let other_uuid = "(00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00)";
    let caps = "(00 00 00 00 1F 00 00 00 FF 00 00 00)";
    let out = acpiexec(
        &build_ok(&cfg(1)),
        &[],
        &format!(
            "evaluate \\_SB_.PCI0._OSC {pci_uuid} 1 3 {caps}; \
             evaluate \\_SB_.PCI0._OSC {other_uuid} 1 3 {caps}"
        ),
    );
    // Granted 0xbf; bit 6 was masked, so CDW1 says "capabilities masked".
    assert!(out.contains("10 00 00 00 1F 00 00 00 BF 00 00 00"), "{out}");
    // Unknown UUID: "unrecognized UUID", nothing granted or changed.
    assert!(out.contains("04 00 00 00 1F 00 00 00 FF 00 00 00"), "{out}");
}

#[test]
fn acpiexec_prt_routes_every_slot_and_pin() {
    let out = acpiexec(&build_ok(&cfg(1)), &[], "evaluate \\_SB_.PCI0._PRT");
    assert!(out.contains("[Package] Contains 128 Elements:"), "{out}");
    // Slot 1 INTD# -> GSI 16.
    assert!(
        out.contains(
            "[Integer] = 000000000001FFFF\n      [Integer] = 0000000000000003\n      \
             [Integer] = 0000000000000000\n      [Integer] = 0000000000000010"
        ),
        "{out}"
    );
}

#[test]
fn acpiexec_ged_event_notifies_power_button_only_for_its_bit() {
    let t = build_ok(&cfg(1));
    let evt = "evaluate \\_SB_.GED_._EVT 9";
    // acpiexec fills simulated I/O with the -fv byte: 0x01010101 has the
    // power button bit, 0x02020202 does not.
    let out = acpiexec(&t, &["-fv", "1"], evt);
    assert!(
        out.contains("Device Notify on [PWRB]") && out.contains("Value 0x80"),
        "{out}"
    );
    let out = acpiexec(&t, &["-fv", "2"], evt);
    assert!(!out.contains("Notify"), "{out}");
}
