//! The CPUID feature-bit table: each named bit of the feature words ivmm
//! models, at its leaf/subleaf/register/bit.
//!
//! Source: bit positions and the set of named bits follow QEMU 10.0's
//! `target/i386/cpu.c` feature words; the names are the ones Linux prints in
//! `/proc/cpuinfo` (QEMU's `sse4.1`/`lahf-lm` spelling with `.`/`-` as `_`,
//! plus a few renames listed in [`QEMU_ALIASES`]). Both spellings are
//! accepted on the command line.

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    pub fn name(self) -> &'static str {
        match self {
            Reg::Eax => "eax",
            Reg::Ebx => "ebx",
            Reg::Ecx => "ecx",
            Reg::Edx => "edx",
        }
    }

    pub fn parse(s: &str) -> Option<Reg> {
        match s.to_ascii_lowercase().as_str() {
            "eax" => Some(Reg::Eax),
            "ebx" => Some(Reg::Ebx),
            "ecx" => Some(Reg::Ecx),
            "edx" => Some(Reg::Edx),
            _ => None,
        }
    }
}

/// One 32-bit feature register of one CPUID leaf/subleaf.
#[derive(Debug)]
pub struct FeatureWord {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub names: [Option<&'static str>; 32],
}

/// Where one named feature lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureBit {
    pub name: &'static str,
    /// Index into [`WORDS`].
    pub word: usize,
    pub bit: u32,
}

impl FeatureBit {
    pub fn leaf(&self) -> u32 {
        WORDS[self.word].leaf
    }
    pub fn subleaf(&self) -> u32 {
        WORDS[self.word].subleaf
    }
    pub fn reg(&self) -> Reg {
        WORDS[self.word].reg
    }
    pub fn mask(&self) -> u32 {
        1 << self.bit
    }
}

/// QEMU spellings that are not the Linux name with `-`/`.` turned into `_`.
pub const QEMU_ALIASES: &[(&str, &str)] = &[
    ("ds", "dts"),
    ("tsc-deadline", "tsc_deadline_timer"),
    ("cr8legacy", "cr8_legacy"),
    ("tsx-ldtrk", "tsxldtrk"),
    ("sgxlc", "sgx_lc"),
    ("auto-ibrs", "autoibrs"),
    ("sse3", "pni"),
];

/// Looks a feature up by its Linux or QEMU name.
pub fn lookup(name: &str) -> Option<FeatureBit> {
    let alias = QEMU_ALIASES
        .iter()
        .find(|(q, _)| *q == name)
        .map(|(_, l)| *l);
    let normalized = alias
        .map(str::to_owned)
        .unwrap_or_else(|| name.replace(['-', '.'], "_"));
    all().find(|f| f.name == normalized)
}

/// The feature at `leaf`/`subleaf`/`reg` bit `bit`, if it is named.
pub fn at(leaf: u32, subleaf: u32, reg: Reg, bit: u32) -> Option<FeatureBit> {
    all().find(|f| f.leaf() == leaf && f.subleaf() == subleaf && f.reg() == reg && f.bit == bit)
}

/// Every named feature bit, in table order.
pub fn all() -> impl Iterator<Item = FeatureBit> {
    WORDS.iter().enumerate().flat_map(|(word, w)| {
        w.names.iter().enumerate().filter_map(move |(bit, n)| {
            n.map(|name| FeatureBit {
                name,
                word,
                bit: bit as u32,
            })
        })
    })
}

