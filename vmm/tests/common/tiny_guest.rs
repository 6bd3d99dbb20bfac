//! Tiny guest kernels made on the fly, for tests and benchmarks that must
//! run on any KVM (including kvm_pvm, which cannot run a stock kernel):
//! each writes one byte to COM1 and then asks the i8042 for a reset.
#![allow(dead_code)]

// The pieces below are valid in 32-bit and 64-bit mode alike.

/// `mov dx, 0x3f8; mov al, BYTE; out dx, al`: writes `byte` to COM1.
fn put_byte(byte: u8) -> [u8; 7] {
    [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, byte, // mov al, byte
        0xee, // out dx, al
    ]
}

/// `mov al, 0xfe; out 0x64, al; hlt; jmp $-1`: asks the i8042 for a reset.
const RESET: [u8; 7] = [
    0xb0, 0xfe, // mov al, 0xfe
    0xe6, 0x64, // out 0x64, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp back to hlt
];

/// Writes `byte` to COM1, then resets.
fn code(byte: u8) -> Vec<u8> {
    [&put_byte(byte)[..], &RESET].concat()
}

/// Physical load (and entry) address of the ELF guest.
const ELF_LOAD: u64 = 0x10_0000;
/// XEN_ELFNOTE_PHYS32_ENTRY.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// An ELF64 vmlinux look-alike with a PVH entry note.
pub fn pvh_elf(byte: u8) -> Vec<u8> {
    pvh_elf_with_code(&code(byte))
}

/// A PVH guest that writes `byte` to COM1 and then halts with interrupts
/// off, so it stays up (idle) until ivmm is told to stop.
pub fn pvh_elf_idle(byte: u8) -> Vec<u8> {
    let idle = [
        0xfa, // cli
        0xf4, // hlt
        0xeb, 0xfd, // jmp back to hlt
    ];
    pvh_elf_with_code(&[&put_byte(byte)[..], &idle].concat())
}

/// Like [`pvh_elf`], but between the byte and the reset the guest reads
/// COM1's line status `reads` times, so that each boot stays up for a
/// while. Each read exits to the VMM, which takes microseconds on any KVM
/// (a busy loop's speed varies a thousandfold between KVMs).
pub fn pvh_elf_lingering(byte: u8, reads: u32) -> Vec<u8> {
    let mut code = put_byte(byte).to_vec();
    code.extend_from_slice(&[
        0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (line status)
        0xb9, // mov ecx, reads
    ]);
    code.extend_from_slice(&reads.to_le_bytes());
    code.extend_from_slice(&[
        0xec, // in al, dx
        0xff, 0xc9, // dec ecx
        0x75, 0xfb, // jnz back to in
    ]);
    code.extend_from_slice(&RESET);
    pvh_elf_with_code(&code)
}

/// A PVH guest that jumps into the unbacked 32-bit PCI hole: no KVM can fetch instructions
/// there, so the vCPU stops with an internal (emulation) error.
pub fn pvh_elf_executing_mmio() -> Vec<u8> {
    // mov eax, 0xd0000000; jmp eax
    pvh_elf_with_code(&[0xb8, 0x00, 0x00, 0x00, 0xd0, 0xff, 0xe0])
}

fn pvh_elf_with_code(code: &[u8]) -> Vec<u8> {
    let ehdr_size = 64u64;
    let phdr_size = 56u64;
    let note_off = ehdr_size + 2 * phdr_size;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz ("Xen\0")
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(ELF_LOAD as u32).to_le_bytes());
    let code_off = (note_off + note.len() as u64).next_multiple_of(16);

    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&ELF_LOAD.to_le_bytes()); // e_entry
    f.extend_from_slice(&ehdr_size.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(ehdr_size as u16).to_le_bytes());
    f.extend_from_slice(&(phdr_size as u16).to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let phdr =
        |f: &mut Vec<u8>, p_type: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
            f.extend_from_slice(&p_type.to_le_bytes());
            f.extend_from_slice(&flags.to_le_bytes());
            f.extend_from_slice(&off.to_le_bytes());
            f.extend_from_slice(&addr.to_le_bytes()); // vaddr
            f.extend_from_slice(&addr.to_le_bytes()); // paddr
            f.extend_from_slice(&size.to_le_bytes()); // filesz
            f.extend_from_slice(&size.to_le_bytes()); // memsz
            f.extend_from_slice(&align.to_le_bytes());
        };
    phdr(&mut f, 1, 5, code_off, ELF_LOAD, code.len() as u64, 16); // PT_LOAD r-x
    phdr(&mut f, 4, 4, note_off, 0, note.len() as u64, 4); // PT_NOTE
    f.extend_from_slice(&note);
    f.resize(code_off as usize, 0);
    f.extend_from_slice(code);
    f
}

/// A minimal bzImage (boot protocol 2.12) whose 64-bit entry runs `code`.
pub fn bzimage(byte: u8) -> Vec<u8> {
    let setup_sects = 1u8;
    let setup_len = (usize::from(setup_sects) + 1) * 512;
    let mut f = vec![0u8; setup_len];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes()); // version
    f[0x211] = 0x01; // loadflags: LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    f[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
                                                             // Protected-mode part: 64-bit entry at offset 0x200.
    let mut payload = vec![0xf4u8; 0x200];
    payload.extend_from_slice(&code(byte));
    f.extend_from_slice(&payload);
    f
}
