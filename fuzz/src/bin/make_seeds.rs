//! Writes the seed corpora of the structured fuzz targets to
//! `DIR/TARGET/NAME` (committed as fuzz/seeds/): requests a real driver
//! makes, encoded with the targets' own decoders' format.
//!
//!   cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds -- fuzz/seeds

use std::path::Path;

use ivmm_fuzz::access::{self, PciOp, SerialOp};
use ivmm_fuzz::ring::{Desc, Op, QueueSetup, DATA_START, F_INDIRECT, F_NEXT, F_WRITE};
use ivmm_fuzz::Output;

const HDR: u64 = DATA_START;
const DATA: u64 = DATA_START + 0x1000;
const STATUS: u64 = DATA_START + 0x2000;
const INDIRECT: u64 = DATA_START + 0x3000;
const RX_BUF: u64 = 0x1_0000;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".into());
    let dir = Path::new(&dir);
    let mut n = 0;
    for (target, seeds) in [
        ("virtio_blk_request", blk_seeds()),
        ("virtio_net_tx_rx", net_seeds()),
        ("virtio_pci_transport", pci_seeds()),
        ("serial_16550", serial_seeds()),
        ("kernel_image", kernel_seeds()),
    ] {
        let t = dir.join(target);
        std::fs::create_dir_all(&t).expect("create the seed directory");
        for (name, bytes) in seeds {
            std::fs::write(t.join(name), bytes).expect("write a seed");
            n += 1;
        }
    }
    println!("wrote {n} seeds under {}", dir.display());
}

fn ops(o: &mut Output, ops: &[Op]) {
    for op in ops {
        op.encode(o);
    }
}

/// struct virtio_blk_outhdr: type, ioprio, sector.
fn blk_header(req_type: u32, sector: u64) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&req_type.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// A chain of descriptors at table indices `first..`, linked in order.
fn chain(queue: u8, first: u8, descs: &[(u64, u32, u8)]) -> Vec<Op> {
    descs
        .iter()
        .enumerate()
        .map(|(k, &(addr, len, flags))| {
            let last = k + 1 == descs.len();
            let idx = first + k as u8;
            let flags = flags | if last { 0 } else { F_NEXT };
            Op::Desc {
                queue,
                index: idx,
                desc: Desc::new(addr, len, flags, if last { 0 } else { idx + 1 }),
            }
        })
        .collect()
}

fn mem(addr: u64, bytes: Vec<u8>) -> Op {
    Op::Mem {
        addr: addr as u32,
        bytes,
    }
}

/// Serve, in both queue targets' numbering.
const SERVE: Op = Op::Target(0);

fn blk_seed(flags: u8, setup: QueueSetup, body: &[Op]) -> Vec<u8> {
    let mut o = Output::default();
    o.u8(flags).u16(4096); // 64 KiB disk
    setup.encode(&mut o);
    ops(&mut o, body);
    o.0
}

