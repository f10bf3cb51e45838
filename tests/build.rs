//! Compiles `relay-ebpf`'s programs for the BPF target with aya-build, for the bench-only one,
//! `relay-xdp-minimal`, which the bench embeds (`relay_tests::bench::xdp`); relay's own comes
//! from relay-ctl.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    // aya-build asks to rerun only when relay-ebpf changes; the map layout it compiles in
    // comes from relay-common, so a change there must rebuild the object too.
    if let Some(common) = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "relay-common")
        .and_then(|p| p.manifest_path.parent())
    {
        println!("cargo:rerun-if-changed={common}");
    }
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "relay-ebpf")
        .ok_or_else(|| anyhow!("relay-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("relay-ebpf manifest has no parent directory"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
