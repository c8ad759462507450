//! The engine's async driver: the only place where the sans-IO engine meets tokio.
//!
//! One task owns the engine. It turns what connections send ([`Event`]), store commits, local
//! handler replies and timers into engine inputs, and carries out the engine's actions: writes
//! on a link's channels, CSMS sockets to spawn, store jobs, handler calls. It decides nothing.
//!
//! Ordering promises kept here: store jobs of one lane are queued to the store in the order the
//! engine asked (the store thread commits and reports them in that order), and local handler
//! requests of one lane run one at a time, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use routing::LinkId;
use tokio::sync::{mpsc, oneshot};

use crate::conn;
use crate::core::bus::{Event, LinkHandle, ToConn};
use crate::core::node::Node;
use crate::engine::{
    Action, CallOutcome, Engine, IfFull, Input, LocalHandler, LocalReply, LocalRequest, Outbound,
    Persisted, Token,
};

/// Events handled before the engine is told it is idle, even if more are queued: bounds how
/// long a pending announcement can wait behind a burst.
const BURST: usize = 256;
/// Depth of a hub's CSMS socket's frame queue; a CSMS that does not read gets frames returned.
const CSMS_QUEUE: usize = 256;

type HandlerJob = (Token, Arc<dyn LocalHandler>, LocalRequest);

pub struct Driver {
    engine: Engine,
    node: Arc<Node>,
    links: HashMap<LinkId, LinkHandle>,
    persisted_tx: mpsc::UnboundedSender<(Token, Persisted)>,
    persisted: mpsc::UnboundedReceiver<(Token, Persisted)>,
    replies_tx: mpsc::UnboundedSender<(String, Token, LocalReply)>,
    replies: mpsc::UnboundedReceiver<(String, Token, LocalReply)>,
    /// Handler lanes with a request running, and what waits behind it.
    lanes: HashMap<String, VecDeque<HandlerJob>>,
    calls: HashMap<u64, oneshot::Sender<CallOutcome>>,
    next_call: u64,
}

