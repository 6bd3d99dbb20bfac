//! CPU templates: a JSON file describing a [`CpuDefinition`] as CPUID
//! register bitmaps and MSR values (the shape follows Firecracker's custom
//! CPU templates, flattened to one modifier per register). `ivmm cpu show
//! MODEL --json` prints a model in this format, so it is a template to
//! start from.
//!
//! ```json
//! {
//!   "vendor": "AuthenticAMD", "family": 23, "model": 1, "stepping": 2,
//!   "model_id": "AMD EPYC Processor", "level": "0xd", "xlevel": "0x8000001e",
//!   "cpuid_modifiers": [
//!     { "leaf": "0x1", "subleaf": "0x0", "register": "ecx",
//!       "bitmap": "0b1x0…" }
//!   ],
//!   "msr_modifiers": [ { "addr": "0x10a", "value": "0x0" } ]
//! }
//! ```
//!
//! Bitmaps are 32 characters (after `0b`), most significant bit first:
//! `1` = the bit is set (and must be provided by KVM), `0` = cleared,
//! `x` = left as KVM reports it. The identity fields are optional, but all
//! or none: without them the template modifies the host CPU. `features`
//! (printed by `cpu show --json`) is informational and ignored on input:
//! the bitmaps are the template.

use serde_json::{json, Map, Value};

use super::{CpuDefinition, Identity, Reg, Vendor, WordMask};

/// Why a template was rejected (the caller adds the file name).
pub type TemplateError = String;

fn number(v: &Value, what: &str) -> Result<u64, TemplateError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{what}: {n} is not a non-negative integer")),
        Value::String(s) => {
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse::<u64>(),
            };
            parsed.map_err(|_| format!("{what}: {s:?} is not a number (decimal or 0x hex)"))
        }
        other => Err(format!("{what}: expected a number, found {other}")),
    }
}

fn number32(v: &Value, what: &str) -> Result<u32, TemplateError> {
    let n = number(v, what)?;
    u32::try_from(n).map_err(|_| format!("{what}: {n:#x} does not fit in 32 bits"))
}

fn field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    ctx: &str,
) -> Result<&'a Value, TemplateError> {
    obj.get(key)
        .ok_or_else(|| format!("{ctx}: missing field {key:?}"))
}

/// Parses a `0b` bitmap of exactly 32 `0`/`1`/`x` characters into
/// (set, clear) masks.
pub fn parse_bitmap(s: &str, ctx: &str) -> Result<(u32, u32), TemplateError> {
    let body = s
        .strip_prefix("0b")
        .ok_or_else(|| format!("{ctx}: bitmap {s:?} must start with 0b"))?;
    let chars: Vec<char> = body.chars().filter(|c| *c != '_').collect();
    if chars.len() != 32 {
        return Err(format!(
            "{ctx}: bitmap {s:?} has {} bits, expected 32",
            chars.len()
        ));
    }
    let (mut set, mut clear) = (0u32, 0u32);
    for (i, c) in chars.iter().enumerate() {
        let bit = 1u32 << (31 - i);
        match c {
            '1' => set |= bit,
            '0' => clear |= bit,
            'x' | 'X' => {}
            other => {
                return Err(format!(
                    "{ctx}: bitmap {s:?} has {other:?}; only 0, 1 and x are allowed"
                ))
            }
        }
    }
    Ok((set, clear))
}

/// Formats (set, clear) masks as a template bitmap.
pub fn format_bitmap(set: u32, clear: u32) -> String {
    let mut s = String::from("0b");
    for i in (0..32).rev() {
        let bit = 1u32 << i;
        s.push(if set & bit != 0 {
            '1'
        } else if clear & bit != 0 {
            '0'
        } else {
            'x'
        });
    }
    s
}

const IDENTITY_FIELDS: &[&str] = &[
    "vendor", "family", "model", "stepping", "model_id", "level", "xlevel",
];
const KNOWN_FIELDS: &[&str] = &[
    "name",
    "vendor",
    "family",
    "model",
    "stepping",
    "model_id",
    "level",
    "xlevel",
    "features",
    "cpuid_modifiers",
    "msr_modifiers",
];

