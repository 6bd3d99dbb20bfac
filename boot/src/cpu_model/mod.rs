//! CPU models: what `--cpu host`, `--cpu MODEL[,+feat][,-feat]…` and
//! `--cpu-template FILE` mean, as CPUID entries built from KVM's supported
//! CPUID.
//!
//! - [`features`]: the feature-bit table (name ↔ leaf/subleaf/register/bit).
//! - [`models`]: the named models, each a base model plus changes.
//! - [`template`]: the JSON template format (also what `ivmm cpu show --json`
//!   prints).
//!
//! Everything is reduced to one [`CpuDefinition`]: optional identity
//! (vendor, signature, model-id, level, xlevel) and per-register masks of
//! bits to set and to clear. [`build_cpuid`] applies it to KVM's supported
//! CPUID and checks, like QEMU's `enforce`, that every bit the definition
//! sets is one KVM can provide. Per-vCPU topology is applied afterwards by
//! [`crate::cpuid::patch_for_vcpu`].

pub mod features;
pub mod models;
pub mod template;

use kvm_bindings::kvm_cpuid_entry2;

pub use features::{FeatureBit, Reg};
pub use models::{ModelSpec, Vendor, MODELS};

/// kvm_cpuid_entry2.flags: the subleaf (index) matters for this leaf.
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;

/// Leaf 1 ECX bits KVM leaves to userspace: QEMU reports both as supported
/// with an in-kernel irqchip (ivmm always has one).
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// 0x8000_0007 EBX: McaOverflowRecov and SUCCOR.
const EXT7_EBX_MCA_RECOVERY: u32 = 0b11;
/// 0x8000_0001 ECX bit 22: TopologyExtensions (leaves 0x8000_001D/1E),
/// which QEMU provides itself and so always allows.
const EXT1_ECX_TOPOEXT: u32 = 1 << 22;

/// Cache hierarchy reported in 0x8000_001D when the model has topoext but
/// KVM has no such leaf: (type 1=data 2=instruction 3=unified, level, size
/// in KiB, ways, line size, EDX: bit 0 = WBINVD not exact for lower levels,
/// bit 1 = inclusive). The sizes are QEMU's `EPYC` cache model.
const SYNTH_CACHES: &[(u32, u32, u32, u32, u32, u32)] = &[
    (1, 1, 32, 8, 64, 0b01),
    (2, 1, 64, 4, 64, 0b01),
    (3, 2, 512, 8, 64, 0b00),
    (3, 3, 8192, 16, 64, 0b10),
];
/// Leaf 1 EDX bits that AMD CPUs mirror in leaf 0x8000_0001 EDX (fpu..apic,
/// mtrr..pse36, mmx, fxsr).
const AMD_EDX_ALIASES: u32 = 0x0183_f3ff;

/// Basic leaves a named model keeps (if at or below its level); the rest
/// (PMU, RDT, SGX, PT, AMX, …) are left out, as QEMU leaves them zero for
/// named models.
const MODEL_BASIC_LEAVES: &[u32] = &[0x0, 0x1, 0x2, 0x4, 0x5, 0x6, 0x7, 0xb, 0xd];
/// Extended leaves a named model keeps (if at or below its xlevel).
const MODEL_EXT_LEAVES: &[u32] = &[
    0x8000_0000,
    0x8000_0001,
    0x8000_0002,
    0x8000_0003,
    0x8000_0004,
    0x8000_0005,
    0x8000_0006,
    0x8000_0007,
    0x8000_0008,
    0x8000_000a,
    0x8000_001d,
    0x8000_001e,
    0x8000_0021,
];
/// Start of the hypervisor (KVM) leaves, kept as KVM reports them.
const HYPERVISOR_LEAVES: u32 = 0x4000_0000;
const EXT_LEAVES: u32 = 0x8000_0000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuModelError {
    #[error("--cpu {0:?}: unknown CPU model (see `ivmm cpu list`)")]
    UnknownModel(String),
    #[error("--cpu: unknown CPU feature {0:?} (names as in /proc/cpuinfo, e.g. avx2, svm)")]
    UnknownFeature(String),
    #[error("--cpu: {0:?}: expected +FEATURE, -FEATURE, FEATURE=on|off or check=enforce|warn")]
    BadOption(String),
    #[error("--cpu {0}: an empty model name")]
    EmptyModel(String),
    #[error(
        "--cpu {spec}: this host's KVM cannot provide: {} (add check=warn to run without them)",
        missing.join(" ")
    )]
    Missing { spec: String, missing: Vec<String> },
    #[error(
        "--cpu {spec}: nested virtualization ({feature}) is not available from this host's KVM \
         (load kvm_amd/kvm_intel with nested=1 on a host with {feature})"
    )]
    NestedUnsupported { spec: String, feature: &'static str },
    #[error("--cpu-template {path}: {message}")]
    Template { path: String, message: String },
    #[error("model {0:?}: base model {1:?} does not exist")]
    BadBase(&'static str, &'static str),
}