fn blk_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let q16 = QueueSetup {
        size_log: 4,
        ..Default::default()
    };
    let three = |t: u32, sector: u64, len: u32, data_flags: u8| {
        let mut v = vec![mem(HDR, blk_header(t, sector))];
        v.extend(chain(
            0,
            0,
            &[(HDR, 16, 0), (DATA, len, data_flags), (STATUS, 1, F_WRITE)],
        ));
        v.extend([
            Op::Publish {
                queue: 0,
                heads: vec![0],
            },
            SERVE,
        ]);
        v
    };
    let segments = |segs: &[(u64, u32, u32)]| {
        let mut b = Vec::new();
        for &(sector, num, flags) in segs {
            b.extend_from_slice(&sector.to_le_bytes());
            b.extend_from_slice(&num.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
        }
        b
    };
    let mut out = vec![
        ("read", blk_seed(0, q16, &three(0, 2, 1024, F_WRITE))),
        ("write", blk_seed(0, q16, &three(1, 8, 4096, 0))),
        (
            "read-raw-file",
            blk_seed(4, q16, &three(0, 0, 512, F_WRITE)),
        ),
        (
            "write-raw-file-probed",
            blk_seed(4 | 8, q16, &three(1, 0, 512, 0)),
        ),
        ("write-read-only", blk_seed(1, q16, &three(1, 0, 512, 0))),
    ];
    // Flush (header + status) and GET_ID (20 bytes) as two chains.
    let mut v = vec![mem(HDR, blk_header(4, 0)), mem(HDR + 16, blk_header(8, 0))];
    v.extend(chain(0, 0, &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]));
    v.extend(chain(
        0,
        2,
        &[
            (HDR + 16, 16, 0),
            (DATA, 20, F_WRITE),
            (STATUS + 1, 1, F_WRITE),
        ],
    ));
    v.extend([
        Op::Publish {
            queue: 0,
            heads: vec![0, 2],
        },
        SERVE,
    ]);
    out.push(("flush-get-id", blk_seed(0, q16, &v)));
    // Discard two ranges; write-zeroes with UNMAP.
    let mut v = vec![mem(DATA, segments(&[(0, 8, 0), (64, 16, 0)]))];
    v.extend(three(11, 0, 32, 0));
    out.push(("discard", blk_seed(2, q16, &v)));
    let mut v = vec![mem(DATA, segments(&[(16, 8, 1)]))];
    v.extend(three(13, 0, 16, 0));
    out.push(("write-zeroes", blk_seed(4, q16, &v)));
    // A read through an indirect table.
    let table: Vec<u8> = [
        Desc::new(HDR, 16, F_NEXT, 1),
        Desc::new(DATA, 2048, F_WRITE | F_NEXT, 2),
        Desc::new(STATUS, 1, F_WRITE, 0),
    ]
    .iter()
    .flat_map(|d| d.guest_bytes())
    .collect();
    let v = vec![
        mem(HDR, blk_header(0, 4)),
        mem(INDIRECT, table),
        Op::Desc {
            queue: 0,
            index: 0,
            desc: Desc::new(INDIRECT, 48, F_INDIRECT, 0),
        },
        Op::Publish {
            queue: 0,
            heads: vec![0],
        },
        SERVE,
    ];
    out.push(("indirect-read", blk_seed(0, q16, &v)));
    // EVENT_IDX, rings elsewhere, indices about to wrap, two kicks.
    let wrap = QueueSetup {
        event_idx: true,
        rings: Some((0x1000, 0x1000, 0x1000)), // 0x10000, 0x2000, 0x4000
        size_log: 2,
        next_avail: 0xffff,
    };
    let mut v = vec![mem(HDR, blk_header(0, 1))];
    v.extend(chain(
        0,
        0,
        &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
    ));
    v.extend([
        Op::UsedEvent {
            queue: 0,
            value: 0xffff,
        },
        Op::Publish {
            queue: 0,
            heads: vec![0],
        },
        SERVE,
        Op::Publish {
            queue: 0,
            heads: vec![0],
        },
        SERVE,
    ]);
    out.push(("event-idx-wrap", blk_seed(0, wrap, &v)));
    out
}

const SERVE_TX: Op = Op::Target(0);
const SERVE_RX: Op = Op::Target(1);

/// Target operation FRAME with a `len`-byte frame (header included).
fn frame(o: &mut Output, len: u32) {
    Op::Target(2).encode(o);
    let n = len.min(255);
    o.u32(len).u8(n as u8);
    let mut f = vec![0u8; n as usize];
    // virtio_net_hdr_v1 all zero, then a broadcast Ethernet header.
    for b in f.iter_mut().skip(12).take(6) {
        *b = 0xff;
    }
    o.bytes(&f);
}

fn net_seed(flags: u8, event_idx: bool, body: impl FnOnce(&mut Output)) -> Vec<u8> {
    let mut o = Output::default();
    o.u8(flags);
    for _ in 0..2 {
        QueueSetup {
            event_idx,
            size_log: 4,
            ..Default::default()
        }
        .encode(&mut o);
    }
    body(&mut o);
    o.0
}