/// Parses a template from JSON text.
pub fn parse(text: &str) -> Result<CpuDefinition, TemplateError> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = root
        .as_object()
        .ok_or("expected a JSON object at the top level")?;
    if let Some(unknown) = obj.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {unknown:?} (expected one of: {})",
            KNOWN_FIELDS.join(", ")
        ));
    }
    let present: Vec<&str> = IDENTITY_FIELDS
        .iter()
        .copied()
        .filter(|f| obj.contains_key(*f))
        .collect();
    let identity = if present.is_empty() {
        None
    } else {
        if let Some(missing) = IDENTITY_FIELDS.iter().find(|f| !obj.contains_key(**f)) {
            return Err(format!(
                "field {missing:?} is missing: vendor, family, model, stepping, model_id, level \
                 and xlevel go together"
            ));
        }
        let vendor_s = obj["vendor"].as_str().ok_or("vendor: expected a string")?;
        let vendor = Vendor::parse(vendor_s)
            .ok_or_else(|| format!("vendor: {vendor_s:?} is not GenuineIntel or AuthenticAMD"))?;
        let model_id = obj["model_id"]
            .as_str()
            .ok_or("model_id: expected a string")?
            .to_owned();
        if model_id.len() > 48 {
            return Err(format!(
                "model_id: {} bytes; CPUID holds at most 48",
                model_id.len()
            ));
        }
        let family = number32(&obj["family"], "family")?;
        let model = number32(&obj["model"], "model")?;
        let stepping = number32(&obj["stepping"], "stepping")?;
        if family > 0xff + 0xf || model > 0xff || stepping > 0xf {
            return Err(format!(
                "family/model/stepping {family}/{model}/{stepping} out of range \
                 (at most 270/255/15)"
            ));
        }
        let level = number32(&obj["level"], "level")?;
        let xlevel = number32(&obj["xlevel"], "xlevel")?;
        if !(0x8000_0000..0x8000_0100).contains(&xlevel) {
            return Err(format!(
                "xlevel: {xlevel:#x} is not an extended leaf (0x80000000..0x800000ff)"
            ));
        }
        Some(Identity {
            vendor,
            family,
            model,
            stepping,
            model_id,
            level,
            xlevel,
        })
    };

    let mut words: Vec<WordMask> = Vec::new();
    if let Some(mods) = obj.get("cpuid_modifiers") {
        let mods = mods.as_array().ok_or("cpuid_modifiers: expected a list")?;
        for (i, m) in mods.iter().enumerate() {
            let ctx = format!("cpuid_modifiers[{i}]");
            let m = m
                .as_object()
                .ok_or_else(|| format!("{ctx}: expected an object"))?;
            if let Some(k) = m
                .keys()
                .find(|k| !["leaf", "subleaf", "register", "bitmap"].contains(&k.as_str()))
            {
                return Err(format!(
                    "{ctx}: unknown field {k:?} (expected leaf, subleaf, register, bitmap)"
                ));
            }
            let leaf = number32(field(m, "leaf", &ctx)?, &format!("{ctx}.leaf"))?;
            let subleaf = match m.get("subleaf") {
                Some(v) => number32(v, &format!("{ctx}.subleaf"))?,
                None => 0,
            };
            let reg_s = field(m, "register", &ctx)?
                .as_str()
                .ok_or_else(|| format!("{ctx}.register: expected a string"))?;
            let reg = Reg::parse(reg_s)
                .ok_or_else(|| format!("{ctx}.register: {reg_s:?} is not eax, ebx, ecx or edx"))?;
            let bitmap = field(m, "bitmap", &ctx)?
                .as_str()
                .ok_or_else(|| format!("{ctx}.bitmap: expected a string"))?;
            let (set, clear) = parse_bitmap(bitmap, &format!("{ctx}.bitmap"))?;
            if words
                .iter()
                .any(|w| w.leaf == leaf && w.subleaf == subleaf && w.reg == reg)
            {
                return Err(format!(
                    "{ctx}: leaf {leaf:#x} subleaf {subleaf:#x} {reg_s} appears twice"
                ));
            }
            words.push(WordMask {
                leaf,
                subleaf,
                reg,
                set,
                clear,
            });
        }
    }

    let mut msrs = Vec::new();
    if let Some(mods) = obj.get("msr_modifiers") {
        let mods = mods.as_array().ok_or("msr_modifiers: expected a list")?;
        for (i, m) in mods.iter().enumerate() {
            let ctx = format!("msr_modifiers[{i}]");
            let m = m
                .as_object()
                .ok_or_else(|| format!("{ctx}: expected an object"))?;
            let addr = number32(field(m, "addr", &ctx)?, &format!("{ctx}.addr"))?;
            let value = number(field(m, "value", &ctx)?, &format!("{ctx}.value"))?;
            msrs.push((addr, value));
        }
    }

    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("template")
        .to_owned();
    Ok(CpuDefinition {
        name,
        identity,
        words,
        msrs,
        explicit: Vec::new(),
    })
}

/// The template for `def` (what `ivmm cpu show --json` prints).
pub fn to_json(def: &CpuDefinition) -> Value {
    let mut obj = Map::new();
    obj.insert("name".into(), json!(def.name));
    if let Some(id) = &def.identity {
        obj.insert("vendor".into(), json!(id.vendor.id()));
        obj.insert("family".into(), json!(id.family));
        obj.insert("model".into(), json!(id.model));
        obj.insert("stepping".into(), json!(id.stepping));
        obj.insert("model_id".into(), json!(id.model_id));
        obj.insert("level".into(), json!(format!("{:#x}", id.level)));
        obj.insert("xlevel".into(), json!(format!("{:#x}", id.xlevel)));
    }
    obj.insert("features".into(), json!(def.feature_names()));
    let mods: Vec<Value> = def
        .words
        .iter()
        .map(|w| {
            json!({
                "leaf": format!("{:#x}", w.leaf),
                "subleaf": format!("{:#x}", w.subleaf),
                "register": w.reg.name(),
                "bitmap": format_bitmap(w.set, w.clear),
            })
        })
        .collect();
    obj.insert("cpuid_modifiers".into(), Value::Array(mods));
    let msrs: Vec<Value> = def
        .msrs
        .iter()
        .map(|(a, v)| json!({ "addr": format!("{a:#x}"), "value": format!("{v:#x}") }))
        .collect();
    obj.insert("msr_modifiers".into(), Value::Array(msrs));
    Value::Object(obj)
}
