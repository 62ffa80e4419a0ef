//! The WIT reference (`docs/wit-reference.md`), generated from the doc comments of the
//! `deploy-agent:plugin` package in `wit/`.

use std::fmt::Write as _;
use std::path::Path;

use wit_parser::{
    Docs, Function, Handle, InterfaceId, Resolve, Type, TypeDefKind, WorldItem, WorldKey,
};

/// The reference, as markdown.
pub fn reference(wit: &Path) -> String {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(wit).expect("the WIT package parses");
    let package = &resolve.packages[pkg];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# WIT reference: `{}`\n\nGenerated from the doc comments in `wit/` (`make docs` regenerates it; a test checks it is current). \
The interfaces are what a plugin implements (`validator`, `deploy-target`, `notifier`, `backup-store`, and since 0.1.1 `traffic`) \
and what it may import (`log`, `secrets`, `digest`, and outbound HTTP through `wasi:http`). \
How to write a plugin against them: [write-a-plugin.md](write-a-plugin.md).\n",
        package.name
    );
    out.push_str(
        "## Worlds\n\nOne world per plugin kind; build a plugin against the world of its kind.\n\n",
    );
    for (name, &world) in &package.worlds {
        // The host's own world (every export at once) is not one a plugin builds against.
        if name == "host" {
            continue;
        }
        let w = &resolve.worlds[world];
        let _ = writeln!(out, "### world `{name}`\n");
        docs(&mut out, &w.docs);
        let items = |map: &wit_parser::IndexMap<WorldKey, WorldItem>| -> Vec<String> {
            map.iter()
                .filter_map(|(key, item)| match item {
                    WorldItem::Interface { id, .. } => Some(interface_name(&resolve, key, *id)),
                    _ => None,
                })
                .filter_map(|n| short(&n))
                .map(|n| format!("`{n}`"))
                .collect()
        };
        let (imports, exports) = (items(&w.imports), items(&w.exports));
        if !imports.is_empty() {
            let _ = writeln!(out, "- imports: {}", imports.join(", "));
        }
        if !exports.is_empty() {
            let _ = writeln!(out, "- exports: {}", exports.join(", "));
        }
        out.push('\n');
    }
    let mut interfaces: Vec<(&String, &InterfaceId)> = package.interfaces.iter().collect();
    interfaces.sort_by_key(|(name, _)| *name != "types");
    for (name, &id) in interfaces {
        let iface = &resolve.interfaces[id];
        let _ = writeln!(out, "## interface `{name}`\n");
        docs(&mut out, &iface.docs);
        for (fname, f) in &iface.functions {
            let _ = writeln!(
                out,
                "### `{fname}`\n\n```wit\n{}\n```\n",
                signature(&resolve, f)
            );
            docs(&mut out, &f.docs);
        }
        for (tname, &tid) in &iface.types {
            let t = &resolve.types[tid];
            if t.owner != wit_parser::TypeOwner::Interface(id) {
                continue;
            }
            let what = match &t.kind {
                TypeDefKind::Record(_) => "record",
                TypeDefKind::Variant(_) => "variant",
                TypeDefKind::Enum(_) => "enum",
                TypeDefKind::Flags(_) => "flags",
                TypeDefKind::Resource => "resource",
                // `use`d from another interface: documented there.
                TypeDefKind::Type(_) => continue,
                _ => "type",
            };
            let _ = writeln!(out, "### {what} `{tname}`\n");
            docs(&mut out, &t.docs);
            match &t.kind {
                TypeDefKind::Record(r) => {
                    out.push_str("| field | type | meaning |\n|---|---|---|\n");
                    for f in &r.fields {
                        row(&mut out, &f.name, &ty(&resolve, &f.ty), &f.docs);
                    }
                    out.push('\n');
                }
                TypeDefKind::Variant(v) => {
                    out.push_str("| case | payload | meaning |\n|---|---|---|\n");
                    for c in &v.cases {
                        let payload = c.ty.as_ref().map_or("-".to_string(), |t| ty(&resolve, t));
                        row(&mut out, &c.name, &payload, &c.docs);
                    }
                    out.push('\n');
                }
                TypeDefKind::Enum(e) => {
                    out.push_str("| case | meaning |\n|---|---|\n");
                    for c in &e.cases {
                        let _ = writeln!(out, "| `{}` | {} |", c.name, one_line(&c.docs));
                    }
                    out.push('\n');
                }
                _ => {}
            }
        }
    }
    out
}