fn net_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let tx = |o: &mut Output| {
        let mut f = vec![0u8; 72];
        f[12..18].fill(0xff);
        f[24..26].copy_from_slice(&[0x08, 0x06]); // ARP
        let mut v = vec![mem(DATA_START, f)];
        v.extend(chain(
            1,
            0,
            &[(DATA_START, 12, 0), (DATA_START + 12, 60, 0)],
        ));
        v.extend([
            Op::Publish {
                queue: 1,
                heads: vec![0],
            },
            SERVE_TX,
        ]);
        ops(o, &v);
    };
    let rx_bufs = |o: &mut Output, n: u8, len: u32| {
        let mut v = Vec::new();
        for k in 0..n {
            v.push(Op::Desc {
                queue: 0,
                index: k,
                desc: Desc::new(RX_BUF + u64::from(k) * 0x1000, len, F_WRITE, 0),
            });
        }
        v.push(Op::Publish {
            queue: 0,
            heads: (0..n).collect(),
        });
        ops(o, &v);
    };
    vec![
        ("tx", net_seed(0, false, tx)),
        (
            "rx",
            net_seed(0, false, |o| {
                rx_bufs(o, 1, 1526);
                frame(o, 72);
                SERVE_RX.encode(o);
            }),
        ),
        (
            "rx-mergeable",
            net_seed(1, true, |o| {
                rx_bufs(o, 4, 256);
                frame(o, 700);
                SERVE_RX.encode(o);
            }),
        ),
        (
            "rx-starved-then-buffers",
            net_seed(0, false, |o| {
                frame(o, 100);
                SERVE_RX.encode(o);
                rx_bufs(o, 1, 1526);
                SERVE_RX.encode(o);
            }),
        ),
        (
            "tx-rx-errors",
            net_seed(2, true, |o| {
                tx(o);
                Op::Target(3).encode(o);
                o.u8(0); // EINTR
                rx_bufs(o, 2, 64);
                frame(o, 60);
                frame(o, 65563);
                SERVE_RX.encode(o);
            }),
        ),
    ]
}

fn bar_w(region: u8, offset: u16, width: usize, value: u64) -> PciOp {
    PciOp::Bar {
        region,
        offset,
        width,
        data: Some(value.to_le_bytes()[..width].to_vec()),
    }
}

fn bar_r(region: u8, offset: u16, width: usize) -> PciOp {
    PciOp::Bar {
        region,
        offset,
        width,
        data: None,
    }
}

fn ecam_w(offset: u16, width: usize, value: u32) -> PciOp {
    PciOp::Ecam {
        offset,
        width,
        data: Some(value.to_le_bytes()[..width].to_vec()),
    }
}

fn ecam_r(offset: u16, width: usize) -> PciOp {
    PciOp::Ecam {
        offset,
        width,
        data: None,
    }
}

/// Linux's virtio_pci_modern probe and virtio_blk setup of queue 0 (rings at
/// 0x10000), optionally with MSI-X, then one read request and its kick.
fn pci_driver(msix: bool, features_lo: u32) -> Vec<PciOp> {
    use access::{COMMON, DEVICE, ISR, MSIX_PBA, MSIX_TABLE, NOTIFY};
    let mut v = vec![ecam_r(0, 4), ecam_r(8, 4), ecam_r(0x34, 1)];
    // Walk the capabilities (MSI-X at 0x40, vendor caps 0x50..0x94).
    for at in (0x40..0x94).step_by(4) {
        v.push(ecam_r(at, 4));
    }
    v.extend([ecam_r(0x10, 4), ecam_w(0x10, 4, u32::MAX), ecam_r(0x10, 4)]);
    v.extend([ecam_w(0x10, 4, 0xc000_0000), ecam_w(4, 2, 0x6)]);
    if msix {
        v.push(ecam_w(0x42, 2, 0x8000));
        for e in 0..2u16 {
            v.extend([
                bar_w(MSIX_TABLE, e * 16, 4, 0xfee0_0000),
                bar_w(MSIX_TABLE, e * 16 + 4, 4, 0),
                bar_w(MSIX_TABLE, e * 16 + 8, 4, 0x41 + u64::from(e)),
                bar_w(MSIX_TABLE, e * 16 + 12, 4, 0),
            ]);
        }
    }
    v.extend([
        bar_w(COMMON, 0x14, 1, 0),
        bar_w(COMMON, 0x14, 1, 1),
        bar_w(COMMON, 0x14, 1, 3),
        bar_w(COMMON, 0x00, 4, 0),
        bar_r(COMMON, 0x04, 4),
        bar_w(COMMON, 0x00, 4, 1),
        bar_r(COMMON, 0x04, 4),
        bar_w(COMMON, 0x08, 4, 0),
        bar_w(COMMON, 0x0c, 4, u64::from(features_lo)),
        bar_w(COMMON, 0x08, 4, 1),
        bar_w(COMMON, 0x0c, 4, 1), // VERSION_1
        bar_w(COMMON, 0x14, 1, 0xb),
        bar_r(COMMON, 0x14, 1),
        bar_r(DEVICE, 0, 8), // capacity
        bar_r(DEVICE, 0x22, 2),
        bar_r(COMMON, 0x12, 2),
    ]);
    if msix {
        v.extend([bar_w(COMMON, 0x10, 2, 0), bar_r(COMMON, 0x10, 2)]);
    }
    v.extend([
        bar_w(COMMON, 0x16, 2, 0),
        bar_r(COMMON, 0x18, 2),
        bar_w(COMMON, 0x18, 2, 16),
        bar_w(COMMON, 0x20, 8, 0x1_0000),
        bar_w(COMMON, 0x28, 4, 0x1_1000),
        bar_w(COMMON, 0x2c, 4, 0),
        bar_w(COMMON, 0x30, 4, 0x1_2000),
        bar_w(COMMON, 0x34, 4, 0),
    ]);
    if msix {
        v.extend([bar_w(COMMON, 0x1a, 2, 1), bar_r(COMMON, 0x1a, 2)]);
    }
    v.extend([
        bar_r(COMMON, 0x1e, 2),
        bar_w(COMMON, 0x1c, 2, 1),
        bar_w(COMMON, 0x14, 1, 0xf),
    ]);
    // One read of sector 0: header, 512 bytes, status; descriptor table,
    // then the avail ring (flags 0, idx 1, ring[0] = 0).
    let descs: Vec<u8> = [
        Desc::new(HDR, 16, F_NEXT, 1),
        Desc::new(DATA, 512, F_WRITE | F_NEXT, 2),
        Desc::new(STATUS, 1, F_WRITE, 0),
    ]
    .iter()
    .flat_map(|d| d.guest_bytes())
    .collect();
    v.extend([
        PciOp::Mem {
            addr: HDR as u32,
            bytes: blk_header(0, 0),
        },
        PciOp::Mem {
            addr: 0x1_0000,
            bytes: descs,
        },
        PciOp::Mem {
            addr: 0x1_1000,
            bytes: vec![0, 0, 1, 0, 0, 0],
        },
        bar_w(NOTIFY, 0, 2, 0),
        PciOp::Yield,
        PciOp::Yield,
        bar_r(ISR, 0, 1),
        bar_r(MSIX_PBA, 0, 8),
        bar_r(COMMON, 0x14, 1),
    ]);
    v
}

