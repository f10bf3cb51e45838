//! `cargo xtask setup`: installs what building and testing relay needs, checking first, so a
//! second run only checks. Each step prints one line; the first failure stops the rest.

use std::{io::Write as _, path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::Cmd;

/// Debian packages building relay-ctl needs: LLVM 22 for bpf-linker (which links it
/// dynamically).
const BUILD_APT_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev"];

/// Debian packages the tests need besides: `ip` for their network namespaces, sqlite for the
/// unpacked CrowdSec binaries (their only dynamic library besides libc), openssl for the test
/// certificates of an HTTPS LAPI, shellcheck for the tests of `scripts/`.
const TEST_APT_PACKAGES: &[&str] = &["iproute2", "libsqlite3-0", "openssl", "shellcheck"];

/// Where the CrowdSec package is unpacked, under the target dir: the tests run a private LAPI
/// from `<target>/crowdsec/root/usr/bin/{crowdsec,cscli}`.
pub const CROWDSEC_DIR: &str = "crowdsec";

/// The toolchain aya-build compiles relay-ebpf with (`-Z build-std=core` needs `rust-src`).
const NIGHTLY: &str = "nightly";

/// The bpf-linker release that matches LLVM 22 (the nightly's LLVM major).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where `llvm-22-dev` puts LLVM; bpf-linker's build script finds it through `LLVM_PREFIX`.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The Python test clients' pinned requirements, relative to the workspace root.
const REQUIREMENTS: &str = "tests/clients/requirements.txt";

/// The venv for the Python test clients, relative to the workspace root.
pub const VENV: &str = ".venv";

/// File in the venv holding the sha256 of the requirements it was installed from.
const VENV_STAMP: &str = ".requirements.sha256";

/// What a step found.
enum Outcome {
    /// Everything was already there.
    Present,
    /// Something was installed; says what.
    Installed(String),
}

/// What to set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only what building relay-ctl needs (the container recipe's build stage).
    Build,
    /// Building, testing, fuzzing and benchmarking.
    All,
}

/// Runs every step of `scope` in order, stopping at the first failure.
pub fn setup(root: &Path, scope: Scope) -> Result<()> {
    let packages: Vec<&'static str> = match scope {
        Scope::Build => BUILD_APT_PACKAGES.to_vec(),
        Scope::All => [BUILD_APT_PACKAGES, TEST_APT_PACKAGES].concat(),
    };
    step(&format!("apt packages {}", packages.join(" ")), || {
        apt_packages(root, &packages)
    })?;
    step(&format!("{NIGHTLY} toolchain with rust-src"), || {
        nightly(root)
    })?;
    step(
        &format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"),
        || bpf_linker(root),
    )?;
    if scope == Scope::Build {
        return Ok(());
    }
    step(&format!("python venv {VENV} from {REQUIREMENTS}"), || {
        venv(root)
    })?;
    step(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}"), || {
        cargo_fuzz(root)
    })?;
    step(
        "crowdsec package unpacked into <target>/crowdsec (not installed)",
        || crowdsec(root),
    )
}

/// Fetches Debian's crowdsec package and unpacks it without installing it: installing runs a
/// postinst that registers with CrowdSec's central API, which fails offline and leaves the
/// package half-configured (breaking every later apt-get install). The tests only need the
/// two binaries.
fn crowdsec(root: &Path) -> Result<Outcome> {
    let dir = crate::target_dir(root).join(CROWDSEC_DIR);
    let unpacked = dir.join("root");
    let binaries = ["usr/bin/crowdsec", "usr/bin/cscli"].map(|b| unpacked.join(b));
    if binaries.iter().all(|b| b.is_file()) {
        return Ok(Outcome::Present);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let download = || {
        Cmd::new("apt-get")
            .args(["download", "crowdsec"])
            .current_dir(&dir)
            .run()
    };
    if download().is_err() {
        // A fresh machine has no package lists yet.
        Cmd::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .current_dir(root)
            .run()?;
        download()?;
    }
    let deb = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("crowdsec_") && n.ends_with(".deb"))
        })
        .max()
        .context("apt-get download crowdsec left no crowdsec_*.deb")?;
    Cmd::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .current_dir(root)
        .run()?;
    if let Some(missing) = binaries.iter().find(|b| !b.is_file()) {
        bail!("{} is not in {}", missing.display(), deb.display());
    }
    let name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Outcome::Installed(name))
}

/// The cargo-fuzz release the fuzz targets are run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs cargo-fuzz (it runs the fuzz targets in `fuzz/` on the nightly toolchain).
fn cargo_fuzz(root: &Path) -> Result<Outcome> {
    let wanted = || {
        Cmd::cargo()
            .args(["fuzz", "--version"])
            .probe()
            .is_some_and(|version| version.contains(CARGO_FUZZ_VERSION))
    };
    if wanted() {
        return Ok(Outcome::Present);
    }
    Cmd::cargo()
        .args([
            "install",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--locked",
        ])
        .current_dir(root)
        .run()?;
    if !wanted() {
        bail!("`cargo fuzz --version` does not report {CARGO_FUZZ_VERSION} after installing it");
    }
    Ok(Outcome::Installed(format!(
        "cargo-fuzz {CARGO_FUZZ_VERSION}"
    )))
}

/// Prints `setup: <name> ... ` and then how the step ended, on the same line.
fn step(name: &str, run: impl FnOnce() -> Result<Outcome>) -> Result<()> {
    print!("setup: {name} ... ");
    // Ignored: a closed stdout must not stop the setup.
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    match run() {
        Ok(Outcome::Present) => println!("ok (present)"),
        Ok(Outcome::Installed(what)) => println!(
            "ok (installed {what} in {:.1} s)",
            started.elapsed().as_secs_f64()
        ),
        Err(error) => {
            println!("FAILED");
            return Err(error.context(format!("setup step `{name}` failed")));
        }
    }
    Ok(())
}

