//! Builds the default policy plugin for `wasm32-wasip2` and embeds it in the binary.
//!
//! The plugin is compiled by a nested `cargo build` into its own target directory
//! (`target/plugins`), so it never contends with the outer build's lock. Set
//! `LLAMAGATE_DEFAULT_POLICY_WASM` to a prebuilt component to skip the nested build.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    println!("cargo:rerun-if-env-changed=LLAMAGATE_DEFAULT_POLICY_WASM");
    for dir in ["wit", "plugins/sdk", "plugins/default-policy", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }

    let wasm = match std::env::var_os("LLAMAGATE_DEFAULT_POLICY_WASM") {
        Some(path) => PathBuf::from(path),
        None => build_default_policy(&workspace),
    };
    println!(
        "cargo:rustc-env=LLAMAGATE_DEFAULT_POLICY_WASM={}",
        wasm.display()
    );
}

fn build_default_policy(workspace: &Path) -> PathBuf {
    if !target_installed() {
        return PathBuf::new();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = workspace.join("target").join("plugins");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--locked", "-p", "default-policy"])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers (clippy, coverage, host RUSTFLAGS) are for the
    // host target; they must not leak into the plugin build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "CLIPPY_ARGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("llamagate build: could not run cargo to build the default policy plugin");
    if !status.success() {
        panic!("llamagate build: building plugins/default-policy for {TARGET} failed (see above)");
    }
    target_dir
        .join(TARGET)
        .join("release")
        .join("default_policy.wasm")
}

/// Whether the plugin target is installed; if not, fails the build with the
/// command to run.
fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let installed = sysroot
        .map(|root| Path::new(&root).join("lib/rustlib").join(TARGET).exists())
        .unwrap_or(false);
    if !installed {
        // `cargo::error` fails the build with these lines and no panic noise.
        println!(
            "cargo::error=llamagate embeds its default policy, a WebAssembly component \
             built for {TARGET}, and that target is not installed."
        );
        println!("cargo::error=Run `rustup target add {TARGET}` and build again");
        println!(
            "cargo::error=(or set LLAMAGATE_DEFAULT_POLICY_WASM to a prebuilt default-policy component)"
        );
    }
    installed
}
