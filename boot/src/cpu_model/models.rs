//! Named CPU models, each written as a base model plus changes.
//!
//! Source: QEMU 10.0's builtin x86 CPU definitions, version 1 of each model
//! (what the unversioned name means on QEMU's `pc`/`q35` machine types; on
//! `microvm` QEMU resolves unversioned names to the latest version instead),
//! except the fixed aliases `Haswell-noTSX` (= Haswell-v2) and
//! `Broadwell-noTSX` (= Broadwell-v2). The feature lists were derived with
//! QEMU's `query-cpu-model-expansion` and checked against the definitions.
//! `cpu64-rhel6` is libvirt's `src/cpu_map/x86_cpu64-rhel6.xml` (which libvirt
//! runs as qemu64 with its feature list). The `x86-64-v*` levels are the
//! x86-64 psABI microarchitecture levels on top of qemu64.
//!
//! These tables hold the model's own bits only; what QEMU adds or removes
//! for every model under KVM (x2apic on, svm/monitor/acpi off, hypervisor
//! on) is applied in [`super::CpuDefinition::from_model`].

/// CPU vendor, as the 12-byte CPUID vendor string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
}

impl Vendor {
    pub fn id(self) -> &'static str {
        match self {
            Vendor::Intel => "GenuineIntel",
            Vendor::Amd => "AuthenticAMD",
        }
    }

    pub fn parse(s: &str) -> Option<Vendor> {
        match s {
            "GenuineIntel" => Some(Vendor::Intel),
            "AuthenticAMD" => Some(Vendor::Amd),
            _ => None,
        }
    }
}

/// One named model: identity fields (None = same as the base) and the
/// feature changes against the base.
#[derive(Debug)]
pub struct ModelSpec {
    pub name: &'static str,
    pub base: Option<&'static str>,
    pub vendor: Option<Vendor>,
    /// (family, model, stepping)
    pub signature: Option<(u32, u32, u32)>,
    pub model_id: Option<&'static str>,
    pub level: Option<u32>,
    pub xlevel: Option<u32>,
    pub add: &'static [&'static str],
    pub remove: &'static [&'static str],
    /// Where the definition comes from, for `ivmm cpu list`.
    pub source: &'static str,
}

const SAME: ModelSpec = ModelSpec {
    name: "",
    base: None,
    vendor: None,
    signature: None,
    model_id: None,
    level: None,
    xlevel: None,
    add: &[],
    remove: &[],
    source: "QEMU 10.0",
};

pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "qemu64",
        vendor: Some(Vendor::Amd),
        signature: Some((15, 107, 1)),
        model_id: Some("QEMU Virtual CPU version 2.5+"),
        level: Some(0xd),
        xlevel: Some(0x8000_000a),
        add: &[
            "fpu", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge",
            "mca", "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "pni", "cx16",
            "syscall", "nx", "lm", "lahf_lm", "svm",
        ],
        source: "QEMU 10.0 qemu64-v1",
        ..SAME
    },
    ModelSpec {
        name: "kvm64",
        base: Some("qemu64"),
        vendor: Some(Vendor::Intel),
        signature: Some((15, 6, 1)),
        model_id: Some("Common KVM processor"),
        xlevel: Some(0x8000_0008),
        add: &["vme"],
        remove: &["lahf_lm", "svm"],
        source: "QEMU 10.0 kvm64-v1",
        ..SAME
    },
    ModelSpec {
        name: "cpu64-rhel6",
        base: Some("qemu64"),
        remove: &["svm"],
        source: "libvirt cpu_map x86_cpu64-rhel6.xml (run as qemu64 + its features)",
        ..SAME
    },
    ModelSpec {
        name: "x86-64-v1",
        base: Some("qemu64"),
        remove: &["svm"],
        source: "x86-64 psABI baseline on qemu64",
        ..SAME
    },
    ModelSpec {
        name: "x86-64-v2",
        base: Some("x86-64-v1"),
        add: &[
            "cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3",
        ],
        source: "x86-64 psABI level 2 on qemu64",
        ..SAME
    },
    ModelSpec {
        name: "x86-64-v3",
        base: Some("x86-64-v2"),
        add: &[
            "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
        ],
        source: "x86-64 psABI level 3 on qemu64",
        ..SAME
    },
    ModelSpec {
        name: "x86-64-v4",
        base: Some("x86-64-v3"),
        add: &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
        source: "x86-64 psABI level 4 on qemu64",
        ..SAME
    },
    ModelSpec {
        name: "Nehalem",
        base: Some("kvm64"),
        signature: Some((6, 26, 3)),
        model_id: Some("Intel Core i7 9xx (Nehalem Class Core i7)"),
        level: Some(0xb),
        add: &["lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"],
        source: "QEMU 10.0 Nehalem-v1",
        ..SAME
    },
    ModelSpec {
        name: "Westmere",
        base: Some("Nehalem"),
        signature: Some((6, 44, 1)),
        model_id: Some("Westmere E56xx/L56xx/X56xx (Nehalem-C)"),
        add: &["aes", "arat", "pclmulqdq"],
        source: "QEMU 10.0 Westmere-v1",
        ..SAME
    },
    ModelSpec {
        name: "SandyBridge",
        base: Some("Westmere"),
        signature: Some((6, 42, 1)),
        model_id: Some("Intel Xeon E312xx (Sandy Bridge)"),
        level: Some(0xd),
        add: &[
            "avx",
            "rdtscp",
            "tsc_deadline_timer",
            "x2apic",
            "xsave",
            "xsaveopt",
        ],
        source: "QEMU 10.0 SandyBridge-v1",
        ..SAME
    },
    ModelSpec {
        name: "IvyBridge",
        base: Some("SandyBridge"),
        signature: Some((6, 58, 9)),
        model_id: Some("Intel Xeon E3-12xx v2 (Ivy Bridge)"),
        add: &["erms", "f16c", "fsgsbase", "rdrand", "smep"],
        source: "QEMU 10.0 IvyBridge-v1",
        ..SAME
    },
    ModelSpec {
        name: "Haswell-noTSX",
        base: Some("IvyBridge"),
        signature: Some((6, 60, 1)),
        model_id: Some("Intel Core Processor (Haswell, no TSX)"),
        add: &[
            "abm", "avx2", "bmi1", "bmi2", "fma", "invpcid", "movbe", "pcid",
        ],
        source: "QEMU 10.0 Haswell-v2",
        ..SAME
    },
    ModelSpec {
        name: "Broadwell-noTSX",
        base: Some("Haswell-noTSX"),
        signature: Some((6, 61, 2)),
        model_id: Some("Intel Core Processor (Broadwell, no TSX)"),
        add: &["3dnowprefetch", "adx", "rdseed", "smap"],
        source: "QEMU 10.0 Broadwell-v2",
        ..SAME
    },
    ModelSpec {
        name: "Skylake-Client",
        base: Some("Broadwell-noTSX"),
        signature: Some((6, 94, 3)),
        model_id: Some("Intel Core Processor (Skylake)"),
        add: &["hle", "rtm", "xgetbv1", "xsavec"],
        source: "QEMU 10.0 Skylake-Client-v1",
        ..SAME
    },
    ModelSpec {
        name: "Skylake-Server",
        base: Some("Skylake-Client"),
        signature: Some((6, 85, 4)),
        model_id: Some("Intel Xeon Processor (Skylake)"),
        add: &[
            "avx512bw",
            "avx512cd",
            "avx512dq",
            "avx512f",
            "avx512vl",
            "clflushopt",
            "clwb",
            "pdpe1gb",
            "pku",
        ],
        source: "QEMU 10.0 Skylake-Server-v1",
        ..SAME
    },
    ModelSpec {
        name: "Cascadelake-Server",
        base: Some("Skylake-Server"),
        signature: Some((6, 85, 6)),
        model_id: Some("Intel Xeon Processor (Cascadelake)"),
        add: &["avx512vnni", "spec_ctrl", "ssbd"],
        source: "QEMU 10.0 Cascadelake-Server-v1",
        ..SAME
    },
    ModelSpec {
        name: "Icelake-Server",
        base: Some("Cascadelake-Server"),
        signature: Some((6, 134, 0)),
        model_id: Some("Intel Xeon Processor (Icelake)"),
        add: &[
            "avx512_vpopcntdq",
            "avx512bitalg",
            "avx512vbmi",
            "avx512vbmi2",
            "gfni",
            "la57",
            "umip",
            "vaes",
            "vpclmulqdq",
            "wbnoinvd",
        ],
        source: "QEMU 10.0 Icelake-Server-v1",
        ..SAME
    },
    ModelSpec {
        name: "EPYC",
        base: Some("qemu64"),
        signature: Some((23, 1, 2)),
        model_id: Some("AMD EPYC Processor"),
        xlevel: Some(0x8000_001e),
        add: &[
            "3dnowprefetch",
            "abm",
            "adx",
            "aes",
            "arat",
            "avx",
            "avx2",
            "bmi1",
            "bmi2",
            "clflushopt",
            "cr8_legacy",
            "f16c",
            "fma",
            "fsgsbase",
            "fxsr_opt",
            "misalignsse",
            "mmxext",
            "monitor",
            "movbe",
            "npt",
            "nrip_save",
            "osvw",
            "pclmulqdq",
            "pdpe1gb",
            "popcnt",
            "rdrand",
            "rdseed",
            "rdtscp",
            "sha_ni",
            "smap",
            "smep",
            "sse4_1",
            "sse4_2",
            "sse4a",
            "ssse3",
            "topoext",
            "vme",
            "xgetbv1",
            "xsave",
            "xsavec",
            "xsaveopt",
        ],
        source: "QEMU 10.0 EPYC-v1",
        ..SAME
    },
    ModelSpec {
        name: "EPYC-Rome",
        base: Some("EPYC"),
        signature: Some((23, 49, 0)),
        model_id: Some("AMD EPYC-Rome Processor"),
        add: &[
            "amd_stibp",
            "clwb",
            "clzero",
            "ibpb",
            "perfctr_core",
            "rdpid",
            "umip",
            "wbnoinvd",
            "xsaveerptr",
            "xsaves",
        ],
        source: "QEMU 10.0 EPYC-Rome-v1",
        ..SAME
    },
    ModelSpec {
        name: "EPYC-Milan",
        base: Some("EPYC-Rome"),
        signature: Some((25, 1, 1)),
        model_id: Some("AMD EPYC-Milan Processor"),
        add: &[
            "amd_ssbd",
            "erms",
            "fsrm",
            "ibrs",
            "invpcid",
            "pcid",
            "pku",
            "svme_addr_chk",
        ],
        source: "QEMU 10.0 EPYC-Milan-v1",
        ..SAME
    },
];

/// The model called `name` (exact, case-sensitive like QEMU).
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().find(|m| m.name == name)
}