fn pci_seed(flags: u8, body: &[PciOp]) -> Vec<u8> {
    let mut o = Output::default();
    o.u8(flags);
    for op in body {
        op.encode(&mut o);
    }
    o.0
}

fn pci_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // SEG_MAX, BLK_SIZE, FLUSH, TOPOLOGY, INDIRECT_DESC, EVENT_IDX.
    let features = 1 << 2 | 1 << 6 | 1 << 9 | 1 << 10 | 1 << 28 | 1 << 29;
    let mut reset = pci_driver(true, features);
    reset.extend([
        bar_w(access::COMMON, 0x14, 1, 0),
        bar_r(access::COMMON, 0x14, 1),
    ]);
    // Configuration through port 0xcf8/0xcfc: vendor/device, BAR0 sizing.
    let cfg_io = |reg: u32, write: Option<u32>| {
        let mut v = vec![PciOp::CfgIo {
            port: 0,
            width: 4,
            data: Some((0x8000_0000u32 | reg).to_le_bytes().to_vec()),
        }];
        v.push(PciOp::CfgIo {
            port: 4,
            width: 4,
            data: write.map(|w| w.to_le_bytes().to_vec()),
        });
        v
    };
    let mut io = Vec::new();
    io.extend(cfg_io(0, None));
    io.extend(cfg_io(0x10, Some(u32::MAX)));
    io.extend(cfg_io(0x10, None));
    io.extend(cfg_io(0x3c, Some(0x10b)));
    vec![
        (
            "driver-init-msix-read",
            pci_seed(0, &pci_driver(true, features)),
        ),
        (
            "driver-init-intx-read",
            pci_seed(1, &pci_driver(false, 1 << 9)),
        ),
        ("driver-init-reset-4q", pci_seed(3 << 2, &reset)),
        ("config-port-io", pci_seed(0, &io)),
    ]
}

fn serial_seed(flags: u8, body: &[SerialOp]) -> Vec<u8> {
    let mut o = Output::default();
    o.u8(flags);
    for op in body {
        op.encode(&mut o);
    }
    o.0
}

fn sw(offset: u8, value: u8) -> SerialOp {
    SerialOp::Write {
        offset,
        width: 1,
        data: vec![value],
    }
}

fn sr(offset: u8) -> SerialOp {
    SerialOp::Read { offset, width: 1 }
}

