//! Admin requests on a daemon in a temporary state dir: what each answers, and that refused
//! requests change nothing.

use relay_common::{BanAction, BanReason};

use crate::{
    admission::BanTarget,
    control::api::{ErrorKind, PrefixEntry, Reply, Request},
    daemon::test_support::TestDaemon,
};

fn block_add(cidr: &str, reason: Option<&str>) -> Request {
    Request::BlockAdd {
        cidr: cidr.to_owned(),
        ttl_secs: None,
        reason: reason.map(str::to_owned),
    }
}

async fn entries(relay: &TestDaemon, request: Request) -> Vec<PrefixEntry> {
    match relay.ok(request).await {
        Reply::Prefixes { entries } => entries,
        other => panic!("not a list: {other:?}"),
    }
}

async fn operator_blocks(relay: &TestDaemon) -> Vec<String> {
    entries(relay, Request::BlockList)
        .await
        .into_iter()
        .filter(|e| e.source == "operator")
        .map(|e| e.cidr)
        .collect()
}

async fn ban_prefix(relay: &TestDaemon, prefix: &str) {
    let Ok(BanTarget::Prefix(prefix)) = prefix.parse::<BanTarget>() else {
        panic!("{prefix} is not a ban prefix");
    };
    relay
        .daemon
        .admission
        .write()
        .await
        .ban_prefix(prefix, BanReason::BadSecret, BanAction::Drop, None, 10)
        .expect("prefix ban");
}

#[tokio::test]
async fn block_add_list_and_rm() {
    let relay = TestDaemon::start().await;
    assert_eq!(
        relay.ok(block_add("192.0.2.7/24", Some("scanner"))).await,
        Reply::Done
    );
    let listed = entries(&relay, Request::BlockList).await;
    let entry = listed
        .iter()
        .find(|e| e.source == "operator")
        .expect("operator block");
    // Host bits are cleared; the reason is kept; no expiry was asked for.
    assert_eq!(entry.cidr, "192.0.2.0/24");
    assert_eq!(entry.reason.as_deref(), Some("scanner"));
    assert_eq!(entry.expires_in_secs, None);

    let rm = || Request::BlockRm {
        cidr: "192.0.2.0/24".to_owned(),
    };
    assert_eq!(relay.ok(rm()).await, Reply::Done);
    assert!(operator_blocks(&relay).await.is_empty());
    assert_eq!(
        relay.error(rm()).await,
        (
            ErrorKind::NotFound,
            "192.0.2.0/24 is not an operator block".to_owned()
        )
    );
}

#[tokio::test]
async fn block_with_a_ttl_reports_its_expiry() {
    let relay = TestDaemon::start().await;
    relay
        .ok(Request::BlockAdd {
            cidr: "192.0.2.1".to_owned(),
            ttl_secs: Some(600),
            reason: None,
        })
        .await;
    let listed = entries(&relay, Request::BlockList).await;
    let expires = listed[0].expires_in_secs.expect("an expiry");
    assert!((599..=600).contains(&expires), "{expires}");
}

#[tokio::test]
async fn a_bad_cidr_is_a_bad_request_and_changes_nothing() {
    let relay = TestDaemon::start().await;
    for request in [
        block_add("192.0.2.300", None),
        Request::BlockRm {
            cidr: "not an address".to_owned(),
        },
        Request::AllowAdd {
            cidr: "2001:db8::/129".to_owned(),
        },
        Request::AllowRm {
            cidr: String::new(),
        },
    ] {
        let (kind, message) = relay.error(request).await;
        assert_eq!(kind, ErrorKind::BadRequest, "{message}");
        assert!(!message.is_empty());
    }
    assert!(operator_blocks(&relay).await.is_empty());
    assert!(!relay.state_path().join("lists.json").exists());
}

#[tokio::test]
async fn block_import_counts_new_entries_and_refuses_a_bad_one() {
    let relay = TestDaemon::start().await;
    let import = |entries: &[&str]| Request::BlockImport {
        entries: entries.iter().map(|e| (*e).to_owned()).collect(),
        source: "level1.netset".to_owned(),
    };
    assert_eq!(
        relay
            .ok(import(&["192.0.2.0/24", "198.51.100.1", "2001:db8::/32"]))
            .await,
        Reply::Count { changed: 3 }
    );
    assert_eq!(
        relay.ok(import(&["192.0.2.0/24", "203.0.113.0/24"])).await,
        Reply::Count { changed: 1 }
    );
    let listed = entries(&relay, Request::BlockList).await;
    assert!(
        listed
            .iter()
            .all(|e| e.reason.as_deref() == Some("imported from level1.netset")),
        "{listed:?}"
    );
    // One bad entry refuses the whole import.
    let (kind, _) = relay.error(import(&["192.0.2.9", "bogus"])).await;
    assert_eq!(kind, ErrorKind::BadRequest);
    assert_eq!(operator_blocks(&relay).await.len(), 4);
}

#[tokio::test]
async fn block_rm_names_what_removes_a_prefix_ban() {
    let relay = TestDaemon::start().await;
    ban_prefix(&relay, "198.51.100.0/24").await;
    assert_eq!(
        relay
            .error(Request::BlockRm {
                cidr: "198.51.100.0/24".to_owned(),
            })
            .await,
        (
            ErrorKind::NotFound,
            "198.51.100.0/24 is not an operator block; it is a prefix ban: relay-ctl bans rm \
             198.51.100.0/24"
                .to_owned()
        )
    );
}

