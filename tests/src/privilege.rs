//! Gate for tests that need root (BPF, XDP, network namespaces).
//!
//! Outside CI such a test skips with a visible message; with `CI=true` it fails instead, so a
//! CI run can never pass by skipping what it was meant to prove.

/// Whether `test` may run its privileged part. Prints `SKIP` and returns false when not root,
/// unless `CI=true`, where it panics.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let reason = "needs root with CAP_BPF/CAP_NET_ADMIN";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("privileged test {test} cannot run under CI=true: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}