fn serial_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Linux 8250 setup: 115200 8N1, FIFOs, interrupts on.
    let mut init = vec![
        sw(3, 0x80),
        sw(0, 1),
        sw(1, 0),
        sw(3, 0x03),
        sw(2, 0xc7),
        sw(4, 0x0b),
        sw(1, 0x03),
        sr(2),
        sr(5),
    ];
    let mut echo = init.clone();
    echo.extend(b"login: ".iter().map(|&b| sw(0, b)));
    echo.extend([SerialOp::Input(b"root\n".to_vec()), sr(2), sr(5)]);
    echo.extend((0..6).flat_map(|_| [sr(5), sr(0)]));
    echo.push(sr(2));
    // Loopback (MCR bit 4), scratch register, modem status.
    init.extend([
        sw(4, 0x10),
        sw(0, b'x'),
        sr(5),
        sr(0),
        sr(6),
        sw(7, 0x5a),
        sr(7),
    ]);
    let overflow = vec![
        sw(1, 0x01),
        SerialOp::Input(vec![b'a'; 255]),
        SerialOp::Input(vec![b'b'; 255]),
        sr(5),
        sr(0),
        sr(2),
    ];
    vec![
        ("init-echo", serial_seed(0, &echo)),
        ("loopback-scratch", serial_seed(0, &init)),
        ("input-overflow-no-drain", serial_seed(3, &overflow)),
    ]
}

/// A bzImage: the setup header of Debian's 6.1 cloud kernel (boot protocol
/// 2.15; field offsets per Documentation/arch/x86/boot.rst) with one setup
/// sector and a 512-byte payload.
fn bzimage(version: u16, setup_sects: u8) -> Vec<u8> {
    // setup_sects 0 means 4 (boot.rst).
    let sects = if setup_sects == 0 { 4 } else { setup_sects };
    let setup = (usize::from(sects) + 1) * 512;
    let mut b = vec![0u8; setup + 512];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(0x1f1, &[setup_sects]);
    put(0x1fe, &0xaa55u16.to_le_bytes());
    put(0x200, &[0xeb, 0x6a]);
    put(0x202, b"HdrS");
    put(0x206, &version.to_le_bytes());
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x234, &[1, 0x15]); // relocatable_kernel, min_alignment
    put(0x236, &0x7fu16.to_le_bytes()); // xloadflags
    put(0x238, &0x7ffu32.to_le_bytes()); // cmdline_size
    put(0x260, &0x2d6_000u32.to_le_bytes()); // init_size
    b
}

/// An ELF64 vmlinux: one PT_LOAD at 1 MiB and, optionally, a PT_NOTE with
/// Xen's PHYS32_ENTRY note (what PVH boot needs).
fn elf(pvh: bool) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let note_off = 64 + 56 * u64::from(phnum);
    let note: Vec<u8> = [
        &4u32.to_le_bytes()[..],  // namesz
        &4u32.to_le_bytes()[..],  // descsz
        &18u32.to_le_bytes()[..], // XEN_ELFNOTE_PHYS32_ENTRY
        b"Xen\0",
        &0x100_0000u32.to_le_bytes()[..],
    ]
    .concat();
    let load_off = 0x200u64;
    let mut o = Output::default();
    o.bytes(b"\x7fELF").u8(2).u8(1).u8(1).bytes(&[0; 9]);
    o.u16(2).u16(0x3e).u32(1); // ET_EXEC, x86-64, version
    o.u64(0x100_0000).u64(64).u64(0); // entry, phoff, shoff
    o.u32(0).u16(64).u16(56).u16(phnum).u16(64).u16(0).u16(0);
    // PT_LOAD: flags RWX, offset, vaddr, paddr, filesz, memsz, align.
    o.u32(1).u32(7).u64(load_off).u64(0xffff_ffff_8100_0000);
    o.u64(0x100_0000).u64(0x200).u64(0x1000).u64(0x20_0000);
    if pvh {
        o.u32(4).u32(4).u64(note_off).u64(0).u64(0);
        o.u64(note.len() as u64).u64(note.len() as u64).u64(4);
        o.bytes(&note);
    }
    o.0.resize(load_off as usize, 0);
    o.0.extend(std::iter::repeat_n(0x90u8, 0x200));
    o.0
}

fn kernel_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("bzimage-2.15", bzimage(0x020f, 1)),
        ("bzimage-2.02-setup-sects-0", bzimage(0x0202, 0)),
        ("elf-pvh", elf(true)),
        ("elf-no-pvh-note", elf(false)),
    ]
}
