//! Relaying client connections to Telegram's data centres.
pub mod pump;