/// The feature words, derived from QEMU 10.0's feature-word table.
#[rustfmt::skip]
pub const WORDS: &[FeatureWord] = &[
    FeatureWord { leaf: 0x1, subleaf: 0, reg: Reg::Edx, names: [
        Some("fpu"), Some("vme"), Some("de"), Some("pse"), Some("tsc"), Some("msr"), Some("pae"), Some("mce"),
        Some("cx8"), Some("apic"), None, Some("sep"), Some("mtrr"), Some("pge"), Some("mca"), Some("cmov"),
        Some("pat"), Some("pse36"), Some("pn"), Some("clflush"), None, Some("dts"), Some("acpi"), Some("mmx"),
        Some("fxsr"), Some("sse"), Some("sse2"), Some("ss"), Some("ht"), Some("tm"), Some("ia64"), Some("pbe"),
    ] },
    FeatureWord { leaf: 0x1, subleaf: 0, reg: Reg::Ecx, names: [
        Some("pni"), Some("pclmulqdq"), Some("dtes64"), Some("monitor"), Some("ds_cpl"), Some("vmx"), Some("smx"), Some("est"),
        Some("tm2"), Some("ssse3"), Some("cid"), None, Some("fma"), Some("cx16"), Some("xtpr"), Some("pdcm"),
        None, Some("pcid"), Some("dca"), Some("sse4_1"), Some("sse4_2"), Some("x2apic"), Some("movbe"), Some("popcnt"),
        Some("tsc_deadline_timer"), Some("aes"), Some("xsave"), None, Some("avx"), Some("f16c"), Some("rdrand"), Some("hypervisor"),
    ] },
    FeatureWord { leaf: 0x6, subleaf: 0, reg: Reg::Eax, names: [
        None, None, Some("arat"), None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
    ] },
    FeatureWord { leaf: 0x7, subleaf: 0, reg: Reg::Ebx, names: [
        Some("fsgsbase"), Some("tsc_adjust"), Some("sgx"), Some("bmi1"), Some("hle"), Some("avx2"), Some("fdp_excptn_only"), Some("smep"),
        Some("bmi2"), Some("erms"), Some("invpcid"), Some("rtm"), None, Some("zero_fcs_fds"), Some("mpx"), None,
        Some("avx512f"), Some("avx512dq"), Some("rdseed"), Some("adx"), Some("smap"), Some("avx512ifma"), Some("pcommit"), Some("clflushopt"),
        Some("clwb"), Some("intel_pt"), Some("avx512pf"), Some("avx512er"), Some("avx512cd"), Some("sha_ni"), Some("avx512bw"), Some("avx512vl"),
    ] },
    FeatureWord { leaf: 0x7, subleaf: 0, reg: Reg::Ecx, names: [
        None, Some("avx512vbmi"), Some("umip"), Some("pku"), None, Some("waitpkg"), Some("avx512vbmi2"), None,
        Some("gfni"), Some("vaes"), Some("vpclmulqdq"), Some("avx512vnni"), Some("avx512bitalg"), None, Some("avx512_vpopcntdq"), None,
        Some("la57"), None, None, None, None, None, Some("rdpid"), None,
        Some("bus_lock_detect"), Some("cldemote"), None, Some("movdiri"), Some("movdir64b"), None, Some("sgx_lc"), Some("pks"),
    ] },
    FeatureWord { leaf: 0x7, subleaf: 0, reg: Reg::Edx, names: [
        None, None, Some("avx512_4vnniw"), Some("avx512_4fmaps"), Some("fsrm"), None, None, None,
        Some("avx512_vp2intersect"), None, Some("md_clear"), None, None, None, Some("serialize"), None,
        Some("tsxldtrk"), None, None, Some("arch_lbr"), None, None, Some("amx_bf16"), Some("avx512_fp16"),
        Some("amx_tile"), Some("amx_int8"), Some("spec_ctrl"), Some("stibp"), Some("flush_l1d"), Some("arch_capabilities"), Some("core_capability"), Some("ssbd"),
    ] },
    FeatureWord { leaf: 0x7, subleaf: 1, reg: Reg::Eax, names: [
        Some("sha512"), Some("sm3"), Some("sm4"), None, Some("avx_vnni"), Some("avx512_bf16"), None, Some("cmpccxadd"),
        None, None, Some("fzrm"), Some("fsrs"), Some("fsrc"), None, None, None,
        None, Some("fred"), Some("lkgs"), Some("wrmsrns"), None, Some("amx_fp16"), None, Some("avx_ifma"),
        None, None, Some("lam"), None, None, None, None, None,
    ] },
    FeatureWord { leaf: 0x7, subleaf: 1, reg: Reg::Edx, names: [
        None, None, None, None, Some("avx_vnni_int8"), Some("avx_ne_convert"), None, None,
        Some("amx_complex"), None, Some("avx_vnni_int16"), None, None, None, Some("prefetchiti"), None,
        None, None, None, Some("avx10"), None, None, None, None,
        None, None, None, None, None, None, None, None,
    ] },
    FeatureWord { leaf: 0xd, subleaf: 1, reg: Reg::Eax, names: [
        Some("xsaveopt"), Some("xsavec"), Some("xgetbv1"), Some("xsaves"), Some("xfd"), None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
    ] },
    FeatureWord { leaf: 0x80000001, subleaf: 0, reg: Reg::Edx, names: [
        None, None, None, None, None, None, None, None,
        None, None, None, Some("syscall"), None, None, None, None,
        None, None, None, None, Some("nx"), None, Some("mmxext"), None,
        None, Some("fxsr_opt"), Some("pdpe1gb"), Some("rdtscp"), None, Some("lm"), Some("3dnowext"), Some("3dnow"),
    ] },
    FeatureWord { leaf: 0x80000001, subleaf: 0, reg: Reg::Ecx, names: [
        Some("lahf_lm"), Some("cmp_legacy"), Some("svm"), Some("extapic"), Some("cr8_legacy"), Some("abm"), Some("sse4a"), Some("misalignsse"),
        Some("3dnowprefetch"), Some("osvw"), Some("ibs"), Some("xop"), Some("skinit"), Some("wdt"), None, Some("lwp"),
        Some("fma4"), Some("tce"), None, Some("nodeid_msr"), None, Some("tbm"), Some("topoext"), Some("perfctr_core"),
        Some("perfctr_nb"), None, None, None, None, None, None, None,
    ] },
    FeatureWord { leaf: 0x80000007, subleaf: 0, reg: Reg::Ebx, names: [
        Some("overflow_recov"), Some("succor"), None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
    ] },
    FeatureWord { leaf: 0x80000007, subleaf: 0, reg: Reg::Edx, names: [
        None, None, None, None, None, None, None, None,
        Some("invtsc"), None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
    ] },
    FeatureWord { leaf: 0x80000008, subleaf: 0, reg: Reg::Ebx, names: [
        Some("clzero"), None, Some("xsaveerptr"), None, None, None, None, None,
        None, Some("wbnoinvd"), None, None, Some("ibpb"), None, Some("ibrs"), Some("amd_stibp"),
        None, Some("stibp_always_on"), None, None, None, None, None, None,
        Some("amd_ssbd"), Some("virt_ssbd"), Some("amd_no_ssb"), None, Some("amd_psfd"), None, None, None,
    ] },
    FeatureWord { leaf: 0x8000000a, subleaf: 0, reg: Reg::Edx, names: [
        Some("npt"), Some("lbrv"), Some("svm_lock"), Some("nrip_save"), Some("tsc_scale"), Some("vmcb_clean"), Some("flushbyasid"), Some("decodeassists"),
        None, None, Some("pause_filter"), None, Some("pfthreshold"), Some("avic"), None, Some("v_vmsave_vmload"),
        Some("vgif"), None, None, None, None, None, None, None,
        None, Some("vnmi"), None, None, Some("svme_addr_chk"), None, None, None,
    ] },
    FeatureWord { leaf: 0x80000021, subleaf: 0, reg: Reg::Eax, names: [
        Some("no_nested_data_bp"), None, Some("lfence_always_serializing"), None, None, None, Some("null_sel_clr_base"), None,
        Some("autoibrs"), None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        Some("eraps"), None, None, Some("sbpb"), Some("ibpb_brtype"), Some("srso_no"), Some("srso_user_kernel_no"), None,
    ] },
];
