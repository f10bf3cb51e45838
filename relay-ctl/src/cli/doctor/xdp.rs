//! `xdp`: where the kernel fast path runs. With the relay running, what it attached (asked
//! over the admin socket); without it, a trial: the program is loaded and attached to each
//! configured interface in the order `[xdp] mode` allows, then detached.

use super::{Check, STEP_TIMEOUT};
use crate::{
    config::{Config, XdpMode},
    control::{
        api::{Reply, Request, Response},
        client,
    },
    xdp::{self, AttachMode, XdpProgram, driver, interfaces, pin::PinDir},
};

const NAME: &str = "xdp";

/// What a generic attachment costs, said wherever one is reported.
const GENERIC_NOTE: &str = "generic mode copies nearly every packet";

/// Checks the XDP attachments.
pub async fn check(config: &Config) -> Check {
    if config.xdp.mode == XdpMode::Off {
        return Check::skip(
            NAME,
            "[xdp] mode = \"off\": relay refuses sources in userspace",
        );
    }
    let interfaces = match interfaces::resolve(&config.xdp.interfaces, &config.server.listen) {
        Ok(interfaces) => interfaces,
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "name the interfaces clients arrive on in [xdp] interfaces",
            );
        }
    };
    let balancer = if config.server.proxy_protocol.accept().is_some() {
        "; behind a balancer XDP sees only the balancer's address"
    } else {
        ""
    };
    let socket = config.admin.socket.clone();
    let running = tokio::task::spawn_blocking(move || {
        client::call_with_timeout(&socket, &Request::Stats, STEP_TIMEOUT)
    })
    .await;
    if let Ok(Ok(Response::Ok {
        data: Reply::Stats(stats),
    })) = running
    {
        return from_running(&stats.xdp_attached, &stats.enforcement, balancer);
    }
    let config = config.clone();
    match tokio::task::spawn_blocking(move || trial(&config, &interfaces)).await {
        Ok(Ok(found)) => Check::ok(
            NAME,
            format!(
                "relay not running; would attach {}{balancer}",
                found.join(", ")
            ),
        ),
        Ok(Err(check)) => check,
        Err(e) => Check::fail(NAME, e.to_string(), "report this"),
    }
}

/// The running relay's attachments.
fn from_running(
    attached: &[crate::control::api::XdpAttachment],
    enforcement: &str,
    balancer: &str,
) -> Check {
    if attached.is_empty() {
        return Check::fail(
            NAME,
            format!("the running relay enforces in {enforcement}"),
            "see why in relay's start-up log: run it as root (or with CAP_BPF and \
             CAP_NET_ADMIN), or set [xdp] mode = \"off\" to mean it",
        );
    }
    let list: Vec<String> = attached
        .iter()
        .map(|a| describe(&a.interface, &a.mode))
        .collect();
    Check::ok(
        NAME,
        format!("relay has attached {}{balancer}", list.join(", ")),
    )
}

/// `eth0 native`, with the driver and the cost of generic mode.
fn describe(interface: &str, mode: &str) -> String {
    let driver = driver::driver(interface).unwrap_or_else(|_| "unknown driver".to_owned());
    let note = if mode == AttachMode::Generic.to_string() {
        format!(", {GENERIC_NOTE}")
    } else {
        String::new()
    };
    format!("{interface} {mode} ({driver}{note})")
}

/// Loads the program and attaches it to each interface in turn; detached again on return.
fn trial(config: &Config, interfaces: &[String]) -> Result<Vec<String>, Check> {
    let mut found = Vec::new();
    let mut free = Vec::new();
    for interface in interfaces {
        match PinDir::pinned_mode(&config.xdp.pin_dir, interface) {
            // keep_on_exit left a program there: it still protects the interface.
            Some(mode) => found.push(format!(
                "{} (pinned by an earlier run, still attached)",
                describe(interface, &mode.to_string())
            )),
            None => free.push(interface.clone()),
        }
    }
    if free.is_empty() {
        return Ok(found);
    }
    let (mut program, _logger) = XdpProgram::load(None).map_err(|e| {
        Check::fail(
            NAME,
            format!("loading the program: {}", xdp::error_chain(&e)),
            "run doctor (and relay) as root or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, on a \
             kernel with BTF (5.8 or later)",
        )
    })?;
    for interface in &free {
        match program.attach(interface, config.xdp.mode) {
            Ok(mode) => found.push(describe(interface, &mode.to_string())),
            Err(e) => {
                program.detach_all();
                let fix = if config.xdp.mode == XdpMode::Auto {
                    "relay falls back to userspace here; free the interface (another XDP \
                     program?) or set [xdp] mode = \"off\""
                } else {
                    "set [xdp] mode = \"auto\" to let relay pick a mode this driver has"
                };
                return Err(Check::fail(NAME, xdp::error_chain(&e), fix));
            }
        }
    }
    program.detach_all();
    Ok(found)
}
