//! The report: the targets judged against the measured figures, and the markdown
//! rendering of the JSON report. Targets are reported, never asserted.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// A performance target the report checks.
struct Target {
    id: &'static str,
    what: &'static str,
    goal: &'static str,
    /// The best existing proxy's figure the issue quotes, for context.
    reference: &'static str,
    /// The same figure for `relay-floor`, a forwarder with no protocol and no crypto, in the
    /// same run: the floor this topology sets (`None` where it has no counterpart).
    floor: Option<f64>,
    /// `None` when the scenario did not produce a figure.
    measured: Option<f64>,
    unit: &'static str,
    pass: fn(f64) -> bool,
}

/// The first row of `section` named `name`.
fn row<'a>(report: &'a Value, section: &str, name: &str) -> Option<&'a Value> {
    report[section]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name && r.get("error").is_none())
}

fn num(value: &Value, key: &str) -> Option<f64> {
    value.get(key)?.as_f64().filter(|v| v.is_finite())
}

/// The targets with their measured values and verdicts.
pub fn targets(report: &Value) -> Value {
    let throughput = report["throughput"].as_array().and_then(|rows| {
        rows.iter()
            .find(|r| r["target_row"] == true && r.get("error").is_none())
    });
    let hs = |name: &str| {
        row(report, "handshakes", name).and_then(|r| num(r, "handshakes_per_relay_cpu_sec"))
    };
    let drop = |mode: &str| {
        let one = hs(&format!("{mode} 1 user"))?;
        let many = hs(&format!("{mode} 1000 users"))?;
        Some(100.0 * (1.0 - many / one))
    };
    let flood = row(report, "flood", "XDP on, blocked flood");
    let floor_gb = row(report, "throughput", "floor").and_then(|r| num(r, "relay_cpu_secs_per_gb"));
    let floor_hs =
        row(report, "handshakes", "floor").and_then(|r| num(r, "handshakes_per_relay_cpu_sec"));
    let verdict_ratio = report["xdp_verdict"].as_array().and_then(|rows| {
        rows.iter()
            .map(|r| num(r, "ratio"))
            .collect::<Option<Vec<f64>>>()
            .filter(|ratios| !ratios.is_empty())
            .map(|ratios| ratios.into_iter().fold(f64::MIN, f64::max))
    });
    let list = [
        Target {
            id: "xdp_verdict_vs_minimal",
            what: "XDP verdict ns, relay's program / a minimal one doing the same lookups (worst of 4 packets)",
            goal: "≤ 1.2",
            reference: "",
            floor: None,
            measured: verdict_ratio,
            unit: "×",
            pass: |v| v <= 1.2,
        },
        Target {
            id: "relay_cpu_per_gb",
            what: "relay CPU-seconds per GB echoed (8 conns × 16 KiB, dd, fast mode)",
            goal: "≤ 0.85",
            reference: "1.7–1.8 (best existing)",
            floor: floor_gb,
            measured: throughput.and_then(|r| num(r, "relay_cpu_secs_per_gb")),
            unit: "CPU-s/GB",
            pass: |v| v <= 0.85,
        },
        Target {
            id: "transform_vs_openssl",
            what: "in-process decrypt + re-encrypt (16 KiB) vs openssl aes-256-ctr",
            goal: "≥ 30 %",
            reference: "",
            floor: None,
            measured: num(&report["crypto"], "transform_to_openssl").map(|r| 100.0 * r),
            unit: "%",
            pass: |v| v >= 30.0,
        },
        Target {
            id: "dd_handshakes",
            what: "dd handshakes per relay CPU-second (1 user)",
            goal: "≥ 25,000",
            reference: "24,400 (C), 10,800 (Rust)",
            floor: floor_hs,
            measured: hs("dd 1 user"),
            unit: "/CPU-s",
            pass: |v| v >= 25_000.0,
        },
        Target {
            id: "ee_handshakes",
            what: "fake-TLS handshakes per relay CPU-second (1 user)",
            goal: "≥ 8,000",
            reference: "7,600 (C), 4,000 (Rust)",
            floor: None,
            measured: hs("tls 1 user"),
            unit: "/CPU-s",
            pass: |v| v >= 8_000.0,
        },
        Target {
            id: "dd_users_drop",
            what: "dd handshake rate drop with 1,000 users",
            goal: "< 10 %",
            reference: "",
            floor: None,
            measured: drop("dd"),
            unit: "%",
            pass: |v| v < 10.0,
        },
        Target {
            id: "ee_users_drop",
            what: "fake-TLS handshake rate drop with 1,000 users",
            goal: "< 10 %",
            reference: "",
            floor: None,
            measured: drop("tls"),
            unit: "%",
            pass: |v| v < 10.0,
        },
        Target {
            id: "rss_per_idle_conn",
            what: "relay RSS per idle post-handshake connection",
            goal: "≤ 8 KiB",
            reference: "11 KiB (C), 62 KiB (Rust)",
            floor: None,
            measured: row(report, "memory", "idle connections")
                .and_then(|r| num(r, "rss_per_conn_kib")),
            unit: "KiB",
            pass: |v| v <= 8.0,
        },
        Target {
            id: "flood_relay_cpu",
            what: "relay CPU during a blocked SYN flood, flood alone (XDP on)",
            goal: "< 5 % of a core",
            reference: "",
            floor: None,
            measured: flood.and_then(|r| num(r, "relay_cpu_pct")),
            unit: "% core",
            pass: |v| v < 5.0,
        },
        Target {
            id: "flood_legit_throughput",
            what: "legit throughput during a blocked SYN flood vs unloaded (XDP on)",
            goal: "≥ 90 %",
            reference: "",
            floor: None,
            measured: flood
                .and_then(|r| num(r, "legit_vs_unloaded"))
                .map(|r| 100.0 * r),
            unit: "%",
            pass: |v| v >= 90.0,
        },
    ];
    Value::Array(
        list.iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "what": t.what,
                    "goal": t.goal,
                    "reference": t.reference,
                    "floor": t.floor,
                    "measured": t.measured,
                    "unit": t.unit,
                    "pass": t.measured.map(t.pass),
                })
            })
            .collect(),
    )
}

