//! DSDT: the AML namespace describing the machine's devices.
//!
//! ```text
//! \_S5_            soft-off SLP_TYP for the FADT sleep control register
//! \_SB_.PCI0       PCIe host bridge: windows, _OSC, _PRT
//! \_SB_.ECAM       PNP0C02 reservation of the ECAM area (MCFG)
//! \_SB_.COM1       16550 UART
//! \_SB_.RTC_       CMOS RTC
//! \_SB_.PEVT       pvpanic (QEMU0001)
//! \_SB_.PWRB       power button (PNP0C0C), notified by ...
//! \_SB_.GED_       ... the Generic Event Device (ACPI0013)
//! ```
//!
//! No i8042 (PNP0303) device: see `fadt::IAPC_BOOT_ARCH`.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, And, Arg, CreateDWordField, Device, EISAName, Else, Equal,
    Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local,
    Memory32Fixed, Method, Name, NotEqual, Notify, OpRegion, OpRegionSpace, Or, Package,
    PackageBuilder, Path, ResourceTemplate, Return, Scope, Store, Uuid, IO, ZERO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::irq::{
    pci_intx_irq, IrqLine, Polarity, Trigger, CMOS_IRQ, COM1_IRQ, GED_IRQ, PCI_INTX_PINS, PCI_SLOTS,
};
use super::{Mmio64Window, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{
    ACPI_S5_SLP_TYP, CMOS_PORT, CMOS_PORT_LEN, COM1_PORT, COM1_PORT_LEN, ECAM_SIZE, ECAM_START,
    GED_EVENT_POWER_BUTTON, GED_PORT, GED_PORT_LEN, MMIO32_SIZE, MMIO32_START, PCI_BUS_END,
    PCI_BUS_START, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN, PCI_IO_SIZE, PCI_IO_START, PCI_SEGMENT,
    PVPANIC_PORT,
};

/// DSDT revision 2: AML integers are 64 bits wide (ACPI 6.5 §5.2.11.1).
const DSDT_REVISION: u8 = 2;
/// Header only; `Sdt::append_slice` grows it.
const SDT_HEADER_LEN: u32 = 36;

/// PCI host bridge `_OSC` UUID (PCI Firmware 3.3 §4.5).
const PCI_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// `_OSC` status bits in capabilities DWORD 1 (ACPI 6.5 §6.2.11).
const OSC_UNRECOGNIZED_UUID: u8 = 1 << 2;
const OSC_UNRECOGNIZED_REVISION: u8 = 1 << 3;
const OSC_CAPABILITIES_MASKED: u8 = 1 << 4;
/// The only `_OSC` revision of the PCI Firmware spec.
const PCI_OSC_REVISION: u8 = 1;
/// Control bits we grant (DWORD 3, PCI Firmware 3.3 §4.5):
/// native hot plug, SHPC hot plug, PME, AER, PCIe capability structure, LTR,
/// DPC. The VMM owns none of these, so the OS may have all of them; Linux
/// then reports "OS now controls [...]" rather than keeping features off.
const PCI_OSC_CONTROL_GRANTED: u8 = 0xbf;

/// `_PRT` address: device number in the high word, any function (§6.2.13).
const PRT_ANY_FUNCTION: u32 = 0xffff;

/// Notify value "device-specific": for a power button, "button pressed"
/// (ACPI 6.5 §5.6.6, device-specific notification values).
const NOTIFY_POWER_BUTTON_PRESSED: u8 = 0x80;

/// Narrows a layout length or address to an AML descriptor field; used in
/// consts only, so a bad layout fails to compile.
const fn u8_of(v: u16) -> u8 {
    assert!(v <= u8::MAX as u16);
    v as u8
}
const fn u32_of(v: u64) -> u32 {
    assert!(v <= u32::MAX as u64);
    v as u32
}
const fn u16_of(v: u32) -> u16 {
    assert!(v <= u16::MAX as u32);
    v as u16
}

const COM1_LEN: u8 = u8_of(COM1_PORT_LEN);
const CMOS_LEN: u8 = u8_of(CMOS_PORT_LEN);
const PCI_CONFIG_LEN: u8 = u8_of(PCI_CONFIG_PORT_LEN);
const GED_LEN: u8 = u8_of(GED_PORT_LEN);
const ECAM_BASE32: u32 = u32_of(ECAM_START);
const ECAM_LEN32: u32 = u32_of(ECAM_SIZE);
const MMIO32_MIN: u32 = u32_of(MMIO32_START);
const MMIO32_MAX: u32 = u32_of(MMIO32_START + MMIO32_SIZE - 1);
const PCI_IO_MAX: u16 = u16_of(PCI_IO_START as u32 + PCI_IO_SIZE - 1);

/// Builds the complete DSDT.
pub(super) fn build(mmio64: Mmio64Window) -> Vec<u8> {
    let mut aml = Vec::new();
    Name::new(
        Path::new("\\_S5_"),
        // SLP_TYPa, SLP_TYPb (ACPI 6.5 §7.4.2); a hardware-reduced machine
        // writes only SLP_TYPa, to the sleep control register.
        &Package::new(vec![&ACPI_S5_SLP_TYP, &0u8]),
    )
    .to_aml_bytes(&mut aml);

    let pci0 = pci_host_bridge(mmio64);
    let ecam = ecam_reservation();
    let com1 = com1();
    let rtc = rtc();
    let pvpanic = pvpanic();
    let pwrb = power_button();
    let ged = generic_event_device();
    Scope::new(
        Path::new("\\_SB_"),
        vec![&pci0, &ecam, &com1, &rtc, &pvpanic, &pwrb, &ged],
    )
    .to_aml_bytes(&mut aml);

    let mut sdt = Sdt::new(
        *b"DSDT",
        SDT_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.append_slice(&aml);
    sdt.as_slice().to_vec()
}

/// An Extended Interrupt descriptor (ACPI 6.5 §6.4.3.6) consuming `line`,
/// exclusive. On x86 its number is a GSI, and Linux applies no ISA override
/// to this descriptor type.
fn interrupt(line: IrqLine) -> Interrupt {
    Interrupt::new(
        true,
        line.trigger == Trigger::Edge,
        line.polarity == Polarity::ActiveLow,
        false,
        line.gsi,
    )
}

/// `\_SB_.PCI0`: a PCI Express host bridge (ACPI 6.5 §6.1.5 EISAID PNP0A08,
/// compatible with plain PCI PNP0A03) for segment `PCI_SEGMENT`, buses
/// `PCI_BUS_START..=PCI_BUS_END`.
fn pci_host_bridge(mmio64: Mmio64Window) -> RawAml {
    // _CRS (§6.2.2): what the bridge decodes. Address space descriptors are
    // producers (windows passed down to devices); the 0xcf8 I/O descriptor
    // is the bridge's own config mechanism, which Linux drops from windows.
    let bus = AddressSpace::new_bus_number(u16::from(PCI_BUS_START), u16::from(PCI_BUS_END));
    let config_ports = IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_LEN);
    let io_window = AddressSpace::new_io(PCI_IO_START, PCI_IO_MAX, None);
    // Non-cacheable (not prefetchable): Linux refuses to place
    // non-prefetchable BARs in a prefetchable window.
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        MMIO32_MIN,
        MMIO32_MAX,
        None,
    );
    let mmio64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64.start,
        mmio64.end,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &config_ports, &io_window, &mmio32, &mmio64]);

    let osc = pci_osc();
    let prt = pci_routing_table();

    let mut bytes = Vec::new();
    Device::new(
        Path::new("PCI0"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0A08")),
            &Name::new(Path::new("_CID"), &EISAName::new("PNP0A03")),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_SEG"), &PCI_SEGMENT),
            &Name::new(Path::new("_BBN"), &PCI_BUS_START),
            &Name::new(Path::new("_CRS"), &crs),
            &osc,
            &Name::new(Path::new("_PRT"), &prt),
        ],
    )
    .to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// `_OSC` (ACPI 6.5 §6.2.11, PCI Firmware 3.3 §4.5): grant the OS every