/// What to do with features KVM cannot provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckMode {
    /// Refuse to start (QEMU's `enforce`).
    #[default]
    Enforce,
    /// Start without them and report them.
    Warn,
}

/// Bits to force on and off in one CPUID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordMask {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub set: u32,
    pub clear: u32,
}

/// Identity of a modelled CPU (None in [`CpuDefinition`] = host's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub vendor: Vendor,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub model_id: String,
    pub level: u32,
    pub xlevel: u32,
}

/// A CPU as ivmm builds it: host passthrough (identity None) or a model,
/// plus register masks and MSR values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuDefinition {
    /// What the user asked for (for messages).
    pub name: String,
    pub identity: Option<Identity>,
    pub words: Vec<WordMask>,
    pub msrs: Vec<(u32, u64)>,
    /// Features the user added by name (`+svm`): nested virtualization
    /// requested explicitly is refused, not dropped, under check=warn.
    pub explicit: Vec<&'static str>,
}

/// The result of [`build_cpuid`].
#[derive(Debug, Clone)]
pub struct BuiltCpuid {
    pub entries: Vec<kvm_cpuid_entry2>,
    /// Features left out under check=warn.
    pub dropped: Vec<String>,
}

/// A parsed `--cpu` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSpec {
    /// "host" or a model name.
    pub model: String,
    /// (+ = true, feature)
    pub changes: Vec<(bool, FeatureBit)>,
    pub check: CheckMode,
    pub text: String,
}

impl CpuSpec {
    /// Parses `MODEL[,+feat][,-feat][,feat=on|off][,check=enforce|warn]`.
    pub fn parse(text: &str) -> Result<CpuSpec, CpuModelError> {
        let mut parts = text.split(',');
        let model = parts.next().unwrap_or_default().trim().to_owned();
        if model.is_empty() {
            return Err(CpuModelError::EmptyModel(text.to_owned()));
        }
        if model != "host" && models::find(&model).is_none() {
            return Err(CpuModelError::UnknownModel(model));
        }
        let mut spec = CpuSpec {
            model,
            changes: Vec::new(),
            check: CheckMode::Enforce,
            text: text.to_owned(),
        };
        for part in parts {
            let part = part.trim();
            let (on, name) = if let Some(n) = part.strip_prefix('+') {
                (true, n)
            } else if let Some(n) = part.strip_prefix('-') {
                (false, n)
            } else if let Some(mode) = part.strip_prefix("check=") {
                spec.check = match mode {
                    "enforce" => CheckMode::Enforce,
                    "warn" => CheckMode::Warn,
                    _ => return Err(CpuModelError::BadOption(part.to_owned())),
                };
                continue;
            } else if part == "enforce" {
                spec.check = CheckMode::Enforce;
                continue;
            } else if let Some((n, v)) = part.split_once('=') {
                match v {
                    "on" | "true" => (true, n),
                    "off" | "false" => (false, n),
                    _ => return Err(CpuModelError::BadOption(part.to_owned())),
                }
            } else {
                return Err(CpuModelError::BadOption(part.to_owned()));
            };
            let bit = features::lookup(name)
                .ok_or_else(|| CpuModelError::UnknownFeature(name.to_owned()))?;
            spec.changes.push((on, bit));
        }
        Ok(spec)
    }

