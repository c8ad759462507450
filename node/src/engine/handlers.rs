//! Local handlers: the registry of what answers frames addressed to this node (`dest` = its own
//! id) and, where the node itself serves as the CSMS (a standalone local controller), frames
//! addressed to `"CSMS"`.
//!
//! A handler may need I/O (the store, a Modbus device), so the engine never runs one: it hands
//! the request to the driver as [`super::io::Action::Dispatch`], the driver awaits the handler,
//! and its [`LocalReply`] comes back as an input. The engine then answers the originator like
//! any node-originated frame. An action nobody registered is answered `NotImplemented` when the
//! version does not know it and `NotSupported` when it does (§3.1).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wire::{ErrorCode, OcppVersion};

/// A CALL or SEND for a local handler.
#[derive(Debug, Clone)]
pub struct LocalRequest {
    /// `path[0]`: who sent it (a charger id, a node id, or `"CSMS"`).
    pub from: String,
    /// The sender's OCPP version, where the node knows it (a charger's route carries it).
    pub version: Option<OcppVersion>,
    pub action: String,
    /// The payload exactly as received.
    pub payload: String,
    /// False for a SEND: whatever the handler answers is not sent.
    pub wants_reply: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalReply {
    /// A CALLRESULT with this JSON payload.
    Result(String),
    /// A CALLERROR; the code is spelled for the sender's version.
    Error {
        code: ErrorCode,
        description: String,
    },
}

pub type Reply = Pin<Box<dyn Future<Output = LocalReply> + Send>>;

/// Something that answers requests addressed to this node.
pub trait LocalHandler: Send + Sync {
    /// A name for logs.
    fn name(&self) -> &'static str;
    fn handle(&self, request: LocalRequest) -> Reply;
}

/// Whose frames a handler answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `dest` is this node's own id.
    Node,
    /// `dest` is `"CSMS"` and this node serves as the CSMS itself.
    Csms,
}

#[derive(Default, Clone)]
pub struct Registry {
    by_action: HashMap<Scope, HashMap<String, Arc<dyn LocalHandler>>>,
    /// Answers every action of its scope that has no handler of its own.
    fallback: HashMap<Scope, Arc<dyn LocalHandler>>,
}

impl Registry {
    pub fn register(&mut self, scope: Scope, action: &str, handler: Arc<dyn LocalHandler>) {
        self.by_action
            .entry(scope)
            .or_default()
            .insert(action.to_owned(), handler);
    }

    pub fn register_fallback(&mut self, scope: Scope, handler: Arc<dyn LocalHandler>) {
        self.fallback.insert(scope, handler);
    }

    pub fn find(&self, scope: Scope, action: &str) -> Option<Arc<dyn LocalHandler>> {
        self.by_action
            .get(&scope)
            .and_then(|m| m.get(action))
            .or_else(|| self.fallback.get(&scope))
            .cloned()
    }

    pub fn serves(&self, scope: Scope) -> bool {
        self.fallback.contains_key(&scope) || self.by_action.contains_key(&scope)
    }

    /// Every (scope, action) with a handler of its own, for the status page and the README.
    pub fn actions(&self) -> Vec<(Scope, String)> {
        let mut v: Vec<_> = self
            .by_action
            .iter()
            .flat_map(|(s, m)| m.keys().map(move |a| (*s, a.clone())))
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1));
        v
    }
}
