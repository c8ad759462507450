//! Request correlation at the node that translates for a plain peer (ARCHITECTURE §3.2, §6.1).
//!
//! Keys are `(source node id, message id)`, never the id alone: every charger numbers its
//! CALLs from its own counter, so ids collide across chargers all the time. Intermediate nodes
//! forward by `dest` and keep nothing; only the translating node holds entries, so only it
//! answers a timeout.
//!
//! Use one [`Correlation`] per direction (plain → overlay and overlay → plain): the two key
//! spaces are different namespaces that must not shadow each other.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use wire::text::{Body, Frame, OverlayFrame};
use wire::{MessageType, Route};

use crate::CSMS;

/// `(source node id, message id)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub source: String,
    pub id: String,
}

impl Key {
    pub fn new(source: impl Into<String>, id: impl Into<String>) -> Self {
        Key {
            source: source.into(),
            id: id.into(),
        }
    }
}

/// What is remembered about an outstanding CALL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending<T> {
    /// The id the requester used, restored on the reply.
    pub original_id: String,
    /// Who the reply goes to: the plain peer (plain → overlay) or the request's `path[0]`
    /// (overlay → plain).
    pub reply_to: String,
    /// When the caller answers with a timeout CALLERROR.
    pub deadline: Instant,
    /// Whatever the caller needs to finish the exchange (action, version, link, queue slot…).
    pub data: T,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorrelationError {
    #[error("a CALL with id {id:?} from {node:?} is already outstanding")]
    Duplicate { node: String, id: String },
    #[error("correlation table full ({max} outstanding CALLs)")]
    Full { max: usize },
}

/// Outstanding CALLs with deadlines. Bounded: beyond `capacity`, inserts fail, so a peer that
/// never answers cannot grow the table without limit.
#[derive(Debug, Clone)]
pub struct Correlation<T> {
    capacity: usize,
    entries: HashMap<Key, Pending<T>>,
    // Deadline order for `expire`, so a sweep touches only what is due.
    by_deadline: BTreeSet<(Instant, Key)>,
}

