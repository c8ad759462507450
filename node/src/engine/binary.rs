//! Binary overlay frames (ARCHITECTURE §3.3), routed by dest and path exactly like text ones.
//!
//! The forwarder decides on an overlay frame, so a binary frame is shown to it as one whose
//! body is its meta JSON; once decided, the frame is written again in binary with the new dest
//! and path around the same meta and body bytes. Binary frames travel between nodes only: one
//! routed toward a plain charger is refused.

use std::hash::{Hash as _, Hasher as _};
use std::time::Instant;

use routing::{Decision, Ingress, LinkId};
use wire::binary::{self, BinaryFrame};
use wire::text::{Body, ErrorBody, Frame, OverlayFrame};
use wire::{Limits, MessageType, Route};

use super::{Deferred, Engine, Link, Outbound};

/// Room for the dest and path a frame gains on the way, on top of the frame limit.
const HEADER_ROOM: usize = 64 * 1024;

impl Engine {
    pub(super) fn on_node_binary(&mut self, link: LinkId, bytes: &[u8], now: Instant) {
        let Some(o) = self.core.node_link(link) else {
            return;
        };
        let (allow, peer) = (o.allow.clone(), o.peer.clone());
        let limits = binary_limits(&self.core.settings.limits);
        let frame = match binary::decode(bytes, &limits) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%link, peer = %peer, error = %e, "malformed binary frame dropped");
                self.core.metrics.frames_dropped.malformed.inc();
                return;
            }
        };
        let view = overlay_view(&frame);
        let core = &mut self.core;
        let ingress = Ingress::Node {
            link,
            allow: &allow,
        };
        let received = core.forwarder.receive(&mut core.table, ingress, view, now);
        match received.decision {
            Decision::Forward {
                link: to,
                frame: decided,
            } => {
                if !matches!(core.links.get(&to), Some(Link::Node(_))) {
                    core.metrics.frames_dropped.unreachable.inc();
                    if frame.message_type == MessageType::Call {
                        let error = core
                            .forwarder
                            .error_to_originator(&decided, "binary frames do not go to chargers");
                        core.deferred.push(Deferred::Local(error.to_text()));
                    }
                    return;
                }
                core.metrics.frames_forwarded.inc();
                if let Some(out) = rewrite(&frame, decided.dest, decided.path, &limits) {
                    core.send_overlay(to, out, now);
                }
            }
            Decision::Broadcast {
                except,
                frame: decided,
            } => {
                let Some(out) = rewrite(&frame, decided.dest, decided.path, &limits) else {
                    return;
                };
                let targets: Vec<LinkId> = core
                    .links
                    .iter()
                    .filter(|(l, k)| Some(**l) != except && matches!(k, Link::Node(_)))
                    .map(|(l, _)| *l)
                    .collect();
                for target in targets {
                    core.send_overlay(target, out.clone(), now);
                }
            }
            Decision::Deliver(decided) => {
                // Nothing on this node takes binary frames yet (file transfer will).
                core.metrics.frames_dropped.no_handler.inc();
                if frame.message_type == MessageType::Call {
                    let error = core
                        .forwarder
                        .error_to_originator(&decided, "no binary handler on this node");
                    core.deferred.push(Deferred::Local(error.to_text()));
                }
            }
            Decision::Reply {
                link,
                frame,
                reason,
            } => {
                core.metrics.frames_dropped.refusal(reason).inc();
                if let Some(link) = link {
                    core.send_overlay(link, Outbound::Text(frame.to_text()), now);
                }
            }
            Decision::Drop(reason) => {
                core.metrics.frames_dropped.refusal(reason).inc();
                if reason == routing::Refusal::Loop {
                    core.security_event("loop", "a binary frame came back to this node; dropped");
                }
            }
            Decision::Reject(routing::Rejection::PathNotAllowed { originator }) => {
                core.metrics.frames_dropped.path_not_allowed.inc();
                core.security_event(
                    "path_not_allowed",
                    format_args!("node {peer:?} sent a binary frame for {originator:?}, outside its allow-list; dropped"),
                );
            }
        }
    }

    /// A binary frame this node forwarded found no room toward its next hop.
    pub(super) fn bulk_dropped(&mut self, link: LinkId, bytes: &[u8]) {
        let core = &mut self.core;
        core.metrics.frames_dropped.queue_full.inc();
        let limits = binary_limits(&core.settings.limits);
        // The node encoded these bytes itself, so they decode; a failure only skips the error.
        let Ok(frame) = binary::decode(bytes, &limits) else {
            return;
        };
        tracing::debug!(%link, id = %frame.id, "bulk queue full; binary frame dropped");
        if frame.message_type == MessageType::Call {
            let error = core.forwarder.error_to_originator(
                &overlay_view(&frame),
                "the link toward the destination is congested; retry the chunk",
            );
            core.deferred.push(Deferred::Local(error.to_text()));
        }
    }
}

pub(super) fn binary_limits(limits: &Limits) -> Limits {
    Limits {
        max_frame_bytes: limits.max_frame_bytes + HEADER_ROOM,
        ..*limits
    }
}

/// The frame as the forwarder sees it: its meta in place of the payload.
fn overlay_view<'a>(b: &BinaryFrame<'a>) -> OverlayFrame<'a> {
    let action = b.action.clone().unwrap_or_default();
    let body = match b.message_type {
        MessageType::Call => Body::Call {
            action,
            payload: b.meta,
        },
        MessageType::Send => Body::Send {
            action,
            payload: b.meta,
        },
        MessageType::CallResult => Body::CallResult { payload: b.meta },
        MessageType::CallError | MessageType::CallResultError => {
            let error = ErrorBody {
                code: "".into(),
                description: "".into(),
                details: b.meta,
            };
            if b.message_type == MessageType::CallError {
                Body::CallError(error)
            } else {
                Body::CallResultError(error)
            }
        }
    };
    OverlayFrame {
        dest: b.dest.clone(),
        path: b.path.clone(),
        frame: Frame {
            id: b.id.clone(),
            body,
        },
    }
}

/// The frame again, with the dest and path the forwarder gave it.
fn rewrite(
    b: &BinaryFrame<'_>,
    dest: Route<'_>,
    path: Route<'_>,
    limits: &Limits,
) -> Option<Outbound> {
    let stream = stream_of(path.first(), dest.last());
    let frame = BinaryFrame {
        message_type: b.message_type,
        dest,
        path,
        id: b.id.clone(),
        action: b.action.clone(),
        meta: b.meta,
        body: b.body,
    };
    match frame.encode(limits) {
        Ok(bytes) => Some(Outbound::Binary {
            bytes: bytes.into(),
            stream,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "binary frame cannot be forwarded");
            None
        }
    }
}

/// One transfer's frames share a stream: same originator, same final destination.
pub(crate) fn stream_of(origin: &str, dest: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    origin.hash(&mut h);
    dest.hash(&mut h);
    h.finish()
}
