use super::*;

fn entry(function: u32, index: u32, v: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        eax: v,
        ebx: v,
        ecx: v,
        edx: v,
        ..Default::default()
    }
}

/// A KVM that supports every bit, with the leaves a modern host reports.
fn everything() -> Vec<kvm_cpuid_entry2> {
    let mut v = Vec::new();
    for leaf in [0, 1, 2, 5, 6, 0xa, 0x14, 0x4000_0000, 0x4000_0001] {
        v.push(entry(leaf, 0, u32::MAX));
    }
    for sub in 0..3 {
        v.push(entry(0x4, sub, 0x121));
        v.push(entry(0x7, sub, u32::MAX));
        v.push(entry(0xb, sub, 0));
    }
    v.push(entry(0xd, 0, 0x2ff));
    v.push(entry(0xd, 1, u32::MAX));
    for sub in 2..10 {
        let mut e = entry(0xd, sub, 0);
        e.eax = 64;
        e.ebx = 512 + 64 * sub;
        v.push(e);
    }
    for leaf in 0x8000_0000..=0x8000_0021 {
        v.push(entry(leaf, 0, u32::MAX));
    }
    v.push(entry(0xc000_0000, 0, 1));
    v
}

/// Removes `names` from a supported CPUID.
fn without(mut v: Vec<kvm_cpuid_entry2>, names: &[&str]) -> Vec<kvm_cpuid_entry2> {
    for n in names {
        let f = features::lookup(n).unwrap();
        let e = v
            .iter_mut()
            .find(|e| e.function == f.leaf() && e.index == f.subleaf())
            .unwrap();
        *reg_mut(e, f.reg()) &= !f.mask();
    }
    v
}

fn get(entries: &[kvm_cpuid_entry2], leaf: u32, sub: u32) -> kvm_cpuid_entry2 {
    *find(entries, leaf, sub).unwrap_or_else(|| panic!("leaf {leaf:#x}.{sub}"))
}

fn has_bit(entries: &[kvm_cpuid_entry2], name: &str) -> bool {
    let f = features::lookup(name).unwrap();
    find(entries, f.leaf(), f.subleaf()).is_some_and(|e| reg_get(e, f.reg()) & f.mask() != 0)
}

#[test]
fn feature_names_are_unique_and_found_by_both_spellings() {
    let names: Vec<_> = features::all().map(|f| f.name).collect();
    for (i, n) in names.iter().enumerate() {
        assert!(!names[..i].contains(n), "{n} twice");
    }
    for (qemu, linux) in [
        ("sse4.1", "sse4_1"),
        ("lahf-lm", "lahf_lm"),
        ("tsc-deadline", "tsc_deadline_timer"),
        ("avx2", "avx2"),
        ("sse3", "pni"),
    ] {
        assert_eq!(features::lookup(qemu).unwrap().name, linux);
    }
    let avx2 = features::lookup("avx2").unwrap();
    assert_eq!(
        (avx2.leaf(), avx2.subleaf(), avx2.reg(), avx2.bit),
        (7, 0, Reg::Ebx, 5)
    );
    let svm = features::lookup("svm").unwrap();
    assert_eq!((svm.leaf(), svm.reg(), svm.bit), (0x8000_0001, Reg::Ecx, 2));
}

