//! The files `plugin new` writes, compiled into the binary (so are the WIT files, for Python
//! projects), and the per-kind bits of their READMEs.

use crate::runtime::Kind;

/// The WIT package and its `wasi` dependencies, as (path under `wit/`, text).
pub const WIT: [(&str, &str); 17] = [
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("validator.wit", include_str!("../../../wit/validator.wit")),
    (
        "deploy-target.wit",
        include_str!("../../../wit/deploy-target.wit"),
    ),
    ("notifier.wit", include_str!("../../../wit/notifier.wit")),
    (
        "backup-store.wit",
        include_str!("../../../wit/backup-store.wit"),
    ),
    ("log.wit", include_str!("../../../wit/log.wit")),
    ("secrets.wit", include_str!("../../../wit/secrets.wit")),
    ("digest.wit", include_str!("../../../wit/digest.wit")),
    ("traffic.wit", include_str!("../../../wit/traffic.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
    (
        "deps/cli/cli.wit",
        include_str!("../../../wit/deps/cli/cli.wit"),
    ),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/http/http.wit",
        include_str!("../../../wit/deps/http/http.wit"),
    ),
    (
        "deps/io/io.wit",
        include_str!("../../../wit/deps/io/io.wit"),
    ),
    (
        "deps/random/random.wit",
        include_str!("../../../wit/deps/random/random.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../../wit/deps/sockets/sockets.wit"),
    ),
];

const DEPLOY_TARGET: &str = include_str!("templates/rust/deploy-target.rs");
const DEPLOY_TARGET_STANDIN: &str = include_str!("templates/rust/deploy-target.standin.toml");
/// Where the deploy-target stand-in's any-state routes begin.
const CATCH_ALL: &str = "# ---- any state: an unknown release ----";

const CARGO_TOML: &str = include_str!("templates/rust/Cargo.toml");
const RUST_README: &str = include_str!("templates/rust/README.md");
const RUST_GITIGNORE: &str = include_str!("templates/rust/gitignore");

/// A Rust crate for `kind` on the SDK at `sdk`.
pub(super) fn rust(kind: Kind, sdk: &str) -> Vec<(String, String)> {
    let (lib, standin) = match kind {
        Kind::Notifier => (
            include_str!("templates/rust/notifier.rs").to_string(),
            include_str!("templates/rust/notifier.standin.toml").to_string(),
        ),
        Kind::Validator => (
            include_str!("templates/rust/validator.rs").to_string(),
            include_str!("templates/rust/validator.standin.toml").to_string(),
        ),
        Kind::DeployTarget => (
            DEPLOY_TARGET.to_string(),
            DEPLOY_TARGET_STANDIN.to_string(),
        ),
        // A deploy target that also shifts traffic: the deploy-target template with the
        // traffic interface, and its stand-in with the traffic routes before the catch-all.
        Kind::Traffic => (
            DEPLOY_TARGET
                .replace("export!(Plugin: deploy_target);\n", include_str!("templates/rust/traffic.rs"))
                .replacen(
                    "//! {{name}}: a deploy-agent deploy target",
                    "//! {{name}}: a deploy-agent deploy target that shifts traffic (blue-green, canary),",
                    1,
                ),
            DEPLOY_TARGET_STANDIN
                .replacen(
                    "--kind deploy-target --against",
                    "--kind traffic --against",
                    1,
                )
                .replacen(
                    CATCH_ALL,
                    &format!("{}{CATCH_ALL}", include_str!("templates/rust/traffic.standin.toml")),
                    1,
                ),
        ),
        Kind::BackupStore => (
            include_str!("templates/rust/backup-store.rs").to_string(),
            include_str!("templates/rust/backup-store.standin.toml").to_string(),
        ),
    };
    vec![
        ("Cargo.toml".into(), CARGO_TOML.replace("{{sdk}}", sdk)),
        ("src/lib.rs".into(), lib),
        ("standin.toml".into(), standin),
        ("README.md".into(), RUST_README.into()),
        (".gitignore".into(), RUST_GITIGNORE.into()),
    ]
}

/// A Python project for `kind` (notifiers only, for now), with the WIT it builds against.
pub(super) fn python(kind: Kind) -> Vec<(String, String)> {
    let _ = kind;
    let mut files: Vec<(String, String)> = vec![
        (
            "app.py".into(),
            include_str!("templates/python/app.py").into(),
        ),
        (
            "message.py".into(),
            include_str!("templates/python/message.py").into(),
        ),
        (
            "test_message.py".into(),
            include_str!("templates/python/test_message.py").into(),
        ),
        (
            "deploy_agent.py".into(),
            include_str!("templates/python/deploy_agent.py").into(),
        ),
        (
            "pyproject.toml".into(),
            include_str!("templates/python/pyproject.toml").into(),
        ),
        (
            "standin.toml".into(),
            include_str!("templates/rust/notifier.standin.toml").into(),
        ),
        (
            "README.md".into(),
            include_str!("templates/python/README.md").into(),
        ),
        (
            ".gitignore".into(),
            include_str!("templates/python/gitignore").into(),
        ),
    ];
    files.extend(
        WIT.iter()
            .map(|(p, t)| (format!("wit/{p}"), (*t).to_string())),
    );
    files
}

/// The kind's own contract clauses, for the README.
pub(super) fn contract(kind: Kind) -> &'static str {
    match kind {
        Kind::DeployTarget => {
            ", terminal states, promote twice, rollback to the previous release, list-releases"
        }
        Kind::Traffic => {
            ", weights taken in order and in effect, repeats as no-ops, abort to stable, retire"
        }
        Kind::Validator => ", well-formed findings, the same findings twice",
        Kind::Notifier => ", every event kind delivered",
        Kind::BackupStore => {
            ", byte-for-byte round trips with metadata, listing, idempotent delete"
        }
    }
}

/// The kind's config table in the README's agent.toml example.
pub(super) fn config(kind: Kind) -> &'static str {
    match kind {
        Kind::DeployTarget | Kind::Traffic => "api = \"https://api.example.com\"\napp = \"web\"",
        Kind::Validator => "api = \"https://api.example.com\"\nproject = \"web\"",
        Kind::Notifier => "url = \"https://api.example.com/hooks/deploys\"",
        Kind::BackupStore => "api = \"https://api.example.com\"\nbucket = \"backups\"",
    }
}