/// Installs the `packages` that `dpkg-query` does not report as installed.
fn apt_packages(root: &Path, packages: &[&'static str]) -> Result<Outcome> {
    let missing = missing_apt_packages(root, packages)?;
    if missing.is_empty() {
        return Ok(Outcome::Present);
    }
    let missing = missing.join(" ");
    if !is_root() {
        bail!(
            "missing Debian packages: {missing}; installing them needs root. Run:\n  \
             sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y {missing}\n\
             then run this command again"
        );
    }
    Cmd::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .current_dir(root)
        .run()?;
    Cmd::new("apt-get")
        .args(["install", "-y"])
        .args(missing.split(' '))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .current_dir(root)
        .run()?;
    let still_missing = missing_apt_packages(root, packages)?;
    if !still_missing.is_empty() {
        bail!(
            "apt-get install succeeded but these are still not installed: {}",
            still_missing.join(" ")
        );
    }
    Ok(Outcome::Installed(missing))
}

/// The `packages` that are not installed, in one `dpkg-query` call.
fn missing_apt_packages(root: &Path, packages: &[&'static str]) -> Result<Vec<&'static str>> {
    // dpkg-query exits 1 when it knows a package not at all, and prints nothing for it.
    let output = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(packages)
        .current_dir(root)
        .output()?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let installed = |package: &str| {
        listing
            .lines()
            .any(|line| line == format!("{package}\tinstall ok installed"))
    };
    Ok(packages
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect())
}

/// Whether this process runs as root (effective uid 0), read from `/proc/self/status`.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Installs the nightly toolchain and its `rust-src` component where missing.
fn nightly(root: &Path) -> Result<Outcome> {
    let installed = || {
        Cmd::new("rustup")
            .args(["component", "list", "--toolchain", NIGHTLY, "--installed"])
            .current_dir(root)
            .probe()
    };
    let mut done = Vec::new();
    let components = match installed() {
        Some(components) => components,
        None => {
            Cmd::new("rustup")
                .args(["toolchain", "install", NIGHTLY, "--profile", "minimal"])
                .current_dir(root)
                .run()?;
            done.push(format!("toolchain {NIGHTLY}"));
            installed().context("nightly toolchain still missing after installing it")?
        }
    };
    if !has_rust_src(&components) {
        Cmd::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
            .current_dir(root)
            .run()?;
        done.push("rust-src".to_owned());
    }
    Ok(if done.is_empty() {
        Outcome::Present
    } else {
        Outcome::Installed(done.join(" and "))
    })
}

/// Whether `rustup component list --installed` output lists `rust-src`.
fn has_rust_src(components: &str) -> bool {
    components.lines().any(|line| line.trim() == "rust-src")
}

/// Installs bpf-linker from crates.io, built against the system's LLVM 22, unless
/// `bpf-linker --version` already reports the wanted version.
fn bpf_linker(root: &Path) -> Result<Outcome> {
    let wanted = || {
        Cmd::new("bpf-linker")
            .arg("--version")
            .probe()
            .is_some_and(|version| version.contains(BPF_LINKER_VERSION))
    };
    if wanted() {
        return Ok(Outcome::Present);
    }
    Cmd::cargo()
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args(["--locked", "--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .current_dir(root)
        .run()?;
    if !wanted() {
        bail!(
            "`bpf-linker --version` still does not report {BPF_LINKER_VERSION} after \
             installing it: is cargo's bin directory (~/.cargo/bin) on PATH?"
        );
    }
    Ok(Outcome::Installed(format!(
        "bpf-linker {BPF_LINKER_VERSION}"
    )))
}

/// Creates the venv if it has no working Python, and installs the pinned requirements unless
/// the venv's stamp says it already has exactly these.
fn venv(root: &Path) -> Result<Outcome> {
    let venv = root.join(VENV);
    let python = venv.join("bin/python");
    let requirements = root.join(REQUIREMENTS);
    let digest = sha256(root, &requirements)?;
    let stamp = venv.join(VENV_STAMP);
    let works = Cmd::new(&python).arg("--version").probe().is_some();
    if works && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == digest) {
        return Ok(Outcome::Present);
    }
    let mut done = Vec::new();
    if !works {
        Cmd::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .current_dir(root)
            .run()?;
        done.push(format!("venv {VENV}"));
    }
    Cmd::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .current_dir(root)
        .run()?;
    let text = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    done.push(pinned(&text));
    std::fs::write(&stamp, format!("{digest}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(Outcome::Installed(done.join(" and ")))
}

/// The sha256 of `file`, hex, from coreutils' `sha256sum`.
fn sha256(root: &Path, file: &Path) -> Result<String> {
    let output = Cmd::new("sha256sum").arg(file).current_dir(root).run()?;
    output
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum printed nothing for {}", file.display()))
}

/// The requirement lines of a requirements file, comma-separated, for the step's line.
fn pinned(requirements: &str) -> String {
    requirements
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_src_is_found_only_as_a_whole_line() {
        assert!(has_rust_src("cargo-x86_64-unknown-linux-gnu\nrust-src\n"));
        assert!(!has_rust_src(
            "rust-src-extra\nrustc-x86_64-unknown-linux-gnu\n"
        ));
    }

    #[test]
    fn pinned_lists_requirements_without_comments_or_blanks() {
        let text = "# clients\nTelethon==1.45.0\n\n  kurigram==2.2.26  \n";
        assert_eq!(pinned(text), "Telethon==1.45.0, kurigram==2.2.26");
    }
}