impl<T> Correlation<T> {
    pub fn new(capacity: usize) -> Self {
        Correlation {
            capacity,
            entries: HashMap::new(),
            by_deadline: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Remembers a CALL. A duplicate key is refused (the caller answers the newcomer with a
    /// CALLERROR rather than silently orphaning the first requester).
    pub fn insert(&mut self, key: Key, pending: Pending<T>) -> Result<(), CorrelationError> {
        if self.entries.contains_key(&key) {
            return Err(CorrelationError::Duplicate {
                node: key.source,
                id: key.id,
            });
        }
        if self.entries.len() >= self.capacity {
            return Err(CorrelationError::Full { max: self.capacity });
        }
        self.by_deadline.insert((pending.deadline, key.clone()));
        self.entries.insert(key, pending);
        Ok(())
    }

    pub fn get(&self, source: &str, id: &str) -> Option<&Pending<T>> {
        self.entries.get(&Key::new(source, id))
    }

    /// Removes and returns the entry: the reply arrived.
    pub fn take(&mut self, source: &str, id: &str) -> Option<Pending<T>> {
        let key = Key::new(source, id);
        let pending = self.entries.remove(&key)?;
        self.by_deadline.remove(&(pending.deadline, key));
        Some(pending)
    }

    /// Removes and returns every entry whose deadline is at or before `now`, earliest first.
    pub fn expire(&mut self, now: Instant) -> Vec<(Key, Pending<T>)> {
        let mut out = Vec::new();
        while let Some((deadline, _)) = self.by_deadline.first() {
            if *deadline > now {
                break;
            }
            let Some((_, key)) = self.by_deadline.pop_first() else {
                break;
            };
            if let Some(pending) = self.entries.remove(&key) {
                out.push((key, pending));
            }
        }
        out
    }

    /// Removes every entry of `source` (its connection closed), so the caller can answer them.
    pub fn remove_source(&mut self, source: &str) -> Vec<(Key, Pending<T>)> {
        let keys: Vec<Key> = self
            .entries
            .keys()
            .filter(|k| k.source == source)
            .cloned()
            .collect();
        let mut out: Vec<(Key, Pending<T>)> = keys
            .into_iter()
            .filter_map(|key| {
                let pending = self.entries.remove(&key)?;
                self.by_deadline.remove(&(pending.deadline, key.clone()));
                Some((key, pending))
            })
            .collect();
        out.sort_by(|a, b| a.1.deadline.cmp(&b.1.deadline).then(a.0.cmp(&b.0)));
        out
    }

    /// The earliest deadline, so the caller can arm one timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(d, _)| *d)
    }
}

/// Why a frame could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("expected a {expected}, got message type {got}")]
    WrongType { expected: &'static str, got: u8 },
    #[error("a reply must be addressed to one id, not a source route")]
    RoutedDest,
    /// A reply nobody waits for (late after a timeout, or forged): drop it.
    #[error("no outstanding CALL {id:?} for {node:?}")]
    Unknown { node: String, id: String },
    #[error(transparent)]
    Correlation(#[from] CorrelationError),
}

fn wrong(expected: &'static str, frame: &Frame<'_>) -> TranslateError {
    TranslateError::WrongType {
        expected,
        got: frame.message_type().number(),
    }
}

fn is_reply(frame: &Frame<'_>) -> bool {
    matches!(
        frame.body,
        Body::CallResult { .. } | Body::CallError(_) | Body::CallResultError(_)
    )
}

/// Edge, plain → overlay (§3.2, §6.1): CALL `[2,i,…]` from charger `peer` becomes
/// `[2,"CSMS",peer,upstream_id,…]` and `(peer, upstream_id) → i` is remembered.
///
/// `peer` must be the AUTHENTICATED identity, never a value from the frame. `upstream_id` is a
/// fresh UUID v4 generated by the caller (this crate stays deterministic). The payload bytes
/// are moved across untouched.
pub fn plain_call_to_overlay<'a, T>(
    corr: &mut Correlation<T>,
    peer: &str,
    frame: Frame<'a>,
    upstream_id: String,
    deadline: Instant,
    data: T,
) -> Result<OverlayFrame<'a>, TranslateError> {
    if frame.message_type() != MessageType::Call {
        return Err(wrong("CALL", &frame));
    }
    corr.insert(
        Key::new(peer, upstream_id.clone()),
        Pending {
            original_id: frame.id.into_owned(),
            reply_to: peer.to_owned(),
            deadline,
            data,
        },
    )?;
    Ok(OverlayFrame {
        dest: Route::single(CSMS),
        path: Route::single(peer.to_owned()),
        frame: Frame {
            id: Cow::Owned(upstream_id),
            body: frame.body,
        },
    })
}

/// Edge, overlay → plain: the reply addressed to charger `dest` under the upstream id goes to
/// the charger under its own id again. Returns the plain frame and the remembered entry (its
/// `reply_to` is the charger).
pub fn overlay_reply_to_plain<'a, T>(
    corr: &mut Correlation<T>,
    frame: OverlayFrame<'a>,
) -> Result<(Frame<'a>, Pending<T>), TranslateError> {
    if !is_reply(&frame.frame) {
        return Err(wrong(
            "CALLRESULT, CALLERROR or CALLRESULTERROR",
            &frame.frame,
        ));
    }
    if frame.dest.len() != 1 {
        return Err(TranslateError::RoutedDest);
    }
    let peer = frame.dest.first();
    let pending = corr
        .take(peer, &frame.frame.id)
        .ok_or_else(|| TranslateError::Unknown {
            node: peer.to_owned(),
            id: frame.frame.id.clone().into_owned(),
        })?;
    let plain = Frame {
        id: Cow::Owned(pending.original_id.clone()),
        body: frame.frame.body,
    };
    Ok((plain, pending))
}

/// Overlay → plain CALL (e.g. a CSMS CALL reaching the charger's edge): strips dest/path, keeps
/// the id (§6.1: CSMS-originated CALLs keep the CSMS's id down to the charger) and remembers
/// `(dest, id) → path[0]` so the charger's answer can be addressed.
pub fn overlay_call_to_plain<'a, T>(
    corr: &mut Correlation<T>,
    frame: OverlayFrame<'a>,
    deadline: Instant,
    data: T,
) -> Result<Frame<'a>, TranslateError> {
    if frame.frame.message_type() != MessageType::Call {
        return Err(wrong("CALL", &frame.frame));
    }
    if frame.dest.len() != 1 {
        return Err(TranslateError::RoutedDest);
    }
    corr.insert(
        Key::new(frame.dest.first(), frame.frame.id.clone().into_owned()),
        Pending {
            original_id: frame.frame.id.clone().into_owned(),
            reply_to: frame.path.first().to_owned(),
            deadline,
            data,
        },
    )?;
    Ok(frame.frame)
}

