//! Test support for relay: network namespaces, the relay process, probes, kernel state, frames.
pub mod bench;
pub mod crowdsec;
pub mod fake_dc;
pub mod kernel;
pub mod mask;
pub mod metrics;
pub mod mtproto_client;
pub mod netns;
pub mod packet;
pub mod privilege;
pub mod probe;
pub mod pyclient;
pub mod rawtcp;
pub mod relay;
pub mod util;