#[test]
fn every_model_resolves_and_builds_with_qemu_identity() {
    for m in MODELS {
        let def = CpuDefinition::from_model(m).unwrap_or_else(|e| panic!("{}: {e}", m.name));
        let built = build_cpuid(&everything(), &def, CheckMode::Enforce).unwrap();
        let id = def.identity.as_ref().unwrap();
        let l0 = get(&built.entries, 0, 0);
        let vendor: Vec<u8> = [l0.ebx, l0.edx, l0.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(vendor, id.vendor.id().as_bytes(), "{}", m.name);
        let brand: Vec<u8> = (0x8000_0002..=0x8000_0004)
            .flat_map(|l| {
                let e = get(&built.entries, l, 0);
                [e.eax, e.ebx, e.ecx, e.edx]
            })
            .flat_map(|r| r.to_le_bytes())
            .collect();
        let brand = String::from_utf8(brand).unwrap();
        assert_eq!(brand.trim_end_matches('\0'), id.model_id, "{}", m.name);
        assert!(
            has_bit(&built.entries, "x2apic"),
            "{}: KVM default x2apic",
            m.name
        );
        assert!(
            !has_bit(&built.entries, "svm"),
            "{}: KVM default -svm",
            m.name
        );
        assert!(!has_bit(&built.entries, "monitor"), "{}", m.name);
        assert!(
            built.entries.iter().all(|e| e.function < 0xc000_0000),
            "{}: Centaur leaves dropped",
            m.name
        );
        assert_eq!(
            get(&built.entries, 0x8000_0000, 0).eax,
            id.xlevel.max(0x8000_0000)
        );
    }
}

#[test]
fn models_match_qemu_samples() {
    let (id, _) = resolve_model(models::find("EPYC-Rome").unwrap()).unwrap();
    assert_eq!((id.family, id.model, id.stepping), (23, 49, 0));
    assert_eq!(signature_eax(23, 49, 0), 0x0083_0f10);
    let westmere = CpuDefinition::from_model(models::find("Westmere").unwrap()).unwrap();
    let nehalem = CpuDefinition::from_model(models::find("Nehalem").unwrap()).unwrap();
    let extra: Vec<_> = westmere
        .feature_names()
        .into_iter()
        .filter(|f| !nehalem.has(f))
        .collect();
    assert_eq!(extra, ["pclmulqdq", "aes", "arat"]);
    let rhel6 = CpuDefinition::from_model(models::find("cpu64-rhel6").unwrap()).unwrap();
    let mut want = vec![
        "fpu", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge", "mca",
        "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "pni", "cx16", "x2apic",
        "syscall", "nx", "lm", "lahf_lm",
    ];
    let mut got = rhel6.feature_names();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn every_model_round_trips_through_its_template() {
    for m in MODELS {
        let def = CpuDefinition::from_model(m).unwrap();
        let text = serde_json::to_string_pretty(&template::to_json(&def)).unwrap();
        let back = template::parse(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", m.name));
        assert_eq!(back.identity, def.identity, "{}", m.name);
        assert_eq!(back.words, def.words, "{}", m.name);
        let a = build_cpuid(&everything(), &def, CheckMode::Enforce).unwrap();
        let b = build_cpuid(&everything(), &back, CheckMode::Enforce).unwrap();
        assert_eq!(a.entries, b.entries, "{}", m.name);
    }
}

#[test]
fn enforcement_lists_exactly_the_missing_features() {
    let def = CpuSpec::parse("Skylake-Server")
        .unwrap()
        .definition()
        .unwrap();
    let host = without(everything(), &["avx512f", "avx512bw", "hle", "rtm"]);
    let err = build_cpuid(&host, &def, CheckMode::Enforce).unwrap_err();
    match &err {
        CpuModelError::Missing { missing, .. } => {
            assert_eq!(missing, &["hle", "rtm", "avx512f", "avx512bw"])
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("check=warn"), "{err}");
    let warned = build_cpuid(&host, &def, CheckMode::Warn).unwrap();
    assert_eq!(warned.dropped.len(), 4);
    assert!(!has_bit(&warned.entries, "avx512f"));
    assert!(has_bit(&warned.entries, "avx512dq"));
}

#[test]
fn plus_and_minus_change_one_feature() {
    let def = CpuSpec::parse("EPYC,-avx2,+svm")
        .unwrap()
        .definition()
        .unwrap();
    let built = build_cpuid(&everything(), &def, CheckMode::Enforce).unwrap();
    assert!(!has_bit(&built.entries, "avx2"));
    assert!(has_bit(&built.entries, "svm"));
    assert!(
        has_bit(&built.entries, "npt"),
        "EPYC's SVM word comes with +svm"
    );
    let host = CpuSpec::parse("host,-avx2").unwrap().definition().unwrap();
    let built = build_cpuid(&everything(), &host, CheckMode::Enforce).unwrap();
    assert!(!has_bit(&built.entries, "avx2"));
    assert!(
        has_bit(&built.entries, "avx512f"),
        "host keeps everything else"
    );
    assert!(built.entries.iter().any(|e| e.function == 0xc000_0000));
}

#[test]
fn nested_without_host_support_is_refused_even_with_warn() {
    let no_svm = without(everything(), &["svm"]);
    let def = CpuSpec::parse("qemu64,+svm,check=warn").unwrap();
    let err = build_cpuid(&no_svm, &def.definition().unwrap(), def.check).unwrap_err();
    assert!(
        matches!(err, CpuModelError::NestedUnsupported { feature: "svm", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nested"), "{err}");
}

#[test]
fn bad_cpu_arguments_name_the_culprit() {
    assert_eq!(
        CpuSpec::parse("Pentium9"),
        Err(CpuModelError::UnknownModel("Pentium9".into()))
    );
    assert_eq!(
        CpuSpec::parse("EPYC,+warp-drive"),
        Err(CpuModelError::UnknownFeature("warp-drive".into()))
    );
    assert_eq!(
        CpuSpec::parse("EPYC,check=maybe"),
        Err(CpuModelError::BadOption("check=maybe".into()))
    );
    assert!(matches!(
        CpuSpec::parse(",avx"),
        Err(CpuModelError::EmptyModel(_))
    ));
    assert_eq!(
        CpuSpec::parse("EPYC,avx2=off,check=warn").unwrap().check,
        CheckMode::Warn
    );
}

#[test]
fn xsave_leaf_holds_only_the_models_components() {
    let def = CpuSpec::parse("SandyBridge").unwrap().definition().unwrap();
    let built = build_cpuid(&everything(), &def, CheckMode::Enforce).unwrap();
    assert_eq!(get(&built.entries, 0xd, 0).eax, 0b111);
    assert!(built
        .entries
        .iter()
        .all(|e| e.function != 0xd || e.index <= 2));
    let def = CpuSpec::parse("qemu64").unwrap().definition().unwrap();
    let built = build_cpuid(&everything(), &def, CheckMode::Enforce).unwrap();
    assert_eq!(get(&built.entries, 0xd, 0).eax, 0);
}

#[test]
fn malformed_templates_give_clear_errors() {
    let cases: &[(&str, &str)] = &[
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        (r#"{"colour": 1}"#, "unknown field \"colour\""),
        (r#"{"vendor": "AuthenticAMD"}"#, "\"family\" is missing"),
        (
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "register": "exx", "bitmap": "0b0"}]}"#,
            "\"exx\" is not eax",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "register": "ecx", "bitmap": "0b101"}]}"#,
            "has 3 bits, expected 32",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx2"}]}"#,
            "only 0, 1 and x",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "zz", "register": "ecx", "bitmap": "0b0"}]}"#,
            "cpuid_modifiers[0].leaf",
        ),
        (
            r#"{"cpuid_modifiers": [{"register": "ecx", "bitmap": "0b0"}]}"#,
            "missing field \"leaf\"",
        ),
        (
            r#"{"msr_modifiers": [{"addr": "0x10"}]}"#,
            "missing field \"value\"",
        ),
        (
            r#"{"vendor": "CyrixInstead", "family": 1, "model": 1, "stepping": 1, "model_id": "", "level": 1, "xlevel": "0x80000000"}"#,
            "CyrixInstead",
        ),
    ];
    for (text, want) in cases {
        let err = template::parse(text).unwrap_err();
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn host_template_modifies_only_named_bits() {
    let def = template::parse(
        r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": 0, "register": "ebx",
            "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxx0xxxxx"}],
            "msr_modifiers": [{"addr": "0x10a", "value": "0x0"}]}"#,
    )
    .unwrap();
    assert!(def.identity.is_none());
    assert_eq!(def.msrs, [(0x10a, 0)]);
    let built = build_cpuid(&everything(), &def, CheckMode::Enforce).unwrap();
    assert!(!has_bit(&built.entries, "avx2"));
    assert!(has_bit(&built.entries, "bmi2"));
}

