//! `relay-ctl block import FILE`: a FireHOL netset parsed here, sent in line-limit-sized
//! requests.

use std::{collections::HashSet, fmt, path::Path, time::Duration};

use ipnet::IpNet;

use super::{Exit, Failure, Session, to_json};
use crate::control::{
    api::{Reply, Request},
    netset,
    server::MAX_LINE,
};

/// Encoded-size budget of one import request, below [`MAX_LINE`] with room for the rest.
const IMPORT_CHUNK_BYTES: usize = MAX_LINE / 4 * 3;
/// Import requests may take the daemon a while (100,000 entries into the kernel map).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(180);
/// Warnings and line errors printed one by one before summarising the rest.
const SHOW_AT_MOST: usize = 10;

/// `block import FILE`: parse locally, report problems on stderr, send the entries in as few
/// requests as fit the socket's line limit.
pub(super) fn run(
    session: &Session<'_>,
    file: &Path,
    skip_private: bool,
    strict: bool,
) -> Result<String, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::new(Exit::Usage, format!("cannot read {}: {e}", file.display())))?;
    let parsed = netset::parse(&text);
    let name = file.display();
    report(&name, &parsed.errors);
    report(&name, &parsed.warnings);
    if !parsed.warnings.is_empty() {
        if skip_private {
            eprintln!(
                "warning: {name}: leaving out {} entries in private or special ranges \
                 (--skip-private)",
                parsed.warnings.len()
            );
        } else {
            eprintln!(
                "warning: {} entries of {name} touch private or special address \
                 space; blocking them can lock out your own network (--skip-private leaves them out)",
                parsed.warnings.len()
            );
        }
    }
    if strict && !parsed.errors.is_empty() {
        return Err(Failure::new(
            Exit::Failed,
            format!(
                "{name}: {} malformed lines; nothing imported (--strict)",
                parsed.errors.len()
            ),
        ));
    }
    let entries = importable(&parsed, skip_private);
    if entries.is_empty() {
        return Err(Failure::new(
            Exit::Failed,
            format!("{name}: no addresses or CIDRs to import"),
        ));
    }
    let source = name.to_string();
    let mut added = 0;
    for chunk in chunks(&entries, IMPORT_CHUNK_BYTES) {
        let request = Request::BlockImport {
            entries: chunk.to_vec(),
            source: source.clone(),
        };
        match session.exchange(&request, IMPORT_TIMEOUT) {
            Ok(Reply::Count { changed }) => added += changed,
            Ok(_) => added += chunk.len(),
            Err(mut failure) => {
                if added > 0 {
                    failure.message =
                        format!("{} (after {added} entries were added)", failure.message);
                }
                return Err(failure);
            }
        }
    }
    Ok(if session.json {
        to_json(&Reply::Count { changed: added })
    } else {
        let already = entries.len().saturating_sub(added);
        let mut line = format!("added {added} of {} entries from {name}", entries.len());
        if already > 0 {
            line.push_str(&format!(" ({already} already blocked or duplicates)"));
        }
        line.push('\n');
        line
    })
}

/// The entries to send, as strings; with `skip_private`, without those that drew a warning.
pub(super) fn importable(parsed: &netset::Netset, skip_private: bool) -> Vec<String> {
    let skip: HashSet<IpNet> = if skip_private {
        parsed.warnings.iter().map(|w| w.net).collect()
    } else {
        HashSet::new()
    };
    parsed
        .entries
        .iter()
        .filter(|n| !skip.contains(n))
        .map(ToString::to_string)
        .collect()
}

/// Splits entries into runs whose JSON encoding stays under `budget` bytes.
pub(super) fn chunks(entries: &[String], budget: usize) -> Vec<&[String]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, entry) in entries.iter().enumerate() {
        let cost = entry.len() + 3; // quotes and comma
        if size + cost > budget && i > start {
            out.push(&entries[start..i]);
            start = i;
            size = 0;
        }
        size += cost;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// Prints up to [`SHOW_AT_MOST`] items on stderr, then how many more there were.
fn report<T: fmt::Display>(prefix: &dyn fmt::Display, items: &[T]) {
    for item in items.iter().take(SHOW_AT_MOST) {
        eprintln!("warning: {prefix}: {item}");
    }
    if items.len() > SHOW_AT_MOST {
        eprintln!(
            "warning: {prefix}: ... and {} more",
            items.len() - SHOW_AT_MOST
        );
    }
}