    /// The definition this spec names, with its changes applied.
    pub fn definition(&self) -> Result<CpuDefinition, CpuModelError> {
        let mut def = if self.model == "host" {
            CpuDefinition::host()
        } else {
            let spec = models::find(&self.model)
                .ok_or_else(|| CpuModelError::UnknownModel(self.model.clone()))?;
            CpuDefinition::from_model(spec)?
        };
        def.name = self.text.clone();
        for (on, bit) in &self.changes {
            def.set_feature(*bit, *on);
            if *on {
                def.explicit.push(bit.name);
            }
        }
        Ok(def)
    }
}

/// A model's own feature set (its base chain resolved), and its identity.
pub fn resolve_model(
    spec: &'static ModelSpec,
) -> Result<(Identity, Vec<FeatureBit>), CpuModelError> {
    let mut chain = vec![spec];
    let mut cur = spec;
    while let Some(base) = cur.base {
        cur = models::find(base).ok_or(CpuModelError::BadBase(cur.name, base))?;
        if chain.len() > MODELS.len() {
            return Err(CpuModelError::BadBase(cur.name, base));
        }
        chain.push(cur);
    }
    let mut feats: Vec<FeatureBit> = Vec::new();
    let mut ident: Option<Identity> = None;
    for m in chain.iter().rev() {
        for name in m.add {
            let f = features::lookup(name).ok_or(CpuModelError::BadBase(m.name, name))?;
            if !feats.contains(&f) {
                feats.push(f);
            }
        }
        for name in m.remove {
            let f = features::lookup(name).ok_or(CpuModelError::BadBase(m.name, name))?;
            feats.retain(|x| *x != f);
        }
        let base = ident.take();
        let (family, model, stepping) = m
            .signature
            .or(base.as_ref().map(|b| (b.family, b.model, b.stepping)))
            .unwrap_or((0, 0, 0));
        ident = Some(Identity {
            vendor: m
                .vendor
                .or(base.as_ref().map(|b| b.vendor))
                .unwrap_or(Vendor::Amd),
            family,
            model,
            stepping,
            model_id: m
                .model_id
                .map(str::to_owned)
                .or(base.as_ref().map(|b| b.model_id.clone()))
                .unwrap_or_default(),
            level: m.level.or(base.as_ref().map(|b| b.level)).unwrap_or(1),
            xlevel: m
                .xlevel
                .or(base.as_ref().map(|b| b.xlevel))
                .unwrap_or(EXT_LEAVES),
        });
    }
    let ident = ident.ok_or(CpuModelError::BadBase(spec.name, ""))?;
    Ok((ident, feats))
}

impl CpuDefinition {
    /// Everything KVM supports, identity of the host.
    pub fn host() -> CpuDefinition {
        CpuDefinition {
            name: "host".into(),
            identity: None,
            words: Vec::new(),
            msrs: Vec::new(),
            explicit: Vec::new(),
        }
    }

    /// A named model as QEMU runs it under KVM: the model's bits in every
    /// feature word (all other bits clear), then QEMU's KVM defaults for
    /// models: x2apic on; svm, monitor and acpi off.
    pub fn from_model(spec: &'static ModelSpec) -> Result<CpuDefinition, CpuModelError> {
        let (identity, feats) = resolve_model(spec)?;
        let mut def = CpuDefinition {
            name: spec.name.into(),
            identity: Some(identity),
            words: features::WORDS
                .iter()
                .map(|w| WordMask {
                    leaf: w.leaf,
                    subleaf: w.subleaf,
                    reg: w.reg,
                    set: 0,
                    clear: u32::MAX,
                })
                .collect(),
            msrs: Vec::new(),
            explicit: Vec::new(),
        };
        for f in feats {
            def.set_feature(f, true);
        }
        for (name, on) in [
            ("x2apic", true),
            ("svm", false),
            ("monitor", false),
            ("acpi", false),
        ] {
            if let Some(f) = features::lookup(name) {
                def.set_feature(f, on);
            }
        }
        Ok(def)
    }

