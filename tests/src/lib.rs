//! Test support for relay: network namespaces, the relay process, probes, kernel state.
pub mod kernel;
pub mod netns;
pub mod privilege;
pub mod probe;
pub mod relay;