#[tokio::test]
async fn allow_add_is_idempotent_and_rm_reports_a_missing_entry() {
    let relay = TestDaemon::start().await;
    let add = || Request::AllowAdd {
        cidr: "198.18.0.1".to_owned(),
    };
    relay.ok(add()).await;
    relay.ok(add()).await;
    let listed = entries(&relay, Request::AllowList).await;
    let operator: Vec<_> = listed.iter().filter(|e| e.source == "operator").collect();
    assert_eq!(operator.len(), 1, "{listed:?}");
    assert_eq!(operator[0].cidr, "198.18.0.1/32");

    let rm = || Request::AllowRm {
        cidr: "198.18.0.1/32".to_owned(),
    };
    assert_eq!(relay.ok(rm()).await, Reply::Done);
    assert_eq!(
        relay.error(rm()).await,
        (
            ErrorKind::NotFound,
            "198.18.0.1/32 is not an operator allowlist entry".to_owned()
        )
    );
}

#[tokio::test]
async fn bans_rm_says_why_there_is_nothing_to_lift() {
    let relay = TestDaemon::start().await;
    let rm = |addr: &str| Request::BansRm {
        addr: addr.to_owned(),
    };
    assert_eq!(
        relay.error(rm("198.51.100.1")).await,
        (ErrorKind::NotFound, "no ban covers 198.51.100.1".to_owned())
    );
    assert_eq!(
        relay.error(rm("198.51.100.0/24")).await,
        (ErrorKind::NotFound, "no ban on 198.51.100.0/24".to_owned())
    );
    ban_prefix(&relay, "198.51.100.0/24").await;
    assert_eq!(
        relay.error(rm("198.51.100.1")).await,
        (
            ErrorKind::NotFound,
            "198.51.100.1 has no ban of its own; the prefix ban on 198.51.100.0/24 covers it"
                .to_owned()
        )
    );
    let (kind, _) = relay.error(rm("not an address")).await;
    assert_eq!(kind, ErrorKind::BadRequest);
    assert_eq!(relay.ok(rm("198.51.100.0/24")).await, Reply::Done);
    assert!(relay.state_path().join("bans.json").exists());
}

#[tokio::test]
async fn bans_list_and_clear() {
    let relay = TestDaemon::start().await;
    relay
        .daemon
        .admission
        .write()
        .await
        .ban(
            "192.0.2.1".parse().expect("addr"),
            BanReason::BadSecret,
            BanAction::Drop,
            None,
            7,
        )
        .expect("ban");
    ban_prefix(&relay, "198.51.100.0/24").await;
    let Reply::Bans { bans } = relay.ok(Request::BansList).await else {
        panic!("not bans");
    };
    let mut addrs: Vec<_> = bans.iter().map(|b| b.addr.as_str()).collect();
    addrs.sort_unstable();
    assert_eq!(addrs, ["192.0.2.1", "198.51.100.0/24"]);
    assert!(
        bans.iter()
            .all(|b| b.source == "relay" && b.action == "drop")
    );
    assert_eq!(
        relay.ok(Request::BansClear).await,
        Reply::Count { changed: 2 }
    );
    assert_eq!(
        relay.ok(Request::BansList).await,
        Reply::Bans { bans: Vec::new() }
    );
}

#[tokio::test]
async fn users_show_enable_and_disable() {
    let relay = TestDaemon::start().await;
    let Reply::Users { users } = relay.ok(Request::UsersList).await else {
        panic!("not users");
    };
    let names: Vec<_> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);

    let show = |name: &str| Request::UsersShow {
        name: name.to_owned(),
    };
    assert_eq!(
        relay.error(show("carol")).await,
        (ErrorKind::NotFound, "no user named `carol`".to_owned())
    );
    assert_eq!(
        relay
            .error(Request::UsersEnable {
                name: "bob".to_owned()
            })
            .await,
        (
            ErrorKind::BadRequest,
            "user `bob` is disabled in the configuration (enabled = false): enable it there \
             and reload"
                .to_owned()
        )
    );
    assert_eq!(
        relay
            .ok(Request::UsersDisable {
                name: "alice".to_owned()
            })
            .await,
        Reply::Done
    );
    let Reply::Users { users } = relay.ok(show("alice")).await else {
        panic!("not users");
    };
    assert!(!users[0].enabled);
    assert_eq!(
        users[0].blocked_reason.as_deref(),
        Some("disabled by operator")
    );
}

#[tokio::test]
async fn a_switch_that_cannot_be_saved_is_put_back() {
    let relay = TestDaemon::start().await;
    // usage.json's place is taken by a directory: the save fails.
    std::fs::create_dir(relay.state_path().join("usage.json")).expect("mkdir");
    let (kind, message) = relay
        .error(Request::UsersDisable {
            name: "alice".to_owned(),
        })
        .await;
    assert_eq!(kind, ErrorKind::Failed);
    assert!(
        message.starts_with("not saved, nothing changed: "),
        "{message}"
    );
    let Reply::Users { users } = relay
        .ok(Request::UsersShow {
            name: "alice".to_owned(),
        })
        .await
    else {
        panic!("not users");
    };
    assert!(users[0].enabled);
}

#[tokio::test]
async fn a_list_change_that_cannot_be_saved_is_not_made() {
    let relay = TestDaemon::start().await;
    std::fs::create_dir(relay.state_path().join("lists.json")).expect("mkdir");
    let (kind, message) = relay.error(block_add("192.0.2.1", None)).await;
    assert_eq!(kind, ErrorKind::Failed);
    assert!(
        message.starts_with("not saved, nothing changed: "),
        "{message}"
    );
    assert!(operator_blocks(&relay).await.is_empty());
}

#[tokio::test]
async fn stats_answers_with_the_snapshot() {
    let relay = TestDaemon::start().await;
    let Reply::Stats(stats) = relay.ok(Request::Stats).await else {
        panic!("not stats");
    };
    assert_eq!(stats.users.len(), 2);
    assert!(
        stats.enforcement.starts_with("userspace"),
        "{}",
        stats.enforcement
    );
}