/// A figure relay is compared with other proxies on (the `peers` group).
struct PeerFigure {
    id: &'static str,
    what: &'static str,
    load: &'static str,
    mode: &'static str,
    users: u64,
    /// The row's key holding the figure (named `relay_…` whichever proxy was measured).
    key: &'static str,
    unit: &'static str,
    /// Less is better (CPU, memory); otherwise more is.
    lower_is_better: bool,
    /// The goal: relay's figure at most (less is better) or at least this many times the
    /// best peer's.
    factor: f64,
}

const PEER_FIGURES: [PeerFigure; 6] = [
    PeerFigure {
        id: "cpu_per_gb",
        what: "CPU-seconds per GB echoed (dd, 8 conns × 16 KiB)",
        load: "throughput",
        mode: "dd",
        users: 1,
        key: "relay_cpu_secs_per_gb",
        unit: "CPU-s/GB",
        lower_is_better: true,
        factor: 0.5,
    },
    PeerFigure {
        id: "dd_handshakes_1",
        what: "dd handshakes per CPU-second, 1 user",
        load: "handshakes",
        mode: "dd",
        users: 1,
        key: "handshakes_per_relay_cpu_sec",
        unit: "/CPU-s",
        lower_is_better: false,
        factor: 1.5,
    },
    PeerFigure {
        id: "dd_handshakes_100",
        what: "dd handshakes per CPU-second, 100 users",
        load: "handshakes",
        mode: "dd",
        users: 100,
        key: "handshakes_per_relay_cpu_sec",
        unit: "/CPU-s",
        lower_is_better: false,
        factor: 1.5,
    },
    PeerFigure {
        id: "ee_handshakes_1",
        what: "ee (fake TLS) handshakes per CPU-second, 1 user",
        load: "handshakes",
        mode: "tls",
        users: 1,
        key: "handshakes_per_relay_cpu_sec",
        unit: "/CPU-s",
        lower_is_better: false,
        factor: 1.5,
    },
    PeerFigure {
        id: "ee_handshakes_100",
        what: "ee (fake TLS) handshakes per CPU-second, 100 users",
        load: "handshakes",
        mode: "tls",
        users: 100,
        key: "handshakes_per_relay_cpu_sec",
        unit: "/CPU-s",
        lower_is_better: false,
        factor: 1.5,
    },
    PeerFigure {
        id: "kib_per_idle_conn",
        what: "KiB of RSS per idle connection",
        load: "memory",
        mode: "dd",
        users: 1,
        key: "rss_per_conn_kib",
        unit: "KiB",
        lower_is_better: true,
        factor: 0.5,
    },
];