impl Driver {
    pub fn new(engine: Engine, node: Arc<Node>) -> Driver {
        let (persisted_tx, persisted) = mpsc::unbounded_channel();
        let (replies_tx, replies) = mpsc::unbounded_channel();
        Driver {
            engine,
            node,
            links: HashMap::new(),
            persisted_tx,
            persisted,
            replies_tx,
            replies,
            lanes: HashMap::new(),
            calls: HashMap::new(),
            next_call: 1,
        }
    }

    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        loop {
            let deadline = self.engine.poll_timeout();
            tokio::select! {
                biased;
                Some((token, result)) = self.persisted.recv() => {
                    self.engine.handle(Input::Persisted { token, result }, Instant::now());
                }
                Some((lane, token, reply)) = self.replies.recv() => {
                    self.engine.handle(Input::LocalReply { token, reply }, Instant::now());
                    self.next_in_lane(lane);
                }
                event = events.recv() => match event {
                    Some(event) => self.event(event),
                    None => return,
                },
                _ = sleep_until(deadline) => self.engine.tick(Instant::now()),
            }
            self.act().await;
            // Take what else is queued now, then tell the engine the burst is over.
            for _ in 0..BURST {
                match events.try_recv() {
                    Ok(event) => {
                        self.event(event);
                        self.act().await;
                    }
                    Err(_) => break,
                }
            }
            if events.is_empty() {
                self.engine.idle(Instant::now());
                self.act().await;
            }
        }
    }

    fn event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Up { link, peer, handle } => {
                self.links.insert(link, handle);
                self.engine.handle(Input::Up { link, peer }, now);
            }
            Event::Input(input) => {
                let down = match &input {
                    Input::Down { link } => Some(*link),
                    Input::Text { link, .. } => {
                        if let Some(c) = self.links.get(link).and_then(|h| h.credit.as_ref()) {
                            c.give();
                        }
                        None
                    }
                    _ => None,
                };
                self.engine.handle(input, now);
                if let Some(link) = down {
                    self.links.remove(&link);
                }
            }
            Event::Status(reply) => {
                let _ = reply.send(self.engine.status(now));
            }
            Event::Call { call, reply } => {
                let token = Token(self.next_call);
                self.next_call += 1;
                self.calls.insert(token.0, reply);
                self.engine.handle(Input::Call { token, call }, now);
            }
        }
    }

    /// Carries out every action the engine has queued.
    async fn act(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Send { link, out, if_full } => self.send(link, out, if_full).await,
                Action::Close { link, reason } => {
                    if let Some(h) = self.links.get(&link)
                        && h.control.try_send(ToConn::Close(reason)).is_err()
                    {
                        h.kill.notify_one();
                    }
                }
                Action::OpenCsms {
                    link,
                    charger,
                    version,
                } => {
                    let (handle, channels) = conn::link::channels(CSMS_QUEUE, false, false);
                    self.links.insert(link, handle);
                    tokio::spawn(conn::csms::run(
                        self.node.clone(),
                        link,
                        charger,
                        version,
                        channels,
                    ));
                }
                Action::CloseCsms { link } => {
                    if let Some(h) = self.links.remove(&link) {
                        let _ = h
                            .control
                            .try_send(ToConn::Close("the charger is gone".into()));
                        h.stop.notify_one();
                    }
                }
                Action::Persist {
                    token,
                    lane: _,
                    job,
                } => {
                    // One queue to one store thread: jobs finish in the order they are queued,
                    // which keeps every lane's order without a queue per lane.
                    let tx = self.persisted_tx.clone();
                    self.node
                        .store
                        .submit(job, move |result| {
                            let _ = tx.send((token, result.map_err(|e| e.to_string())));
                        })
                        .await;
                }
                Action::Dispatch {
                    token,
                    lane,
                    handler,
                    request,
                } => match self.lanes.get_mut(&lane) {
                    Some(waiting) => waiting.push_back((token, handler, request)),
                    None => {
                        self.lanes.insert(lane.clone(), VecDeque::new());
                        self.start(lane, (token, handler, request));
                    }
                },
                Action::CallDone { token, outcome } => {
                    if let Some(reply) = self.calls.remove(&token.0) {
                        let _ = reply.send(outcome);
                    }
                }
                Action::SecurityEvent { kind, detail } => self.node.security_event(kind, detail),
            }
        }
    }

    async fn send(&mut self, link: LinkId, out: Outbound, if_full: IfFull) {
        let Some(h) = self.links.get(&link) else {
            return;
        };
        match out {
            // Never waits: a receiver that reads bulk slowly must not hold up the engine.
            Outbound::Binary { .. } => {
                if let Some(bulk) = &h.bulk
                    && let Err(mpsc::error::TrySendError::Full(Outbound::Binary { bytes, .. })) =
                        bulk.try_send(out)
                {
                    self.engine
                        .handle(Input::BulkDropped { link, bytes }, Instant::now());
                }
            }
            Outbound::Text(_) => match h.control.try_send(ToConn::Frame(out)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(frame)) => match if_full {
                    IfFull::Wait => {
                        let _ = h.control.send(frame).await;
                    }
                    IfFull::Disconnect => {
                        tracing::warn!(%link, "the peer does not read its frames; closing it");
                        h.kill.notify_one();
                    }
                    IfFull::Return => {
                        if let ToConn::Frame(Outbound::Text(text)) = frame {
                            self.engine
                                .handle(Input::Returned { link, text }, Instant::now());
                        }
                    }
                },
            },
        }
    }

    fn start(&self, lane: String, (token, handler, request): HandlerJob) {
        let tx = self.replies_tx.clone();
        tokio::spawn(async move {
            let reply = handler.handle(request).await;
            let _ = tx.send((lane, token, reply));
        });
    }

    fn next_in_lane(&mut self, lane: String) {
        match self.lanes.get_mut(&lane).and_then(VecDeque::pop_front) {
            Some(job) => self.start(lane, job),
            None => {
                self.lanes.remove(&lane);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
