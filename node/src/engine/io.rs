//! What goes into the engine and what comes out of it: plain data, no channels, no clocks.
//!
//! The driver turns socket reads, store completions and timers into [`Input`]s, hands them to
//! [`super::Engine::handle`], and carries out the [`Action`]s it then takes from
//! [`super::Engine::poll_action`]. Nothing here knows about tokio, so the engine is tested by
//! feeding inputs and reading actions, without a socket.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use redb::WriteTransaction;
use routing::{AllowList, LinkId};
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};
use wire::OcppVersion;

use super::calls::{CallOutcome, NodeCall};
use super::handlers::{LocalHandler, LocalReply, LocalRequest};
use crate::core::store::StoreError;

/// Who is on the other end of a link, as authentication established it.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A plain OCPP-J charger on one of this node's listeners.
    Charger {
        id: String,
        version: OcppVersion,
        /// CALLs it may have waiting for an answer; more get CALLERROR "busy".
        max_pending: usize,
    },
    /// An overlay neighbour; `uplink` names the uplink when this node dialled it.
    Node {
        peer: String,
        allow: AllowList,
        uplink: Option<String>,
        remote: SocketAddr,
    },
}

/// The result of a store job, typed by the stage that asked for it.
pub type Persisted = Result<Box<dyn Any + Send>, String>;

/// A store write the engine asks for; it runs inside one group commit, off the engine.
pub type StoreJob =
    Box<dyn FnOnce(&WriteTransaction) -> Result<Box<dyn Any + Send>, StoreError> + Send>;

pub use super::token::Token;

pub enum Input {
    /// A connection finished its upgrade (or its dial) and may carry frames.
    Up { link: LinkId, peer: Peer },
    /// A charger or overlay connection ended.
    Down { link: LinkId },
    /// A text frame read from a link, shared with the read buffer (never copied).
    Text { link: LinkId, text: Utf8Bytes },
    /// A binary frame read from an overlay link.
    Binary { link: LinkId, bytes: Bytes },
    /// Hub: a charger's CSMS socket opened.
    CsmsOpen { link: LinkId },
    /// Hub: the CSMS refused the charger (HTTP status, or no acceptable subprotocol).
    CsmsRefused {
        link: LinkId,
        http_status: Option<u16>,
        reason: String,
    },
    /// Hub: a charger's CSMS socket closed; its connector redials.
    CsmsClosed { link: LinkId },
    /// A frame sent with [`IfFull::Return`] found its link's queue full.
    Returned { link: LinkId, text: String },
    /// A binary frame found its link's bulk queue full and was not sent. Bulk frames are best
    /// effort at every hop, so that one slow receiver never stalls the engine and the control
    /// frames of every other peer; the originator of a CALL gets a CALLERROR and its transfer
    /// (request and answer per chunk, ARCHITECTURE §3.3) retries.
    BulkDropped { link: LinkId, bytes: Bytes },
    /// A store job finished (its commit is durable, or it failed).
    Persisted { token: Token, result: Persisted },
    /// A local handler answered.
    LocalReply { token: Token, reply: LocalReply },
    /// Some part of the node originates a CALL; its outcome comes back as
    /// [`Action::CallDone`] with the same token.
    Call { token: Token, call: NodeCall },
}

/// A frame to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Text(String),
    /// A binary frame (overlay links only); `stream` groups the chunks of one transfer, so the
    /// link's writer can share the wire between transfers.
    Binary {
        bytes: Bytes,
        stream: u64,
    },
}

/// What the driver does when a link's queue cannot take a frame now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfFull {
    /// Wait for room: overlay links carry every charger, they get backpressure.
    Wait,
    /// Close the link: a charger that does not read its frames.
    Disconnect,
    /// Hand the frame back as [`Input::Returned`]: a CSMS socket that cannot keep up, whose
    /// charger gets a CALLERROR so that it keeps and retries its message.
    Return,
}

pub enum Action {
    Send {
        link: LinkId,
        out: Outbound,
        if_full: IfFull,
    },
    /// Close a link (policy close): the charger was replaced, refused or moved.
    Close { link: LinkId, reason: String },
    /// Hub: open the charger's CSMS socket on `link`.
    OpenCsms {
        link: LinkId,
        charger: String,
        version: OcppVersion,
    },
    /// Hub: close the CSMS socket on `link` (what is queued for it is still written first).
    CloseCsms { link: LinkId },
    /// Run a store job. Jobs of one `lane` finish in the order they were asked for.
    Persist {
        token: Token,
        lane: String,
        job: StoreJob,
    },
    /// Run a local handler. Requests of one `lane` are handled one at a time, in order.
    Dispatch {
        token: Token,
        lane: String,
        handler: Arc<dyn LocalHandler>,
        request: LocalRequest,
    },
    /// The outcome of an [`Input::Call`].
    CallDone { token: Token, outcome: CallOutcome },
    /// Record a security event (log, metric, audit chain).
    SecurityEvent { kind: &'static str, detail: String },
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Send { link, out, if_full } => f
                .debug_struct("Send")
                .field("link", link)
                .field("out", out)
                .field("if_full", if_full)
                .finish(),
            Action::Close { link, reason } => write!(f, "Close({link}, {reason:?})"),
            Action::OpenCsms {
                link,
                charger,
                version,
            } => write!(f, "OpenCsms({link}, {charger:?}, {version})"),
            Action::CloseCsms { link } => write!(f, "CloseCsms({link})"),
            Action::Persist { token, lane, .. } => write!(f, "Persist({token:?}, {lane:?})"),
            Action::Dispatch {
                token,
                lane,
                request,
                ..
            } => write!(f, "Dispatch({token:?}, {lane:?}, {:?})", request.action),
            Action::CallDone { token, outcome } => write!(f, "CallDone({token:?}, {outcome:?})"),
            Action::SecurityEvent { kind, detail } => {
                write!(f, "SecurityEvent({kind}, {detail:?})")
            }
        }
    }
}