/// Relay's figures next to every peer's, from the `peers` section: per figure, each peer's
/// value and relay's ratio to it (against relay on the same upstream: direct to the fake DC,
/// or in middle mode through the fake ME for the official C proxy), the best peer (the one
/// relay compares worst with; for handshakes only direct-mode peers count), and whether relay
/// meets its goal against that one. Peers without a figure (skipped, failed) are left out.
pub fn peer_comparison(report: &Value) -> Value {
    let rows = report["peers"].as_array().cloned().unwrap_or_default();
    // (proxy, upstream) pairs in the order they ran, relay's apart.
    let mut proxies: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let (Some(p), Some(u)) = (r["proxy"].as_str(), r["upstream"].as_str()) else {
            continue;
        };
        if p != "relay" && !proxies.iter().any(|(x, y)| x == p && y == u) {
            proxies.push((p.to_owned(), u.to_owned()));
        }
    }
    let figure_of = |proxy: &str, upstream: &str, f: &PeerFigure| {
        rows.iter()
            .find(|r| {
                r["proxy"] == proxy
                    && r["upstream"] == upstream
                    && r["load"] == f.load
                    && r["mode"] == f.mode
                    && r["users"].as_u64() == Some(f.users)
                    && r.get("error").is_none()
            })
            .and_then(|r| num(r, f.key))
    };
    let figures = PEER_FIGURES.iter().map(|f| {
        let relay = figure_of("relay", "direct", f);
        let relay_middle = figure_of("relay", "middle", f);
        // (proxy, upstream, relay ÷ peer)
        let mut best: Option<(String, String, f64)> = None;
        let mut peers = serde_json::Map::new();
        for (proxy, upstream) in &proxies {
            let Some(value) = figure_of(proxy, upstream, f) else {
                continue;
            };
            let ours = figure_of("relay", upstream, f);
            let ratio = ours.map(|r| r / value);
            // The goal for handshakes is against direct-mode proxies.
            let judged = upstream == "direct" || f.load != "handshakes";
            if let (Some(ratio), true) = (ratio, judged) {
                let worse_for_relay = best.as_ref().is_none_or(|(_, _, b)| {
                    if f.lower_is_better {
                        ratio > *b
                    } else {
                        ratio < *b
                    }
                });
                if worse_for_relay {
                    best = Some((proxy.clone(), upstream.clone(), ratio));
                }
            }
            peers.insert(
                proxy.clone(),
                json!({"value": value, "upstream": upstream, "relay_value": ours,
                       "relay_ratio": ratio, "judged": judged}),
            );
        }
        let ratio = best.as_ref().map(|(_, _, r)| *r);
        let pass = ratio.map(|x| {
            if f.lower_is_better {
                x <= f.factor
            } else {
                x >= f.factor
            }
        });
        json!({
            "id": f.id,
            "what": f.what,
            "unit": f.unit,
            "relay": relay,
            "relay_middle": relay_middle,
            "peers": peers,
            "best_peer": best.as_ref().map(|(p, _, _)| p.clone()),
            "best_upstream": best.as_ref().map(|(_, u, _)| u.clone()),
            "relay_to_best": ratio,
            "goal": format!("{} {}× best {}peer", if f.lower_is_better { "≤" } else { "≥" },
                f.factor, if f.load == "handshakes" { "direct-mode " } else { "" }),
            "pass": pass,
        })
    });
    json!({
        "proxies": proxies.iter().map(|(p, u)| json!({"proxy": p, "upstream": u})).collect::<Vec<_>>(),
        "figures": figures.collect::<Vec<_>>(),
    })
}

/// A number with a sensible precision, or `–`.
fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if !v.is_finite() => "–".to_owned(),
        Some(v) if v.abs() >= 1000.0 => group(v.round() as i64),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// 12345 → `12,345`.
