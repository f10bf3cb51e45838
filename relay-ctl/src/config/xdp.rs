//! `[xdp]`: where and how the kernel fast path is attached.

use std::path::PathBuf;

use serde::Deserialize;

use super::SectionError;

/// `[xdp]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Xdp {
    /// Interface names, or `"auto"` for the interfaces that carry the listen addresses.
    #[serde(default = "auto_interfaces")]
    pub interfaces: Vec<String>,
    /// Attach mode.
    #[serde(default)]
    pub mode: XdpMode,
    /// Leave the program attached and its maps pinned in `pin_dir` at exit, so protection
    /// continues while relay-ctl is stopped and the next start takes over without a gap.
    #[serde(default)]
    pub keep_on_exit: bool,
    /// Where maps and links are pinned with `keep_on_exit` (must be on a bpffs).
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
}

impl Default for Xdp {
    fn default() -> Self {
        Xdp {
            interfaces: auto_interfaces(),
            mode: XdpMode::Auto,
            keep_on_exit: false,
            pin_dir: default_pin_dir(),
        }
    }
}

impl Xdp {
    /// Checks what serde cannot: `interfaces` is `["auto"]` or a non-empty list of names.
    pub(super) fn validate(&self) -> Result<(), SectionError> {
        if self.interfaces.is_empty() {
            return Err(SectionError::new(
                "interfaces",
                "interfaces must name at least one interface, or be [\"auto\"]",
            ));
        }
        if self.interfaces.len() > 1 && self.interfaces.iter().any(|i| i == "auto") {
            return Err(SectionError::new(
                "interfaces",
                "\"auto\" cannot be combined with interface names",
            ));
        }
        Ok(())
    }
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/relay")
}

fn auto_interfaces() -> Vec<String> {
    vec!["auto".to_owned()]
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, else the TC ingress hook, else generic mode; TC first on a veth,
    /// where XDP in either mode copies every packet (see `xdp::driver`).
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
    /// The same program as a TC ingress (tcx) classifier only: after the skb exists, like
    /// generic mode, without its copy.
    Tc,
    /// No XDP: enforce everything in userspace at accept time.
    Off,
}

#[cfg(test)]
mod tests {
    use super::XdpMode;
    use crate::config::tests::{expect_invalid, parse};

    #[test]
    fn every_xdp_mode_parses() {
        for (text, mode) in [
            ("auto", XdpMode::Auto),
            ("native", XdpMode::Native),
            ("tc", XdpMode::Tc),
            ("generic", XdpMode::Generic),
            ("off", XdpMode::Off),
        ] {
            let config = parse(&format!(
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[xdp]\nmode = \"{text}\"\n"
            ))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(config.xdp.mode, mode, "{text}");
        }
    }

    #[test]
    fn unknown_mode_is_rejected() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[xdp]\nmode = \"turbo\"\n",
            4,
            "turbo",
        );
    }

    #[test]
    fn auto_mixed_with_names_is_rejected() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[xdp]\ninterfaces = [\"auto\", \"eth0\"]\n",
            4,
            "auto",
        );
    }
}
