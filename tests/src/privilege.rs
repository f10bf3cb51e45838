//! Gates for tests that need root: for BPF, XDP and network namespaces ([`privileged`]), or
//! only root's powers over files, mounts and credentials ([`root`]).
//!
//! Outside CI such a test skips with a visible message; with `CI=true` it fails instead, so a
//! CI run can never pass by skipping what it was meant to prove.

use std::{io::Write as _, sync::OnceLock};

use aya::programs::ProgramType;

/// What every skip message says is missing.
const NEEDS: &str = "needs root with CAP_BPF/CAP_NET_ADMIN";

/// Whether `test` may run its privileged part: the effective user is root and the kernel
/// accepts an XDP program from this process. Otherwise prints
/// `SKIP <test>: needs root with CAP_BPF/CAP_NET_ADMIN` to stderr and returns false, unless
/// `CI=true`, where it panics.
pub fn privileged(test: &str) -> bool {
    let problem = if !nix::unistd::geteuid().is_root() {
        Some(format!("{NEEDS} (effective uid is not 0)"))
    } else {
        bpf_unusable().map(|why| format!("{NEEDS} (root, but BPF is not usable: {why})"))
    };
    gate(test, problem)
}

/// Whether `test` may run its part that needs root for `why` (to chown, mount, run a command
/// as another user): the effective user is root. Otherwise prints `SKIP <test>: needs root
/// (<why>; effective uid is not 0)` to stderr and returns false, unless `CI=true`, where it
/// panics.
pub fn root(test: &str, why: &str) -> bool {
    let problem = (!nix::unistd::geteuid().is_root())
        .then(|| format!("needs root ({why}; effective uid is not 0)"));
    gate(test, problem)
}

/// True without a `problem`; with one, a skip line (false), or a panic under `CI=true`.
fn gate(test: &str, problem: Option<String>) -> bool {
    let Some(reason) = problem else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("privileged test {test} cannot run under CI=true: {reason}");
    }
    // Straight to fd 2, past the test harness's output capture, so the skip is always seen.
    let line = format!("SKIP {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// Why BPF cannot be used, probed once per process by loading a trivial XDP program.
fn bpf_unusable() -> Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE
        .get_or_init(|| match aya::sys::is_program_supported(ProgramType::Xdp) {
            Ok(true) => None,
            Ok(false) => Some("the kernel refused a trivial XDP program".to_owned()),
            Err(e) => Some(format!("probing XDP support failed: {e}")),
        })
        .clone()
}