fn group(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

fn f(r: &Value, key: &str) -> String {
    fmt(num(r, key))
}

fn errored(r: &Value) -> Option<String> {
    r.get("error")
        .and_then(Value::as_str)
        .map(|e| e.lines().next().unwrap_or("").to_owned())
}

/// The report as markdown.
pub fn markdown(report: &Value) -> String {
    let mut md = String::new();
    let m = &report["machine"];
    let _ = writeln!(
        md,
        "# relay benchmark{}\n",
        if report["smoke"] == true {
            " (smoke run: tiny scenarios, figures meaningless)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}; AES-NI {}, VAES {}), kernel {}, {} MiB RAM; code {}; load average {} before, {} after; run took {:.0} s.\n",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        yes(&m["aes_ni"]),
        yes(&m["vaes"]),
        m["kernel"].as_str().unwrap_or("?"),
        m["memory_kib"].as_u64().unwrap_or(0) / 1024,
        m["git"].as_str().unwrap_or("?"),
        m["load_before"].as_str().unwrap_or("?"),
        report["load_after"].as_str().unwrap_or("?"),
        report["duration_secs"].as_f64().unwrap_or(0.0),
    );
    md.push_str(
        "Caveats: relay, fake DC, generator and flood sender share the same CPUs (2 on the reference \
         machine), which other work (concurrent builds) also uses; every figure is one run, no \
         repetition. CPU is utime+stime from /proc/<pid>/stat (10 ms ticks) between the \
         generator's begin and end lines; `% CPU` is of one core (200 % = the whole machine); \
         `rest of machine` is busy time charged to none of relay, generator and fake DC, i.e. \
         mostly other people's work. GB = 10^9 bytes echoed (each \
         byte crosses the relay twice). The kernel charges softirq work (the network stack's \
         receive path, XDP) to whichever process it interrupts, so the relay's CPU includes \
         receive processing for its sockets and the flood's XDP drops land mostly on the flood \
         sender: see the machine softirq columns. Topology: generator ⇄ veth ⇄ relay (XDP \
         on its veth, `[xdp] mode = \"auto\"`) ⇄ veth ⇄ fake DC, three namespaces. On a veth \
         `auto` attaches the program at the TC ingress hook (tcx): native XDP there turns off \
         GSO on the peer and copies every MTU-sized frame it receives (veth_xdp_rcv_skb → \
         skb_pp_cow_data), and generic XDP copies every packet too (too little headroom: \
         do_xdp_generic → skb_pp_cow_data), though whole GSO packets; TC copies nothing. A NIC \
         driver's native XDP does none of this. The target row is repeated with XDP forced \
         native, forced generic, and off to show all three.\n\n",
    );

    md.push_str("## Targets\n\n`floor`: the same load through `relay-floor`, a forwarder with the relay's sockets and threading but no protocol and no crypto (splice for bulk, plain copies for short connections), in this run: the floor the topology sets under a relay making the same system calls.\n\n| target | goal | measured | result | floor | best existing |\n|---|---|---|---|---|---|\n");
    for t in report["targets"].as_array().into_iter().flatten() {
        let result = match t["pass"].as_bool() {
            Some(true) => "pass",
            Some(false) => "**FAIL**",
            None => "not measured",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} {} | {} | {} | {} |",
            t["what"].as_str().unwrap_or(""),
            t["goal"].as_str().unwrap_or(""),
            fmt(t["measured"].as_f64()),
            t["unit"].as_str().unwrap_or(""),
            result,
            t["floor"].as_f64().map_or(String::new(), |v| fmt(Some(v))),
            t["reference"].as_str().unwrap_or(""),
        );
    }

    let c = &report["crypto"];
    md.push_str("\n## Crypto (one core, in-process, 16 KiB buffers)\n\n");
    let _ = writeln!(
        md,
        "- `{}` ({}): {} MB/s at 16 KiB blocks",
        c["openssl"]["command"].as_str().unwrap_or("openssl speed"),
        c["openssl"]["version"].as_str().unwrap_or("?"),
        fmt(num(&c["openssl"], "bytes_per_sec").map(|v| v / 1e6)),
    );
    let _ = writeln!(
        md,
        "- relay's `AesCtr::apply` ({}), one pass: {} MB/s",
        c["transform"]["aes_ctr_implementation"]
            .as_str()
            .unwrap_or("?"),
        fmt(num(&c["transform"], "aes_ctr_one_pass_bytes_per_sec").map(|v| v / 1e6)),
    );
    let _ = writeln!(
        md,
        "- relay's `ToUpstream` transform (decrypt + re-encrypt): {} MB/s of payload = {} % of openssl",
        fmt(num(&c["transform"], "to_upstream_bytes_per_sec").map(|v| v / 1e6)),
        fmt(num(c, "transform_to_openssl").map(|v| 100.0 * v)),
    );

    let m = &c["middle_framing"];
    let _ = writeln!(
        md,
        "- the middle-proxy leg's framing (CRC32 + AES-256-CBC), 16 KiB payloads: {} MB/s \
         toward the ME (CBC encryption, one block after another), {} MB/s from it; together \
         {} CPU-seconds per GB echoed in middle mode before any socket work",
        fmt(num(m, "encrypt_bytes_per_sec").map(|v| v / 1e6)),
        fmt(num(m, "decrypt_bytes_per_sec").map(|v| v / 1e6)),
        fmt(num(m, "cpu_sec_per_gb_echoed")),
    );

    let h = &c["handshake_us"];
    let _ = writeln!(
        md,
        "- handshake cryptography per call, in-process (client's user picked at random): \
         obfuscated2 header check {} µs with 1 user, {} µs with 1,000; fake-TLS ClientHello \
         check {} µs with 1 user, {} µs with 1,000; fake-TLS server flight (X25519 key share + \
         HMAC) {} µs",
        fmt(num(h, "obfs2_accept_us_1_users")),
        fmt(num(h, "obfs2_accept_us_1000_users")),
        fmt(num(h, "tls_hello_verify_us_1_users")),
        fmt(num(h, "tls_hello_verify_us_1000_users")),
        fmt(num(h, "tls_server_flight_us")),
    );

    md.push_str("\n## XDP verdict cost (`BPF_PROG_TEST_RUN`: the kernel's mean ns per run, in whole ns; a round is the mean of `calls` test runs of `runs` each, the programs taking turns to go first; the table gives the median round; 10,001 blocked IPv4 prefixes loaded; minimal = `relay-xdp-minimal`, the same lookups in the same order and nothing else; baseline = `--xdp-baseline`, relay's program from another build)\n\n| packet | verdict | relay ns | minimal ns | relay / minimal | baseline ns | baseline / minimal | rounds × calls × runs |\n|---|---|---|---|---|---|---|---|\n");
    for r in report["xdp_verdict"].as_array().into_iter().flatten() {
        if let Some(e) = errored(r) {
            let _ = writeln!(
                md,
                "| {} | | error: {e} | | | | | |",
                r["name"].as_str().unwrap_or("")
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} × {} × {} |",
            r["name"].as_str().unwrap_or(""),
            r["verdict"].as_str().unwrap_or(""),
            f(r, "relay_ns"),
            f(r, "minimal_ns"),
            num(r, "ratio").map_or("–".to_owned(), |v| format!("{v:.2}")),
            f(r, "baseline_ns"),
            num(r, "baseline_ratio").map_or("–".to_owned(), |v| format!("{v:.2}")),
            r["rounds"],
            r["calls"],
            r["repeat"],
        );
    }

    md.push_str("\n## Throughput (echo through relay → fake DC → relay)\n\n| mode | fast mode | XDP | conns × frame | MB/s echoed | relay CPU-s/GB | relay CPU % | generator CPU % | fake DC CPU % | rest of machine CPU % | whole machine CPU-s/GB | load (1 min) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in report["throughput"].as_array().into_iter().flatten() {
        if let Some(e) = errored(r) {
            let _ = writeln!(
                md,
                "| {} | | | | error: {e} | | | | | | | |",
                r["name"].as_str().unwrap_or("")
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} × {} KiB | {} | {}{} | {} | {} | {} | {} | {} | {} |",
            r["mode"].as_str().unwrap_or(""),
            match r["fast_mode"].as_bool() {
                Some(true) => "on",
                Some(false) => "off",
                None => "–",
            },
            r["xdp"].as_str().unwrap_or(""),
            r["conns"],
            r["frame"].as_u64().unwrap_or(0) / 1024,
            f(r, "mb_per_sec"),
            f(r, "relay_cpu_secs_per_gb"),
            if r["target_row"] == true {
                " (target row)"
            } else {
                ""
            },
            f(r, "relay_cpu_pct"),
            f(r, "generator_cpu_pct"),
            f(r, "dc_cpu_pct"),
            fmt(num(&r["machine_cpu_pct"], "rest")),
            f(r, "machine_cpu_secs_per_gb"),
            f(r, "load1"),
        );
    }

    md.push_str("\n## Passthrough paths (`dd` fast mode: DC → client bytes pass through unchanged)\n\nThe same echo load with `[server] passthrough` on each path, and `relay-floor` moving it the same way. `process`: the relay's (or floor's) own CPU; `machine`: every CPU's busy time over the window (generator, fake DC, softirq and kernel workers included), where the sockmap program's forwarding shows.\n\n| path | moved by | MB/s echoed | process CPU-s/GB | machine CPU-s/GB | process CPU % |\n|---|---|---|---|---|---|\n");
    for r in report["passthrough"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or("");
        if let Some(e) = errored(r) {
            let _ = writeln!(md, "| {name} | | error: {e} | | | |");
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            r["path"].as_str().unwrap_or(""),
            if name.starts_with("floor") {
                "relay-floor"
            } else {
                "relay"
            },
            f(r, "mb_per_sec"),
            f(r, "relay_cpu_secs_per_gb"),
            f(r, "machine_cpu_secs_per_gb"),
            f(r, "relay_cpu_pct"),
        );
    }

    md.push_str("\n## Handshakes (connect, header, one echoed 128-byte frame, close)\n\n| mode | users | user per connection | workers | handshakes/s | relay CPU % | handshakes per relay CPU-s | generator CPU % | fake DC CPU % | rest of machine CPU % | failed |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in report["handshakes"].as_array().into_iter().flatten() {
        if let Some(e) = errored(r) {
            let _ = writeln!(
                md,
                "| {} | | | | error: {e} | | | | | | | |",
                r["name"].as_str().unwrap_or("")
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            match r["mode"].as_str() {
                Some("tls") => "ee (fake TLS)",
                Some(other) => other,
                None => "",
            },
            r["users"]
                .as_u64()
                .map_or("–".to_owned(), |n| n.to_string()),
            r["user_pick"].as_str().unwrap_or("–"),
            r["workers"],
            f(r, "handshakes_per_sec"),
            f(r, "relay_cpu_pct"),
            f(r, "handshakes_per_relay_cpu_sec"),
            f(r, "generator_cpu_pct"),
            f(r, "dc_cpu_pct"),
            fmt(num(&r["machine_cpu_pct"], "rest")),
            r["failed"],
        );
    }

    md.push_str("\n## Middle mode vs direct (each on a fresh 1-user relay, fast mode, XDP auto; middle: `[upstream] mode = \"middle\"`, 2 connections to `relay-fakeme`, which echoes every message; the generator sends padded-intermediate frames and reads the framed echoes; direct: the same load, raw, to the fake DC)\n\n| load | mode | upstream | workers or conns × frame | rate | handshakes per relay CPU-s | relay CPU-s/GB | relay CPU % | generator CPU % | fake DC / ME CPU % | failed |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in report["middle"].as_array().into_iter().flatten() {
        if let Some(e) = errored(r) {
            let _ = writeln!(
                md,
                "| {} | | | | error: {e} | | | | | | |",
                r["name"].as_str().unwrap_or("")
            );
            continue;
        }
        let handshakes = r["load"] == "handshakes";
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["load"].as_str().unwrap_or(""),
            match r["mode"].as_str() {
                Some("tls") => "ee (fake TLS)",
                Some(other) => other,
                None => "",
            },
            r["upstream"].as_str().unwrap_or(""),
            if handshakes {
                format!("{} workers", r["workers"])
            } else {
                format!(
                    "{} × {} KiB",
                    r["conns"],
                    r["frame"].as_u64().unwrap_or(0) / 1024
                )
            },
            if handshakes {
                format!("{}/s", f(r, "handshakes_per_sec"))
            } else {
                format!("{} MB/s", f(r, "mb_per_sec"))
            },
            if handshakes {
                f(r, "handshakes_per_relay_cpu_sec")
            } else {
                "–".to_owned()
            },
            if handshakes {
                "–".to_owned()
            } else {
                f(r, "relay_cpu_secs_per_gb")
            },
            f(r, "relay_cpu_pct"),
            f(r, "generator_cpu_pct"),
            f(r, "dc_cpu_pct"),
            if handshakes {
                r["failed"].to_string()
            } else {
                "–".to_owned()
            },
        );
    }

    md.push_str(
        "\n## Memory (idle post-handshake dd connections: handshake + one echo, then silence)\n\n",
    );
    for r in report["memory"].as_array().into_iter().flatten() {
        if let Some(e) = errored(r) {
            let _ = writeln!(md, "- error: {e}");
            continue;
        }
        let _ = writeln!(
            md,
            "- {} of {} connections open ({} wanted); relay RSS {} KiB before → {} KiB idle (peak {} KiB), threads {} → {}: **{} KiB per connection**; fake DC RSS {} KiB",
            fmt(num(r, "opened")),
            fmt(num(r, "attempted")),
            fmt(num(r, "wanted")),
            f(r, "relay_rss_before_kib"),
            f(r, "relay_rss_idle_kib"),
            f(r, "relay_hwm_kib"),
            r["relay_threads_before"],
            r["relay_threads_idle"],
            f(r, "rss_per_conn_kib"),
            f(r, "fake_dc_rss_idle_kib"),
        );
        if let Some(note) = r["note"].as_str() {
            let _ = writeln!(md, "- note: {note}");
        }
    }

    md.push_str("\n## Latency (one connection, sequential 1 KiB request/response; added = relayed minus the mean of the two direct runs; a SCHED_IDLE spinner per CPU keeps idle vCPUs from halting, whose wake-up would otherwise dominate)\n\n| path | round trips | p50 µs | p99 µs | added p50 µs | added p99 µs |\n|---|---|---|---|---|---|\n");
    for r in report["latency"].as_array().into_iter().flatten() {
        if let Some(e) = errored(r) {
            let _ = writeln!(
                md,
                "| {} | error: {e} | | | | |",
                r["name"].as_str().unwrap_or("")
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            r["name"].as_str().unwrap_or(""),
            r["rounds"],
            f(r, "p50_us"),
            f(r, "p99_us"),
            f(r, "added_p50_us"),
            f(r, "added_p99_us"),
        );
    }

    md.push_str(
        "\n## SYN flood (spoofed SYNs from the client namespace via AF_PACKET)\n\n\
         Window 1, the flood alone: packets arrived, XDP drops, relay CPU, the sender's CPU \
         (which also carries the receive path it triggers, XDP included), kernel counters. \
         Window 2, the flood plus legit dd load (16 KiB frames), compared with the same load \
         without a flood (the mean of a window before the floods and one after): on 2 CPUs \
         the sender alone takes a large share of what the legit load had. Window 3, the flood \
         plus legit load paced at half the unloaded rate: what a relay that is not saturated \
         still delivers.\n\n\
         | XDP | flood | sent/s (sender's average) | arrived/s | XDP drops/s | relay CPU % | flood sender CPU % | machine softirq % | SYN cookies/s | legit MB/s | legit vs unloaded | relay CPU-s/GB (legit) | paced legit MB/s (offered) | paced achieved |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in report["flood"].as_array().into_iter().flatten() {
        if let Some(e) = errored(r) {
            let _ = writeln!(
                md,
                "| {} | error: {e} | | | | | | | | | | | | |",
                r["name"].as_str().unwrap_or("")
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["xdp"].as_str().unwrap_or(""),
            r["flood"].as_str().unwrap_or(""),
            fmt(num(&r["flood_sender"], "pps")),
            f(r, "arrived_per_sec"),
            if r["xdp"] != "off" {
                f(r, "xdp_dropped_per_sec")
            } else {
                "n/a".to_owned()
            },
            f(r, "relay_cpu_pct"),
            f(r, "flood_sender_cpu_pct"),
            f(r, "machine_softirq_pct"),
            fmt(num(&r["kernel_per_sec"], "syncookies_sent")),
            f(r, "legit_mb_per_sec"),
            num(r, "legit_vs_unloaded").map_or("–".to_owned(), |v| format!("{:.0} %", 100.0 * v)),
            fmt(num(&r["legit"], "relay_cpu_secs_per_gb")),
            match (
                num(&r["paced"], "mb_per_sec"),
                num(&r["paced"], "offered_mb_per_sec"),
            ) {
                (Some(got), Some(offered)) =>
                    format!("{} ({})", fmt(Some(got)), fmt(Some(offered))),
                _ => "–".to_owned(),
            },
            num(&r["paced"], "achieved_of_offered")
                .map_or("–".to_owned(), |v| format!("{:.0} %", 100.0 * v)),
        );
    }

    peers_markdown(&mut md, report);

    md.push_str("\n## The relays' own counters (`relay-ctl stats` before each stop)\n\n");
    for r in report["relays"].as_array().into_iter().flatten() {
        let stats = &r["stats"];
        let failures = stats["handshake_failures"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map_or_else(
                || "none".to_owned(),
                |m| {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            );
        let _ = writeln!(
            md,
            "- `{}` ({} user(s), fast mode {}, {}): {} connections accepted, handshake failures: {}",
            r["label"].as_str().unwrap_or(""),
            r["users"],
            if r["fast_mode"] == true { "on" } else { "off" },
            stats["enforcement"].as_str().unwrap_or("?"),
            fmt(num(stats, "connections_accepted")),
            failures,
        );
    }

    let errors = report["errors"].as_array().map_or(0, Vec::len);
    if errors > 0 {
        md.push_str("\n## Scenarios that could not run\n\n");
        for e in report["errors"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "- {} / {}: {}",
                e["section"].as_str().unwrap_or(""),
                e["name"].as_str().unwrap_or(""),
                e["error"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            );
        }
    }
    md
}

/// The `peers` group: the comparison table, skipped peers, and every row.
fn peers_markdown(md: &mut String, report: &Value) {
    let Some(rows) = report["peers"].as_array() else {
        return;
    };
    let cmp = &report["peer_comparison"];
    let proxies: Vec<(&str, &str)> = cmp["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["proxy"].as_str()?, p["upstream"].as_str()?)))
        .collect();
    let any_middle = proxies.iter().any(|(_, u)| *u == "middle");
    md.push_str(
        "\n## Relay next to other proxies (`--peer`)\n\nEach proxy runs alone in the server \
         namespace with the same users, gets the same generator load (fake-TLS ClientHellos \
         padded to a real client's 517 bytes) and the same /proc measurement of its own \
         process; relay runs as an operator's would (XDP `auto`). Direct-mode proxies go to \
         the fake DC; the official C proxy, which has only middle mode, goes through the fake \
         middle-end `relay-fakeme` (framed load), and is compared with relay in middle mode on \
         that same load. A cell reads `peer's figure (relay ÷ peer×)`.\n\n",
    );
    let mut header = "| figure | relay |".to_owned();
    let mut rule = "|---|---|".to_owned();
    if any_middle {
        header.push_str(" relay (middle) |");
        rule.push_str("---|");
    }
    for (p, u) in &proxies {
        let mid = if *u == "middle" { ", middle" } else { "" };
        let _ = write!(header, " {p}{mid} |");
        rule.push_str("---|");
    }
    let _ = writeln!(header, " best peer | relay ÷ best | goal | result |");
    let _ = writeln!(rule, "---|---|---|---|");
    md.push_str(&header);
    md.push_str(&rule);
    for fig in cmp["figures"].as_array().into_iter().flatten() {
        let mut line = format!(
            "| {} ({}) | {} |",
            fig["what"].as_str().unwrap_or(""),
            fig["unit"].as_str().unwrap_or(""),
            fmt(fig["relay"].as_f64())
        );
        if any_middle {
            let _ = write!(line, " {} |", fmt(fig["relay_middle"].as_f64()));
        }
        for (p, _) in &proxies {
            let peer = &fig["peers"][*p];
            match peer["value"].as_f64() {
                Some(v) => {
                    let _ = write!(
                        line,
                        " {} ({}×) |",
                        fmt(Some(v)),
                        fmt(peer["relay_ratio"].as_f64())
                    );
                }
                None => line.push_str(" – |"),
            }
        }
        let result = match fig["pass"].as_bool() {
            Some(true) => "pass",
            Some(false) => "**FAIL**",
            None => "not measured",
        };
        let _ = writeln!(
            line,
            " {} | {}× | {} | {} |",
            fig["best_peer"].as_str().unwrap_or("–"),
            fmt(fig["relay_to_best"].as_f64()),
            fig["goal"].as_str().unwrap_or(""),
            result
        );
        md.push_str(&line);
    }
    for s in report["peers_skipped"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "\n- {} skipped: {}",
            s["proxy"].as_str().unwrap_or(""),
            s["reason"].as_str().unwrap_or("")
        );
    }
    md.push_str("\n| row | figure | measured process CPU % | generator CPU % | fake DC / ME CPU % | failed |\n|---|---|---|---|---|---|\n");
    for r in rows {
        if let Some(e) = errored(r) {
            let _ = writeln!(
                md,
                "| {} | error: {e} | | | | |",
                r["name"].as_str().unwrap_or("")
            );
            continue;
        }
        let figure = match r["load"].as_str() {
            Some("throughput") => format!(
                "{} MB/s, {} CPU-s/GB",
                f(r, "mb_per_sec"),
                f(r, "relay_cpu_secs_per_gb")
            ),
            Some("handshakes") => format!(
                "{}/s, {} per CPU-s",
                f(r, "handshakes_per_sec"),
                f(r, "handshakes_per_relay_cpu_sec")
            ),
            Some("memory") => format!(
                "{} idle conns, RSS {} → {} KiB, {} KiB each",
                fmt(num(r, "opened")),
                f(r, "relay_rss_before_kib"),
                f(r, "relay_rss_idle_kib"),
                f(r, "rss_per_conn_kib")
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            r["name"].as_str().unwrap_or(""),
            figure,
            f(r, "relay_cpu_pct"),
            f(r, "generator_cpu_pct"),
            f(r, "dc_cpu_pct"),
            if r["load"] == "handshakes" {
                r["failed"].to_string()
            } else {
                "–".to_owned()
            },
        );
    }
}

fn yes(v: &Value) -> &'static str {
    if v == true { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(fmt(Some(25_123.4)), "25,123");
        assert_eq!(fmt(Some(0.853)), "0.85");
        assert_eq!(fmt(Some(12.34)), "12.3");
        assert_eq!(fmt(Some(28.0)), "28");
        assert_eq!(fmt(None), "–");
        assert_eq!(group(-1_234_567), "-1,234,567");
    }

    #[test]
    fn relay_is_compared_with_the_best_peer() {
        let row = |proxy: &str, upstream: &str, load: &str, users: u64, key: &str, v: f64| {
            json!({"name": format!("{proxy} {upstream} {load}"), "proxy": proxy,
                   "upstream": upstream, "load": load, "mode": "dd", "users": users, key: v})
        };
        let (gb, hs, kib) = (
            "relay_cpu_secs_per_gb",
            "handshakes_per_relay_cpu_sec",
            "rss_per_conn_kib",
        );
        let report = json!({
            "peers": [
                row("relay", "direct", "throughput", 1, gb, 1.0),
                row("telemt", "direct", "throughput", 1, gb, 4.0),
                row("mtprotoproxy", "direct", "throughput", 1, gb, 8.0),
                row("relay", "direct", "handshakes", 1, hs, 9000.0),
                row("telemt", "direct", "handshakes", 1, hs, 3000.0),
                row("mtprotoproxy", "direct", "handshakes", 1, hs, 7000.0),
                {"name": "telemt: idle connections", "proxy": "telemt", "upstream": "direct",
                 "error": "boom"},
                row("relay", "direct", "memory", 1, kib, 10.0),
                row("mtprotoproxy", "direct", "memory", 1, kib, 15.0),
                // Middle mode: judged against relay in middle mode, not for handshakes.
                row("relay", "middle", "throughput", 1, gb, 3.0),
                row("mtproxy", "middle", "throughput", 1, gb, 3.0),
                row("relay", "middle", "handshakes", 1, hs, 1000.0),
                row("mtproxy", "middle", "handshakes", 1, hs, 9000.0),
            ],
            "peers_skipped": [{"proxy": "telemt", "reason": "/x not found"}],
        });
        let cmp = peer_comparison(&report);
        assert_eq!(cmp["proxies"].as_array().unwrap().len(), 3);
        let by = |id: &str| {
            cmp["figures"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["id"] == id)
                .unwrap()
                .clone()
        };
        let g = by("cpu_per_gb");
        // mtproxy (middle, ratio 1.0) is the one relay compares worst with.
        assert_eq!(g["best_peer"], "mtproxy");
        assert_eq!(g["relay_to_best"], 1.0);
        assert_eq!(g["pass"], false);
        assert_eq!(g["peers"]["mtprotoproxy"]["relay_ratio"], 0.125);
        assert_eq!(g["relay_middle"], 3.0);
        let h = by("dd_handshakes_1");
        assert_eq!(
            h["best_peer"], "mtprotoproxy",
            "middle-mode peers are not judged"
        );
        assert_eq!(h["pass"], false, "9,000 is not 1.5 × 7,000");
        assert_eq!(h["peers"]["mtproxy"]["judged"], false);
        let m = by("kib_per_idle_conn");
        assert_eq!(m["best_peer"], "mtprotoproxy");
        assert!(m["peers"].get("telemt").is_none());
        assert_eq!(by("ee_handshakes_100")["pass"], Value::Null);
        let mut full = report.clone();
        full["peer_comparison"] = cmp;
        let md = markdown(&full);
        assert!(md.contains("| relay (middle) | telemt | mtprotoproxy | mtproxy, middle |"));
        assert!(md.contains("| 4 (0.25×) |"));
        assert!(md.contains("telemt skipped: /x not found"));
        assert!(md.contains("error: boom"));
    }

    #[test]
    fn targets_are_judged_only_when_measured() {
        let report = json!({
            "throughput": [
                {"name": "x", "target_row": true, "relay_cpu_secs_per_gb": 0.5},
                {"name": "floor", "relay_cpu_secs_per_gb": 0.25},
            ],
            "handshakes": [
                {"name": "dd 1 user", "handshakes_per_relay_cpu_sec": 20000.0},
                {"name": "dd 1000 users", "handshakes_per_relay_cpu_sec": 19000.0},
                {"name": "floor", "handshakes_per_relay_cpu_sec": 30000.0},
            ],
            "crypto": {"transform_to_openssl": 0.2},
            "xdp_verdict": [
                {"name": "a", "ratio": 1.1},
                {"name": "b", "ratio": 1.3},
            ],
        });
        let t = targets(&report);
        let by = |id: &str| {
            t.as_array()
                .unwrap()
                .iter()
                .find(|x| x["id"] == id)
                .unwrap()
                .clone()
        };
        assert_eq!(by("relay_cpu_per_gb")["pass"], true);
        assert_eq!(by("dd_handshakes")["pass"], false);
        assert_eq!(by("transform_vs_openssl")["pass"], false);
        assert!((by("dd_users_drop")["measured"].as_f64().unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(by("dd_users_drop")["pass"], true);
        assert_eq!(by("rss_per_idle_conn")["pass"], Value::Null);
        // The verdict target is judged on the worst packet.
        assert_eq!(by("xdp_verdict_vs_minimal")["measured"], 1.3);
        assert_eq!(by("xdp_verdict_vs_minimal")["pass"], false);
        // The floor rows sit next to the targets they bound, and nowhere else.
        assert_eq!(by("relay_cpu_per_gb")["floor"], 0.25);
        assert_eq!(by("dd_handshakes")["floor"], 30000.0);
        assert_eq!(by("ee_handshakes")["floor"], Value::Null);
        let md = markdown(&json!({"targets": t, "machine": {}}));
        assert!(md.contains("not measured"));
        assert!(md.contains("| 30,000 |"));
    }
}