    /// Forces one feature on or off.
    pub fn set_feature(&mut self, f: FeatureBit, on: bool) {
        let (leaf, subleaf, reg) = (f.leaf(), f.subleaf(), f.reg());
        let idx = match self
            .words
            .iter()
            .position(|w| w.leaf == leaf && w.subleaf == subleaf && w.reg == reg)
        {
            Some(i) => i,
            None => {
                self.words.push(WordMask {
                    leaf,
                    subleaf,
                    reg,
                    set: 0,
                    clear: 0,
                });
                self.words.len() - 1
            }
        };
        let w = &mut self.words[idx];
        if on {
            w.set |= f.mask();
            w.clear &= !f.mask();
        } else {
            w.set &= !f.mask();
            w.clear |= f.mask();
        }
    }

    /// Whether the definition forces `name` on.
    pub fn has(&self, name: &str) -> bool {
        features::lookup(name).is_some_and(|f| {
            self.words.iter().any(|w| {
                w.leaf == f.leaf()
                    && w.subleaf == f.subleaf()
                    && w.reg == f.reg()
                    && w.set & f.mask() != 0
            })
        })
    }

    /// Names of the features the definition forces on, in table order.
    pub fn feature_names(&self) -> Vec<&'static str> {
        features::all()
            .filter(|f| {
                self.words.iter().any(|w| {
                    w.leaf == f.leaf()
                        && w.subleaf == f.subleaf()
                        && w.reg == f.reg()
                        && w.set & f.mask() != 0
                })
            })
            .map(|f| f.name)
            .collect()
    }
}

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

fn reg_get(e: &kvm_cpuid_entry2, reg: Reg) -> u32 {
    match reg {
        Reg::Eax => e.eax,
        Reg::Ebx => e.ebx,
        Reg::Ecx => e.ecx,
        Reg::Edx => e.edx,
    }
}

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && (e.index == subleaf || !indexed(leaf)))
}

fn find_mut(
    entries: &mut [kvm_cpuid_entry2],
    leaf: u32,
    subleaf: u32,
) -> Option<&mut kvm_cpuid_entry2> {
    entries
        .iter_mut()
        .find(|e| e.function == leaf && (e.index == subleaf || !indexed(leaf)))
}

/// Leaves whose subleaf (ECX input) selects different data.
fn indexed(leaf: u32) -> bool {
    matches!(
        leaf,
        0x4 | 0x7 | 0xb | 0xd | 0xf | 0x10 | 0x12 | 0x14 | 0x1d | 0x1f | 0x24 | 0x8000_001d
    )
}