/// The name a plugin author thinks in: our interfaces by their short name, outbound HTTP as
/// the one `wasi:http` interface a plugin calls; transitive `wasi` imports and `types` left out.
fn short(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("deploy-agent:plugin/") {
        let iface = rest.split('@').next().unwrap_or(rest);
        return (iface != "types").then(|| iface.to_string());
    }
    name.starts_with("wasi:http/outgoing-handler")
        .then(|| name.to_string())
}

fn interface_name(resolve: &Resolve, key: &WorldKey, id: InterfaceId) -> String {
    match key {
        WorldKey::Name(n) => n.clone(),
        WorldKey::Interface(_) => resolve.id_of(id).unwrap_or_default(),
    }
}

fn docs(out: &mut String, d: &Docs) {
    if let Some(text) = &d.contents {
        out.push_str(text.trim());
        out.push_str("\n\n");
    }
}

fn one_line(d: &Docs) -> String {
    d.contents
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn row(out: &mut String, name: &str, ty: &str, d: &Docs) {
    let _ = writeln!(
        out,
        "| `{name}` | `{}` | {} |",
        ty.replace('|', "\\|"),
        one_line(d)
    );
}

fn signature(resolve: &Resolve, f: &Function) -> String {
    let params: Vec<String> = f
        .params
        .iter()
        .map(|p| format!("{}: {}", p.name, ty(resolve, &p.ty)))
        .collect();
    let result = f
        .result
        .as_ref()
        .map(|r| format!(" -> {}", ty(resolve, r)))
        .unwrap_or_default();
    format!("{}: func({}){result};", f.name, params.join(", "))
}

fn ty(resolve: &Resolve, t: &Type) -> String {
    let id = match t {
        Type::Bool => return "bool".into(),
        Type::U8 => return "u8".into(),
        Type::U16 => return "u16".into(),
        Type::U32 => return "u32".into(),
        Type::U64 => return "u64".into(),
        Type::S8 => return "s8".into(),
        Type::S16 => return "s16".into(),
        Type::S32 => return "s32".into(),
        Type::S64 => return "s64".into(),
        Type::F32 => return "f32".into(),
        Type::F64 => return "f64".into(),
        Type::Char => return "char".into(),
        Type::String => return "string".into(),
        Type::ErrorContext => return "error-context".into(),
        Type::Id(id) => *id,
    };
    let def = &resolve.types[id];
    if let Some(name) = &def.name {
        return name.clone();
    }
    match &def.kind {
        TypeDefKind::List(t) => format!("list<{}>", ty(resolve, t)),
        TypeDefKind::Option(t) => format!("option<{}>", ty(resolve, t)),
        TypeDefKind::Result(r) => format!(
            "result<{}, {}>",
            r.ok.as_ref().map_or("_".into(), |t| ty(resolve, t)),
            r.err.as_ref().map_or("_".into(), |t| ty(resolve, t))
        ),
        TypeDefKind::Tuple(t) => format!(
            "tuple<{}>",
            t.types
                .iter()
                .map(|t| ty(resolve, t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TypeDefKind::Handle(Handle::Borrow(r)) => {
            format!("borrow<{}>", ty(resolve, &Type::Id(*r)))
        }
        TypeDefKind::Handle(Handle::Own(r)) => ty(resolve, &Type::Id(*r)),
        TypeDefKind::Type(t) => ty(resolve, t),
        other => format!("{other:?}"),
    }
}
