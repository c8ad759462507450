//! When this node tells its uplink what is reachable through it (ARCHITECTURE §3.4, §6.2):
//! full after the uplink comes up, then deltas over the ids that changed, coalesced while a
//! burst of events is queued, and refreshed every third of the ttl.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use routing::announce::{self, Validity};
use routing::{Announcement, LinkId};
use wire::Route;
use wire::text::{Body, Frame, OverlayFrame};

use super::{Action, Core, IfFull, Outbound};

#[derive(Debug, Default)]
pub(super) struct State {
    /// Routes changed since the last announcement.
    pub dirty: bool,
    /// The ids whose routes changed since then: an announcement looks only at them.
    changed: HashSet<String>,
    pub next_refresh: Option<Instant>,
}

impl State {
    pub fn changed(&mut self, id: &str) {
        self.dirty = true;
        if !self.changed.contains(id) {
            self.changed.insert(id.to_owned());
        }
    }

    pub fn changed_all<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.changed(id);
        }
    }
}

impl Core {
    /// Sends the pending announcement to the uplink, if there is one.
    pub(super) fn announce(&mut self, now: Instant) {
        self.announce.dirty = false;
        let Some(uplink) = self.uplink else {
            // Nobody to tell, and the next uplink's first announcement is full: the changes need
            // not be kept (they would grow with every charger id ever seen on a hub).
            self.announce.changed.clear();
            return;
        };
        let ann = self.next_announcement(uplink, now);
        if !ann.is_empty_delta() {
            self.send_announcement(uplink, &ann);
        }
    }

    /// Even an empty delta refreshes the routes' ttl upstream.
    pub(super) fn refresh_announcement(&mut self, now: Instant) {
        if self.announce.next_refresh.is_none_or(|t| t > now) {
            return;
        }
        self.schedule_refresh(now);
        if let Some(uplink) = self.uplink {
            self.announce.dirty = false;
            let ann = self.next_announcement(uplink, now);
            self.send_announcement(uplink, &ann);
        }
    }

    pub(super) fn schedule_refresh(&mut self, now: Instant) {
        let every = (self.settings.announce_ttl / 3).max(Duration::from_secs(1));
        self.announce.next_refresh = Some(now + every);
    }

    fn next_announcement(&mut self, uplink: LinkId, now: Instant) -> Announcement {
        let validity = Validity {
            ttl: self.settings.announce_ttl,
            not_before: None,
            not_after: None,
        };
        let changed = std::mem::take(&mut self.announce.changed);
        self.announcer.announce_changes(
            uplink,
            &self.table,
            changed.iter().map(String::as_str),
            &validity,
            now,
        )
    }

    fn send_announcement(&mut self, uplink: LinkId, ann: &Announcement) {
        let Ok(raw) = serde_json::value::RawValue::from_string(ann.to_payload()) else {
            return;
        };
        let frame = OverlayFrame {
            dest: Route::single(routing::CSMS),
            path: Route::single(self.settings.own_id.clone()),
            frame: Frame {
                id: self.ids.next().into(),
                body: Body::Send {
                    action: announce::ACTION.into(),
                    payload: wire::Json::new(&raw),
                },
            },
        };
        // Straight to the link, not through `send_overlay`: that would announce again.
        self.actions.push_back(Action::Send {
            link: uplink,
            out: Outbound::Text(frame.to_text()),
            if_full: IfFull::Wait,
        });
    }
}