#[test]
fn host_gets_what_qemu_adds_to_kvms_answer() {
    let mut kvm = without(everything(), &["tsc_deadline_timer", "succor"]);
    for e in kvm
        .iter_mut()
        .filter(|e| (0x8000_0002..=0x8000_0004).contains(&e.function))
    {
        (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
    }
    let mut built = build_cpuid(&kvm, &CpuDefinition::host(), CheckMode::Enforce).unwrap();
    assert!(has_bit(&built.entries, "tsc_deadline_timer"));
    assert!(has_bit(&built.entries, "succor"));
    fill_host_brand(&mut built.entries, [[0x2044_4d41, 0, 0, 0], [0; 4], [0; 4]]);
    assert_eq!(get(&built.entries, 0x8000_0002, 0).eax, 0x2044_4d41);
}

#[test]
fn svm_subfeatures_follow_svm() {
    let def = CpuSpec::parse("EPYC").unwrap().definition().unwrap();
    let no_nrips = without(everything(), &["nrip_save"]);
    let built = build_cpuid(&no_nrips, &def, CheckMode::Enforce).unwrap();
    assert!(!has_bit(&built.entries, "npt"), "no svm, no SVM leaf bits");
    let def = CpuSpec::parse("EPYC,+svm").unwrap().definition().unwrap();
    let err = build_cpuid(&no_nrips, &def, CheckMode::Enforce).unwrap_err();
    assert!(err.to_string().contains("nrip_save"), "{err}");
}

#[test]
fn topoext_leaves_are_synthesized_when_kvm_has_none() {
    let mut kvm = without(everything(), &["topoext"]);
    kvm.retain(|e| e.function != 0x8000_001d && e.function != 0x8000_001e);
    let def = CpuSpec::parse("EPYC").unwrap().definition().unwrap();
    let mut built = build_cpuid(&kvm, &def, CheckMode::Enforce).unwrap();
    assert!(has_bit(&built.entries, "topoext"));
    let l3 = get(&built.entries, 0x8000_001d, 3);
    assert_eq!(((l3.eax >> 5) & 7, l3.ecx + 1), (3, 8192));
    let topo = crate::cpuid::Topology::parse("cores=2,threads=2", 4).unwrap();
    crate::cpuid::patch_for_vcpu(&mut built.entries, 3, &topo);
    assert_eq!(get(&built.entries, 0x8000_001e, 0).eax, 3);
    assert_eq!(get(&built.entries, 0x8000_001e, 0).ebx, (1 << 8) | 1);
    assert_eq!((get(&built.entries, 0x8000_001d, 3).eax >> 14) & 0xfff, 3);
    let def = CpuSpec::parse("qemu64").unwrap().definition().unwrap();
    let built = build_cpuid(&everything(), &def, CheckMode::Enforce).unwrap();
    assert!(built.entries.iter().all(|e| e.function != 0x8000_001e));
}
