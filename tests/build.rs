//! Builds the plugins workspace for wasm32-wasip2 once per test build and exports each
//! component's path as `PLUGIN_<NAME>` (for example `PLUGIN_FIXTURE_ECHO`).
//!
//! The nested cargo runs in `plugins/` with its own target directory (sharing the outer one
//! would deadlock on the build lock) and without the outer build's RUSTFLAGS.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    let plugins = root.join("plugins");
    for watched in [
        "sdk",
        "fixtures",
        "local",
        "vercel",
        "kubernetes",
        "slack",
        "s3",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", plugins.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = plugins.join("target");
    let status = Command::new(cargo)
        .current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--workspace",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "building the plugins failed ({s}); run `make plugins` to see why"
        )),
        Err(e) => fail(&format!("cannot run cargo to build the plugins: {e}")),
    }

    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let built = target_dir.join("wasm32-wasip2").join("release");
    let entries = match std::fs::read_dir(&built) {
        Ok(e) => e,
        Err(e) => fail(&format!("cannot list {}: {e}", built.display())),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        // Copy, so a later plugin rebuild cannot change a component under a running test.
        let copy = out.join(format!("{stem}.wasm"));
        if let Err(e) = std::fs::copy(&path, &copy) {
            fail(&format!("cannot copy {}: {e}", path.display()));
        }
        println!(
            "cargo:rustc-env=PLUGIN_{}={}",
            stem.to_ascii_uppercase(),
            copy.display()
        );
    }
}

fn fail(message: &str) -> ! {
    println!("cargo:warning={message}");
    std::process::exit(1);
}
