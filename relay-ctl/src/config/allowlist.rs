//! `[allowlist]`: sources that bypass every check.

use serde::Deserialize;

use super::Cidr;

/// `[allowlist]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Allowlist {
    /// Addresses and CIDRs that are never dropped, limited or banned.
    #[serde(default)]
    pub cidrs: Vec<Cidr>,
}
