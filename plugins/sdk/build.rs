//! Generates `__bindgen!`: one arm per ordering of the plugin kinds a plugin exports.
//!
//! `wit_bindgen::generate!` takes its WIT location and inline world as string literals, so the
//! absolute path of the WIT package and the composed world are written out here, once, at the
//! SDK's build. Plugin crates then need no copy of the WIT files.

use std::fmt::Write as _;
use std::path::PathBuf;

const KINDS: [(&str, &str); 5] = [
    ("notifier", "notifier-plugin"),
    ("validator", "validator-plugin"),
    ("deploy_target", "deploy-target-plugin"),
    ("backup_store", "backup-store-plugin"),
    ("traffic", "traffic-plugin"),
];

/// Interfaces the plugin's bindings take from the SDK's own bindings instead of generating them.
const SHARED: [(&str, &str); 9] = [
    (
        "deploy-agent:plugin/types@0.1.1",
        "deploy_agent::plugin::types",
    ),
    ("deploy-agent:plugin/log@0.1.1", "deploy_agent::plugin::log"),
    (
        "deploy-agent:plugin/secrets@0.1.1",
        "deploy_agent::plugin::secrets",
    ),
    ("wasi:http/types@0.2.12", "wasi::http::types"),
    (
        "wasi:http/outgoing-handler@0.2.12",
        "wasi::http::outgoing_handler",
    ),
    ("wasi:io/streams@0.2.12", "wasi::io::streams"),
    ("wasi:io/error@0.2.12", "wasi::io::error"),
    ("wasi:io/poll@0.2.12", "wasi::io::poll"),
    (
        "wasi:clocks/monotonic-clock@0.2.12",
        "wasi::clocks::monotonic_clock",
    ),
];

fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first);
            out.push(tail);
        }
    }
    out
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let wit = manifest.join("../../wit");
    let wit = wit.canonicalize().unwrap_or(wit);
    println!("cargo:rerun-if-changed={}", wit.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut with = String::new();
    for (iface, module) in SHARED {
        let _ = write!(
            with,
            "\"{iface}\": ::deploy_agent_sdk::bindings::{module}, "
        );
    }

    let mut arms = String::new();
    for mask in 1u32..32 {
        let chosen: Vec<usize> = (0..5).filter(|i| mask & (1 << i) != 0).collect();
        for order in permutations(&chosen) {
            let pattern: Vec<&str> = order.iter().map(|&i| KINDS[i].0).collect();
            let mut world = String::from("package deploy-agent:exported; world plugin {");
            for &i in &chosen {
                let _ = write!(world, " include deploy-agent:plugin/{}@0.1.1;", KINDS[i].1);
            }
            world.push_str(" }");
            let _ = writeln!(
                arms,
                "    ({}) => {{ $crate::__wit_bindgen::generate!({{ path: {:?}, inline: {:?}, world: \"deploy-agent:exported/plugin\", runtime_path: \"::deploy_agent_sdk::__wit_bindgen::rt\", with: {{ {with} }}, generate_all }}); }};",
                pattern.join(", "),
                wit.display().to_string(),
                world,
            );
        }
    }
    let src = format!(
        "/// Generates the plugin's export bindings for the kinds it names (internal; use `export!`).\n#[doc(hidden)]\n#[macro_export]\nmacro_rules! __bindgen {{\n{arms}    ($($other:tt)*) => {{ compile_error!(concat!(\"unknown plugin kind in export!: `\", stringify!($($other)*), \"`; expected notifier, validator, deploy_target, backup_store or traffic, each at most once\")); }};\n}}\n"
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("bindgen_macro.rs");
    if let Err(e) = std::fs::write(&out, src) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
        std::process::exit(1);
    }
}