fn ensure(entries: &mut Vec<kvm_cpuid_entry2>, leaf: u32, subleaf: u32) {
    if find(entries, leaf, subleaf).is_none() {
        entries.push(kvm_cpuid_entry2 {
            function: leaf,
            index: if indexed(leaf) { subleaf } else { 0 },
            flags: if indexed(leaf) {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            ..Default::default()
        });
    }
}

/// What KVM can provide in one register, with the bits QEMU adds to KVM's
/// answer itself (hypervisor, TSC deadline with an in-kernel irqchip).
fn supported_word(supported: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32, reg: Reg) -> u32 {
    let v = find(supported, leaf, subleaf).map_or(0, |e| reg_get(e, reg));
    v | userspace_bits(leaf, reg)
}

/// Bits KVM leaves out of KVM_GET_SUPPORTED_CPUID because the VMM provides
/// them, and which QEMU adds to KVM's answer: TSC deadline and hypervisor
/// (leaf 1 ECX, in-kernel LAPIC), MCA overflow recovery and SUCCOR
/// (0x8000_0007 EBX, machine checks are delivered by the VMM).
fn userspace_bits(leaf: u32, reg: Reg) -> u32 {
    match (leaf, reg) {
        (1, Reg::Ecx) => LEAF1_ECX_TSC_DEADLINE | LEAF1_ECX_HYPERVISOR,
        (0x8000_0007, Reg::Ebx) => EXT7_EBX_MCA_RECOVERY,
        (0x8000_0001, Reg::Ecx) => EXT1_ECX_TOPOEXT,
        _ => 0,
    }
}

fn bit_name(leaf: u32, subleaf: u32, reg: Reg, bit: u32) -> String {
    features::at(leaf, subleaf, reg, bit).map_or_else(
        || format!("CPUID.{leaf:#x}.{subleaf}:{}[{bit}]", reg.name()),
        |f| f.name.to_owned(),
    )
}

fn vendor_regs(v: Vendor) -> (u32, u32, u32) {
    let b = v.id().as_bytes();
    let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (w(0), w(4), w(8)) // EBX, EDX, ECX
}

/// Puts `brand` (the host's 0x8000_0002..4 registers, EAX..EDX each) into
/// host-model entries whose brand leaves KVM left empty (QEMU's `-cpu host`
/// reads the brand string from the host too).
pub fn fill_host_brand(entries: &mut [kvm_cpuid_entry2], brand: [[u32; 4]; 3]) {
    for (i, regs) in brand.iter().enumerate() {
        if let Some(e) = find_mut(entries, EXT_LEAVES + 2 + i as u32, 0) {
            if [e.eax, e.ebx, e.ecx, e.edx] == [0; 4] {
                [e.eax, e.ebx, e.ecx, e.edx] = *regs;
            }
        }
    }
}

/// CPUID leaf 1 EAX for a family/model/stepping (extended fields as the
/// SDM describes them).
pub fn signature_eax(family: u32, model: u32, stepping: u32) -> u32 {
    let fam = if family > 0xf {
        (0xf << 8) | ((family - 0xf) << 20)
    } else {
        family << 8
    };
    fam | ((model & 0xf) << 4) | ((model >> 4) << 16) | (stepping & 0xf)
}

/// XSAVE state components a model may enable, by the feature that needs
/// them: (feature, XCR0 bits).
const XSAVE_COMPONENTS: &[(&str, u32)] = &[
    ("xsave", 0b11),
    ("avx", 1 << 2),
    ("mpx", 0b11 << 3),
    ("avx512f", 0b111 << 5),
    ("pku", 1 << 9),
    ("amx_tile", 0b11 << 17),
];

/// Applies `def` to KVM's supported CPUID. Features `def` sets that KVM
/// cannot provide are an error under [`CheckMode::Enforce`] and are left
/// out under [`CheckMode::Warn`].
pub fn build_cpuid(
    supported: &[kvm_cpuid_entry2],
    def: &CpuDefinition,
    check: CheckMode,
) -> Result<BuiltCpuid, CpuModelError> {
    // Enforcement first: a bit is missing if the definition sets it and
    // KVM's supported register does not have it.
    let mut missing = Vec::new();
    let mut words = def.words.clone();
    if def.identity.is_some() && !def.has("svm") {
        // As QEMU's feature dependencies: no SVM, no SVM sub-features.
        for w in words.iter_mut().filter(|w| w.leaf == 0x8000_000a) {
            w.clear |= w.set;
            w.set = 0;
        }
    }
    for w in &mut words {
        let lacking = w.set & !supported_word(supported, w.leaf, w.subleaf, w.reg);
        for bit in (0..32).filter(|b| lacking & (1 << b) != 0) {
            missing.push(bit_name(w.leaf, w.subleaf, w.reg, bit));
        }
        w.set &= !lacking;
        w.clear |= lacking;
    }
    for nested in ["svm", "vmx"] {
        if def.explicit.contains(&nested) && missing.iter().any(|m| m == nested) {
            let feature = if nested == "svm" { "svm" } else { "vmx" };
            return Err(CpuModelError::NestedUnsupported {
                spec: def.name.clone(),
                feature,
            });
        }
    }
    if !missing.is_empty() && check == CheckMode::Enforce {
        return Err(CpuModelError::Missing {
            spec: def.name.clone(),
            missing,
        });
    }
    let effective = CpuDefinition {
        words,
        ..def.clone()
    };

    let mut entries: Vec<kvm_cpuid_entry2> = supported.to_vec();
    if let Some(id) = &def.identity {
        shape_model(&mut entries, &effective, id);
    } else {
        // The host as QEMU's `-cpu host` sees it: KVM's answer plus the
        // bits the VMM provides.
        for e in entries.iter_mut() {
            if e.function == 1 || e.function == 0x8000_0007 {
                e.ecx |= userspace_bits(e.function, Reg::Ecx);
                e.ebx |= userspace_bits(e.function, Reg::Ebx);
            }
        }
        for w in &effective.words {
            if w.set != 0 {
                ensure(&mut entries, w.leaf, w.subleaf);
            }
        }
        apply_words(&mut entries, &effective.words);
    }
    Ok(BuiltCpuid {
        entries,
        dropped: missing,
    })
}

fn apply_words(entries: &mut [kvm_cpuid_entry2], words: &[WordMask]) {
    for w in words {
        if let Some(e) = find_mut(entries, w.leaf, w.subleaf) {
            let r = reg_mut(e, w.reg);
            *r = (*r & !w.clear) | w.set;
        }
    }
}

/// Lays out the leaves of a named (or templated) model on top of KVM's.
fn shape_model(entries: &mut Vec<kvm_cpuid_entry2>, def: &CpuDefinition, id: &Identity) {
    // QEMU raises level/xlevel to cover the features in use.
    let mut level = id.level;
    let mut xlevel = id.xlevel;
    for w in def.words.iter().filter(|w| w.set != 0) {
        if w.leaf < HYPERVISOR_LEAVES {
            level = level.max(w.leaf);
        } else if w.leaf >= EXT_LEAVES {
            xlevel = xlevel.max(w.leaf);
        }
    }
    entries.retain(|e| {
        let f = e.function;
        if f < HYPERVISOR_LEAVES {
            f <= level && MODEL_BASIC_LEAVES.contains(&f)
        } else if f < EXT_LEAVES {
            true
        } else if f < 0xc000_0000 {
            f <= xlevel && MODEL_EXT_LEAVES.contains(&f)
        } else {
            false
        }
    });
    for leaf in [0, 1, EXT_LEAVES, EXT_LEAVES + 1] {
        ensure(entries, leaf, 0);
    }
    if xlevel >= EXT_LEAVES + 4 {
        for leaf in EXT_LEAVES + 2..=EXT_LEAVES + 4 {
            ensure(entries, leaf, 0);
        }
    }
    if level >= 0xb {
        for sub in 0..3 {
            ensure(entries, 0xb, sub);
        }
    }
    for w in def.words.iter().filter(|w| w.set != 0) {
        ensure(entries, w.leaf, w.subleaf);
    }

    let (vb, vd, vc) = vendor_regs(id.vendor);
    let sig = signature_eax(id.family, id.model, id.stepping);
    let mut brand = [0u8; 48];
    for (d, s) in brand.iter_mut().zip(id.model_id.bytes()) {
        *d = s;
    }
    let brand_word =
        |i: usize| u32::from_le_bytes([brand[i], brand[i + 1], brand[i + 2], brand[i + 3]]);
    let any_7_1 = def
        .words
        .iter()
        .any(|w| w.leaf == 7 && w.subleaf == 1 && w.set != 0);
    entries.retain(|e| e.function != 7 || e.index == 0 || (e.index == 1 && any_7_1));

    for e in entries.iter_mut() {
        match e.function {
            0 => {
                e.eax = level;
                (e.ebx, e.edx, e.ecx) = (vb, vd, vc);
            }
            1 => e.eax = sig,
            5 => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            6 => (e.ebx, e.ecx, e.edx) = (0, 0, 0),
            7 if e.index == 0 => e.eax = u32::from(any_7_1),
            0x8000_0000 => {
                e.eax = xlevel;
                (e.ebx, e.edx, e.ecx) = (vb, vd, vc);
            }
            0x8000_0001 => {
                e.eax = sig;
                e.ebx = 0;
            }
            f @ 0x8000_0002..=0x8000_0004 => {
                let base = (f - 0x8000_0002) as usize * 16;
                e.eax = brand_word(base);
                e.ebx = brand_word(base + 4);
                e.ecx = brand_word(base + 8);
                e.edx = brand_word(base + 12);
            }
            0x8000_0007 => (e.eax, e.ecx) = (0, 0),
            0x8000_0021 => (e.ebx, e.ecx, e.edx) = (0, 0, 0),
            _ => {}
        }
    }
    apply_words(entries, &def.words);

    let l1_edx = find(entries, 1, 0).map_or(0, |e| e.edx);
    for e in entries.iter_mut() {
        match e.function {
            0x8000_0001 if id.vendor == Vendor::Amd => e.edx |= l1_edx & AMD_EDX_ALIASES,
            0x8000_000a if !def.has("svm") => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            _ => {}
        }
    }
    shape_topoext(entries, def);
    shape_xsave(entries, def);
}

/// Leaves 0x8000_001D/1E exist only with topoext; when KVM has no cache
/// leaves to offer, they are synthesized (sharing and IDs are per vCPU, in
/// [`crate::cpuid::patch_for_vcpu`]).
fn shape_topoext(entries: &mut Vec<kvm_cpuid_entry2>, def: &CpuDefinition) {
    if !def.has("topoext") {
        entries.retain(|e| e.function != 0x8000_001d && e.function != 0x8000_001e);
        return;
    }
    let has_caches = entries
        .iter()
        .any(|e| e.function == 0x8000_001d && e.eax & 0x1f != 0);
    if !has_caches {
        entries.retain(|e| e.function != 0x8000_001d);
        for (i, &(kind, level, kib, ways, line, edx)) in SYNTH_CACHES.iter().enumerate() {
            let sets = kib * 1024 / (ways * line);
            entries.push(kvm_cpuid_entry2 {
                function: 0x8000_001d,
                index: i as u32,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: kind | (level << 5) | (1 << 8),
                ebx: (line - 1) | ((ways - 1) << 22),
                ecx: sets - 1,
                edx,
                ..Default::default()
            });
        }
        ensure(entries, 0x8000_001d, SYNTH_CACHES.len() as u32);
    }
    ensure(entries, 0x8000_001e, 0);
}

/// Leaf 0xD: only the state components the model's features use.
fn shape_xsave(entries: &mut Vec<kvm_cpuid_entry2>, def: &CpuDefinition) {
    let xcr0: u32 = if def.has("xsave") {
        XSAVE_COMPONENTS
            .iter()
            .filter(|(f, _)| def.has(f))
            .fold(0, |acc, (_, bits)| acc | bits)
    } else {
        0
    };
    entries.retain(|e| e.function != 0xd || e.index < 2 || xcr0 & (1 << e.index) != 0);
    // Size of the standard-format area for the enabled components.
    let size = entries
        .iter()
        .filter(|e| e.function == 0xd && e.index >= 2)
        .map(|e| e.ebx.saturating_add(e.eax))
        .fold(if xcr0 != 0 { 576 } else { 0 }, u32::max);
    for e in entries.iter_mut().filter(|e| e.function == 0xd) {
        match e.index {
            0 => {
                e.eax &= xcr0;
                e.edx = 0;
                e.ebx = size;
                e.ecx = size;
            }
            1 => {
                if !def.has("xsaves") {
                    (e.ecx, e.edx) = (0, 0);
                }
                if xcr0 == 0 {
                    e.eax = 0;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