/// PCIe feature it asks for among [`PCI_OSC_CONTROL_GRANTED`]; without an
/// `_OSC` a PNP0A08 bridge makes Linux keep native PCIe services off.
///
/// ```text
/// Method (_OSC, 4, Serialized) {
///     CreateDWordField (Arg3, 0, CDW1)
///     If (Arg0 == ToUUID (PCI_OSC_UUID)) {
///         CreateDWordField (Arg3, 8, CDW3)
///         Local0 = CDW3 & PCI_OSC_CONTROL_GRANTED
///         If (Arg1 != 1) { CDW1 |= UNRECOGNIZED_REVISION }
///         If (CDW3 != Local0) { CDW1 |= CAPABILITIES_MASKED }
///         CDW3 = Local0
///     } Else { CDW1 |= UNRECOGNIZED_UUID }
///     Return (Arg3)
/// }
/// ```
fn pci_osc() -> RawAml {
    let cdw1 = Path::new("CDW1");
    let cdw3 = Path::new("CDW3");
    let mut bytes = Vec::new();
    Method::new(
        Path::new("_OSC"),
        4,
        true,
        vec![
            &CreateDWordField::new(&cdw1, &Arg(3), &0u8),
            &If::new(
                &Equal::new(&Arg(0), &Uuid::new(PCI_OSC_UUID)),
                vec![
                    &CreateDWordField::new(&cdw3, &Arg(3), &8u8),
                    &And::new(&Local(0), &cdw3, &PCI_OSC_CONTROL_GRANTED),
                    &If::new(
                        &NotEqual::new(&Arg(1), &PCI_OSC_REVISION),
                        vec![&Or::new(&cdw1, &cdw1, &OSC_UNRECOGNIZED_REVISION)],
                    ),
                    &If::new(
                        &NotEqual::new(&cdw3, &Local(0)),
                        vec![&Or::new(&cdw1, &cdw1, &OSC_CAPABILITIES_MASKED)],
                    ),
                    &Store::new(&cdw3, &Local(0)),
                ],
            ),
            &Else::new(vec![&Or::new(&cdw1, &cdw1, &OSC_UNRECOGNIZED_UUID)]),
            &Return::new(&Arg(3)),
        ],
    )
    .to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// Already-encoded AML, so builders can return owned objects.
struct RawAml(Vec<u8>);

/// Encodes `aml` now, ending the borrows of its children.
fn encode(aml: &dyn Aml) -> RawAml {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// `_PRT` (ACPI 6.5 §6.2.13): every slot and pin, each routed straight to
/// a GSI (source 0, source index = GSI).
fn pci_routing_table() -> PackageBuilder {
    let mut prt = PackageBuilder::new();
    for slot in 0..PCI_SLOTS {
        for pin in 0..PCI_INTX_PINS {
            let Some(line) = pci_intx_irq(slot, pin) else {
                continue;
            };
            let address = (u32::from(slot) << 16) | PRT_ANY_FUNCTION;
            prt.add_element(&Package::new(vec![&address, &pin, &ZERO, &line.gsi]));
        }
    }
    prt
}

/// `\_SB_.ECAM`: a motherboard resource (PNP0C02) covering the ECAM area.
/// Linux only trusts MCFG if its area is reserved by such a device
/// ("MMCONFIG ... reserved in ACPI motherboard resources").
fn ecam_reservation() -> RawAml {
    let crs = encode(&ResourceTemplate::new(vec![&Memory32Fixed::new(
        true,
        ECAM_BASE32,
        ECAM_LEN32,
    )]));
    device(
        "ECAM",
        &EISAName::new("PNP0C02"),
        vec![&Name::new(Path::new("_CRS"), &crs)],
    )
}

/// `\_SB_.COM1`: 16550 UART (PNP0501).
fn com1() -> RawAml {
    let io = IO::new(COM1_PORT, COM1_PORT, 1, COM1_LEN);
    let irq = interrupt(COM1_IRQ);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    device(
        "COM1",
        &EISAName::new("PNP0501"),
        vec![
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
}

/// `\_SB_.RTC_`: AT-compatible CMOS RTC (PNP0B00).
fn rtc() -> RawAml {
    let io = IO::new(CMOS_PORT, CMOS_PORT, 1, CMOS_LEN);
    let irq = interrupt(CMOS_IRQ);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    device(
        "RTC_",
        &EISAName::new("PNP0B00"),
        vec![&Name::new(Path::new("_CRS"), &crs)],
    )
}

/// `\_SB_.PEVT`: pvpanic, bound by Linux's pvpanic-mmio driver through
/// `_HID` "QEMU0001", which accepts an I/O resource. No `_STA`: an absent
/// `_STA` means present and enabled (ACPI 6.5 §6.3.7).
fn pvpanic() -> RawAml {
    let crs = encode(&ResourceTemplate::new(vec![&IO::new(
        PVPANIC_PORT,
        PVPANIC_PORT,
        1,
        1,
    )]));
    device(
        "PEVT",
        &"QEMU0001",
        vec![&Name::new(Path::new("_CRS"), &crs)],
    )
}

/// `\_SB_.PWRB`: control-method power button (PNP0C0C); pressed means
/// `Notify (PWRB, 0x80)`, which Linux turns into KEY_POWER.
fn power_button() -> RawAml {
    device(
        "PWRB",
        &EISAName::new("PNP0C0C"),
        vec![&Name::new(Path::new("_UID"), &0u8)],
    )
}

/// `\_SB_.GED_`: Generic Event Device (ACPI0013, ACPI 6.5 §5.6.9).
///
/// ```text
/// OperationRegion (GEDR, SystemIO, GED_PORT, 4)
/// Field (GEDR, DWordAcc, NoLock, Preserve) { GSEL, 32 }
/// Method (_EVT, 1, Serialized) {
///     Local0 = GSEL                      // one 32-bit read; clears it
///     Local1 = Local0 & GED_EVENT_POWER_BUTTON
///     If (Local1 == GED_EVENT_POWER_BUTTON) { Notify (\_SB_.PWRB, 0x80) }
/// }
/// ```
fn generic_event_device() -> RawAml {
    let crs = encode(&ResourceTemplate::new(vec![&interrupt(GED_IRQ)]));
    let region = OpRegion::new(
        Path::new("GEDR"),
        OpRegionSpace::SystemIO,
        &GED_PORT,
        &GED_LEN,
    );
    let field = Field::new(
        Path::new("GEDR"),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Named(*b"GSEL", 32)],
    );
    let pwrb = Path::new("\\_SB_.PWRB");
    let evt = encode(&Method::new(
        Path::new("_EVT"),
        1,
        true,
        vec![
            &Store::new(&Local(0), &Path::new("GSEL")),
            &And::new(&Local(1), &Local(0), &GED_EVENT_POWER_BUTTON),
            &If::new(
                &Equal::new(&Local(1), &GED_EVENT_POWER_BUTTON),
                vec![&Notify::new(&pwrb, &NOTIFY_POWER_BUTTON_PRESSED)],
            ),
        ],
    ));
    device(
        "GED_",
        &"ACPI0013",
        vec![
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_CRS"), &crs),
            &region,
            &field,
            &evt,
        ],
    )
}

/// A device with `_HID` `hid` followed by `rest`, encoded.
fn device(name: &str, hid: &dyn Aml, rest: Vec<&dyn Aml>) -> RawAml {
    let hid = Name::new(Path::new("_HID"), hid);
    let mut children: Vec<&dyn Aml> = vec![&hid];
    children.extend(rest);
    let mut bytes = Vec::new();
    Device::new(Path::new(name), children).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}