/// Plain → overlay reply: charger `peer` answers a CALL that came through the overlay. The
/// reply is addressed to the request's `path[0]`, with `path = [peer]`.
pub fn plain_reply_to_overlay<'a, T>(
    corr: &mut Correlation<T>,
    peer: &str,
    frame: Frame<'a>,
) -> Result<(OverlayFrame<'a>, Pending<T>), TranslateError> {
    if !is_reply(&frame) {
        return Err(wrong("CALLRESULT, CALLERROR or CALLRESULTERROR", &frame));
    }
    let pending = corr
        .take(peer, &frame.id)
        .ok_or_else(|| TranslateError::Unknown {
            node: peer.to_owned(),
            id: frame.id.clone().into_owned(),
        })?;
    let overlay = OverlayFrame {
        dest: Route::single(pending.reply_to.clone()),
        path: Route::single(peer.to_owned()),
        frame: Frame {
            id: Cow::Owned(pending.original_id.clone()),
            body: frame.body,
        },
    };
    Ok((overlay, pending))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wire::Limits;
    use wire::text::{decode_overlay, decode_plain};

    fn plain(text: &str) -> Frame<'_> {
        decode_plain(text, &Limits::default()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn overlay(text: &str) -> OverlayFrame<'_> {
        decode_overlay(text, &Limits::default()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn pending(id: &str, deadline: Instant) -> Pending<u8> {
        Pending {
            original_id: id.to_owned(),
            reply_to: "x".to_owned(),
            deadline,
            data: 0,
        }
    }

    fn ok<E: std::fmt::Debug>(r: Result<(), E>) {
        if let Err(e) = r {
            panic!("{e:?}");
        }
    }

    #[test]
    fn keyed_by_source_and_id() {
        let t0 = Instant::now();
        let mut c = Correlation::new(10);
        // Every charger starts counting at 1: the same id from two chargers must not collide.
        ok(c.insert(Key::new("CP-1", "1"), pending("a", t0)));
        ok(c.insert(Key::new("CP-2", "1"), pending("b", t0)));
        assert_eq!(
            c.insert(Key::new("CP-1", "1"), pending("c", t0)),
            Err(CorrelationError::Duplicate {
                node: "CP-1".to_owned(),
                id: "1".to_owned()
            })
        );
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.get("CP-2", "1").map(|p| p.original_id.as_str()),
            Some("b")
        );
        assert_eq!(
            c.take("CP-1", "1").map(|p| p.original_id),
            Some("a".to_owned())
        );
        assert_eq!(c.take("CP-1", "1"), None);
        assert_eq!(c.len(), 1);
        assert!(!c.is_empty());
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let t0 = Instant::now();
        let mut c = Correlation::new(1);
        assert_eq!(c.capacity(), 1);
        ok(c.insert(Key::new("a", "1"), pending("1", t0)));
        assert_eq!(
            c.insert(Key::new("a", "2"), pending("2", t0)),
            Err(CorrelationError::Full { max: 1 })
        );
        assert!(c.take("a", "1").is_some());
        ok(c.insert(Key::new("a", "2"), pending("2", t0)));
    }

    #[test]
    fn expire_returns_only_what_is_due_earliest_first() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Correlation::new(10);
        ok(c.insert(Key::new("a", "late"), pending("late", t0 + s(30))));
        ok(c.insert(Key::new("a", "early"), pending("early", t0 + s(10))));
        ok(c.insert(Key::new("b", "mid"), pending("mid", t0 + s(20))));
        assert_eq!(c.next_deadline(), Some(t0 + s(10)));
        assert!(c.expire(t0).is_empty());
        let due: Vec<String> = c
            .expire(t0 + s(20))
            .into_iter()
            .map(|(k, _)| k.id)
            .collect();
        assert_eq!(due, ["early", "mid"]);
        assert_eq!(c.next_deadline(), Some(t0 + s(30)));
        // A taken entry never expires later.
        assert!(c.take("a", "late").is_some());
        assert!(c.expire(t0 + s(99)).is_empty());
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn remove_source_takes_one_peer() {
        let t0 = Instant::now();
        let mut c = Correlation::new(10);
        ok(c.insert(Key::new("a", "1"), pending("1", t0)));
        ok(c.insert(Key::new("a", "2"), pending("2", t0)));
        ok(c.insert(Key::new("b", "1"), pending("3", t0)));
        let gone = c.remove_source("a");
        assert_eq!(gone.len(), 2);
        assert_eq!(c.len(), 1);
        assert_eq!(c.expire(t0).len(), 1);
    }

    #[test]
    fn edge_call_round_trip_restores_the_chargers_id() {
        let t0 = Instant::now();
        let mut c: Correlation<&str> = Correlation::new(10);
        let upstream = "0f8fad5b-d9cb-469f-a165-70867728950e".to_owned();
        let call = plain(r#"[2,"17","BootNotification",{"reason":"PowerUp" }]"#);
        let out = plain_call_to_overlay(&mut c, "CP-1", call, upstream.clone(), t0, "boot");
        let out = out.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out.to_text(),
            format!(r#"[2,"CSMS","CP-1","{upstream}","BootNotification",{{"reason":"PowerUp" }}]"#)
        );
        // Same charger id, same upstream id twice: refused.
        let again = plain(r#"[2,"18","Heartbeat",{}]"#);
        assert!(matches!(
            plain_call_to_overlay(&mut c, "CP-1", again, upstream.clone(), t0, "hb"),
            Err(TranslateError::Correlation(
                CorrelationError::Duplicate { .. }
            ))
        ));

        let reply_text =
            format!(r#"[3,"CP-1",["CSMS","hub"],"{upstream}",{{"status":"Accepted"}}]"#);
        let (back, p) =
            overlay_reply_to_plain(&mut c, overlay(&reply_text)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.to_plain_string(), r#"[3,"17",{"status":"Accepted"}]"#);
        assert_eq!((p.data, p.reply_to.as_str()), ("boot", "CP-1"));
        // A second (late or forged) reply has nobody waiting.
        assert!(matches!(
            overlay_reply_to_plain(&mut c, overlay(&reply_text)),
            Err(TranslateError::Unknown { .. })
        ));
        // Errors come back the same way.
        let call = plain(r#"[2,"19","Authorize",{"idTag":"X"}]"#);
        assert!(plain_call_to_overlay(&mut c, "CP-1", call, "u2".into(), t0, "a").is_ok());
        let err = overlay(r#"[4,"CP-1","hub","u2","GenericError","unreachable",{}]"#);
        let (back, _) = overlay_reply_to_plain(&mut c, err).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            back.to_plain_string(),
            r#"[4,"19","GenericError","unreachable",{}]"#
        );
    }

    #[test]
    fn csms_call_down_to_a_charger_and_its_answer_back() {
        let t0 = Instant::now();
        let mut c: Correlation<()> = Correlation::new(10);
        let call = overlay(r#"[2,"CP-1",["CSMS","hub"],"csms-42","Reset",{"type":"Soft"}]"#);
        let down = overlay_call_to_plain(&mut c, call, t0, ()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            down.to_plain_string(),
            r#"[2,"csms-42","Reset",{"type":"Soft"}]"#
        );
        let answer = plain(r#"[3,"csms-42",{"status":"Accepted"}]"#);
        let (up, p) =
            plain_reply_to_overlay(&mut c, "CP-1", answer).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.reply_to, "CSMS");
        assert_eq!(
            up.to_text(),
            r#"[3,"CSMS","CP-1","csms-42",{"status":"Accepted"}]"#
        );
        // Another charger answering the same id is not the one we asked.
        let answer = plain(r#"[3,"csms-42",{}]"#);
        assert!(matches!(
            plain_reply_to_overlay(&mut c, "CP-2", answer),
            Err(TranslateError::Unknown { .. })
        ));
    }

    #[test]
    fn wrong_frame_kinds_are_refused() {
        let t0 = Instant::now();
        let mut c: Correlation<()> = Correlation::new(10);
        let r = plain_call_to_overlay(&mut c, "CP-1", plain(r#"[3,"1",{}]"#), "u".into(), t0, ());
        assert_eq!(
            r,
            Err(TranslateError::WrongType {
                expected: "CALL",
                got: 3
            })
        );
        let r = overlay_reply_to_plain(&mut c, overlay(r#"[2,"CP-1","hub","u","Reset",{}]"#));
        assert!(matches!(r, Err(TranslateError::WrongType { got: 2, .. })));
        let r = overlay_reply_to_plain(&mut c, overlay(r#"[3,["a","CP-1"],"hub","u",{}]"#));
        assert_eq!(r, Err(TranslateError::RoutedDest));
        let r = overlay_call_to_plain(
            &mut c,
            overlay(r#"[6,"CP-1","hub","u","Notify",{}]"#),
            t0,
            (),
        );
        assert!(matches!(r, Err(TranslateError::WrongType { got: 6, .. })));
        let r = overlay_call_to_plain(
            &mut c,
            overlay(r#"[2,["a","CP-1"],"hub","u","Reset",{}]"#),
            t0,
            (),
        );
        assert_eq!(r, Err(TranslateError::RoutedDest));
        let r = plain_reply_to_overlay(&mut c, "CP-1", plain(r#"[2,"1","Heartbeat",{}]"#));
        assert!(matches!(r, Err(TranslateError::WrongType { got: 2, .. })));
        assert!(c.is_empty());
    }
}
