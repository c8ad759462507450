//! The messages between connection tasks and the engine's driver. Connections only move
//! frames: what they read goes to the driver as an [`Event`], what they are to write comes back
//! as [`ToConn`] on their own channels, held by the driver in a [`LinkHandle`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use routing::LinkId;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::engine::{CallOutcome, Input, NodeCall, Outbound, Peer};

pub enum Event {
    /// A connection is up; `handle` is how the driver writes to it.
    Up {
        link: LinkId,
        peer: Peer,
        handle: LinkHandle,
    },
    /// Anything else for the engine (frames, downs, CSMS socket news).
    Input(Input),
    /// The admin API asks for the routing state.
    Status(oneshot::Sender<Value>),
    /// Some part of the node originates a CALL and awaits its outcome.
    Call {
        call: NodeCall,
        reply: oneshot::Sender<CallOutcome>,
    },
}

pub type EventTx = mpsc::Sender<Event>;

/// What a connection is told to do.
#[derive(Debug)]
pub enum ToConn {
    Frame(Outbound),
    /// Close with a policy close (1008) and this reason.
    Close(String),
}

/// How the driver reaches one connection.
#[derive(Clone)]
pub struct LinkHandle {
    /// Text frames and closes, in order.
    pub control: mpsc::Sender<ToConn>,
    /// Binary (bulk) frames; overlay links only. A separate, small queue, so that bulk frames
    /// can never hold up control frames or fill memory.
    pub bulk: Option<mpsc::Sender<Outbound>>,
    /// Wakes the connection to close at once (a slow consumer, a replaced charger).
    pub kill: Arc<Notify>,
    /// A hub's CSMS socket: the charger is gone; a dial in progress gives up unless something
    /// is queued for the CSMS. (Once open, the socket is closed by [`ToConn::Close`].)
    pub stop: Arc<Notify>,
    /// A charger's frames read but not yet handled by the engine (see [`Credit`]).
    pub credit: Option<Arc<Credit>>,
}

/// Bounds how many of one charger's frames may wait for the engine. The engine answers a burst
/// of frames in one go, and each frame can cost an answer on the charger's (bounded) queue: a
/// charger that fires CALLs without waiting would otherwise fill its queue with answers and be
/// taken for a slow reader. With at most [`Credit::LIMIT`] frames on their way, its queue always
/// has room for their answers. One atomic add per frame on each side; no lock.
#[derive(Debug, Default)]
pub struct Credit {
    in_flight: AtomicUsize,
    /// Wakes the connection when the engine has caught up.
    pub freed: Notify,
}

impl Credit {
    pub const LIMIT: usize = 16;

    /// The connection handed a frame to the engine.
    pub fn take(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// The engine took a frame of this connection.
    pub fn give(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == Self::LIMIT {
            self.freed.notify_one();
        }
    }

    /// The connection may read another frame.
    pub fn available(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < Self::LIMIT
    }
}
