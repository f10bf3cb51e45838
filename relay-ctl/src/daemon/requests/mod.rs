//! Admin requests: one handler per request, grouped by what they act on (operator lists, bans,
//! users); [`Daemon::handle_request`] only dispatches. Each group's failures are a typed error
//! that knows which [`ErrorKind`] the operator is answered with.

mod bans;
mod lists;
mod users;

#[cfg(test)]
mod tests;

use crate::{
    admission::PrefixList,
    control::api::{ErrorKind, Reply, Request, Response},
};

use super::Daemon;

pub use self::{bans::BanError, lists::ListError, users::UserError};

/// A failed admin request, as the operator is told about it.
trait RequestFailure: std::error::Error {
    /// How the failure is classified in the reply.
    fn kind(&self) -> ErrorKind;
}

/// The reply to a request that cannot fail.
fn done(data: Reply) -> Response {
    Response::Ok { data }
}

/// The reply to a request that can fail: the error's message, classified by its kind.
fn answer<E: RequestFailure>(result: Result<Reply, E>) -> Response {
    match result {
        Ok(data) => Response::Ok { data },
        Err(e) => Response::Error {
            kind: e.kind(),
            message: e.to_string(),
        },
    }
}

impl Daemon {
    /// Carries out one admin request.
    pub(super) async fn handle_request(&self, request: Request) -> Response {
        match request {
            Request::BlockAdd {
                cidr,
                ttl_secs,
                reason,
            } => answer(self.block_add(&cidr, ttl_secs, reason).await),
            Request::BlockRm { cidr } => answer(self.block_rm(&cidr).await),
            Request::BlockImport { entries, source } => {
                answer(self.block_import(&entries, &source).await)
            }
            Request::BlockList => done(self.prefix_list(PrefixList::Block).await),
            Request::AllowAdd { cidr } => answer(self.allow_add(&cidr).await),
            Request::AllowRm { cidr } => answer(self.allow_rm(&cidr).await),
            Request::AllowList => done(self.prefix_list(PrefixList::Allow).await),
            Request::BansList => done(self.bans_list().await),
            Request::BansRm { addr } => answer(self.bans_rm(&addr).await),
            Request::BansClear => answer(self.bans_clear().await),
            Request::UsersList => done(self.users_list()),
            Request::UsersShow { name } => answer(self.users_show(&name)),
            Request::UsersEnable { name } => answer(self.set_user_disabled(&name, false).await),
            Request::UsersDisable { name } => answer(self.set_user_disabled(&name, true).await),
            Request::Stats => done(Reply::Stats(Box::new(self.stats().await))),
        }
    }
}
