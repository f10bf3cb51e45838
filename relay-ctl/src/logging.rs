//! Process-wide logging through `tracing`; `log` records (aya-log's kernel messages among them)
//! are routed into the same subscriber.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber: `RUST_LOG` if set, else `info`. Text on stderr.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init` also installs the log→tracing bridge; failing means a subscriber exists already.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
