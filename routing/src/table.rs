//! The routing table: which link leads to a destination id (ARCHITECTURE §3.4).
//!
//! Three layers, consulted in order by [`Table::lookup`]:
//! 1. exact entries, one per (destination, link, source), best priority wins;
//! 2. static glob rules (`ACME-*` via link 3), most specific matching rule wins;
//! 3. the default route: the active uplink.
//!
//! The table never reads a clock: every call that cares about expiry takes `now`. Expired entries
//! are invisible to lookups at once and are physically removed by [`Table::expire`], which reports
//! them so the hub can mirror presence (§3.4, §6.2).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wire::OcppVersion;

use crate::glob::Glob;
use crate::{LinkId, is_reserved};

/// How an entry got into the table. The order is the tie-break at equal priority: a
/// configured route beats a connection, which beats an announcement, which beats a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Static,
    Connect,
    Announce,
    AutoLearn,
}

/// Route priority; lower is preferred, as in `NotifyNetworkTopology` where 0 is the best.
pub type Priority = u32;

/// One exact route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dest: String,
    pub link: LinkId,
    pub priority: Priority,
    pub source: Source,
    /// `None`: until removed.
    pub expires: Option<Instant>,
    /// The charger's subprotocol, when the announcement or connection said so (§6.2).
    pub version: Option<OcppVersion>,
}

impl RouteEntry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| now < t)
    }

    /// Preference order: priority, then source, then the lower link id so that the choice is
    /// deterministic and does not flap with hash order.
    fn rank(&self) -> (Priority, Source, LinkId) {
        (self.priority, self.source, self.link)
    }
}

/// What a new exact route says: exactly the entry the table stores, so one type serves both.
pub type NewRoute = RouteEntry;

/// A static glob rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub glob: Glob,
    pub link: LinkId,
    pub priority: Priority,
}

/// Which layer answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'t> {
    Exact(&'t RouteEntry),
    Rule(&'t Rule),
    Default,
}

/// A lookup result: the next hop and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop<'t> {
    pub link: LinkId,
    pub via: Via<'t>,
}

/// Entries taken out of the table, and the destinations that lost their last real route.
///
/// `unreachable` lists ids that no longer have any live static, connect or announced entry:
/// those whose mirrored CSMS socket the hub closes. An auto-learned entry alone does not count
/// as presence, since it is only a guess from traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub entries: Vec<RouteEntry>,
    pub unreachable: Vec<String>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("routing table full ({max} entries); route to {dest:?} not learned")]
    Full { max: usize, dest: String },
    #[error("{0:?} is reserved and cannot be a route destination")]
    Reserved(String),
    #[error("empty destination id")]
    EmptyDest,
}

/// Sizes and defaults of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// Most exact entries plus rules. Beyond it, inserts fail with [`TableError::Full`].
    pub max_entries: usize,
    /// How long an auto-learned route lives without being seen again.
    pub auto_learn_ttl: Duration,
    /// Priority of auto-learned routes; the default is the worst, so they only fill gaps.
    pub auto_learn_priority: Priority,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            max_entries: 100_000,
            auto_learn_ttl: Duration::from_secs(300),
            auto_learn_priority: Priority::MAX,
        }
    }
}

/// What an auto-learn call did, per id it considered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    /// Ids newly learned or refreshed.
    pub learned: Vec<String>,
    /// Ids not learned because the table is full: report it, traffic still flows by
    /// the other layers.
    pub refused: Vec<String>,
}

/// The routing table. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct Table {
    config: TableConfig,
    exact: HashMap<String, Vec<RouteEntry>>,
    exact_count: usize,
    rules: Vec<Rule>,
    default: Option<LinkId>,
}

impl Table {
    pub fn new(config: TableConfig) -> Self {
        Table {
            config,
            ..Table::default()
        }
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Exact entries plus rules, live or not yet swept.
    pub fn len(&self) -> usize {
        self.exact_count + self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next hop for `dest` at `now`, or `None` when nothing leads there.
    ///
    /// Reserved ids skip the glob rules: `"CSMS"` must follow the default route up to the hub
    /// (§6.1) even when a catch-all `*` rule points downstream.
    pub fn lookup(&self, dest: &str, now: Instant) -> Option<Hop<'_>> {
        if let Some(entry) = self.best_exact(dest, now) {
            return Some(Hop {
                link: entry.link,
                via: Via::Exact(entry),
            });
        }
        if !is_reserved(dest) {
            let best_rule = self
                .rules
                .iter()
                .filter(|r| r.glob.matches(dest))
                // `min_by` keeps the first of equals, so ties go to the rule added first.
                .min_by(|a, b| {
                    b.glob
                        .specificity()
                        .cmp(&a.glob.specificity())
                        .then(a.priority.cmp(&b.priority))
                });
            if let Some(rule) = best_rule {
                return Some(Hop {
                    link: rule.link,
                    via: Via::Rule(rule),
                });
            }
        }
        self.default.map(|link| Hop {
            link,
            via: Via::Default,
        })
    }

    /// The preferred live exact entry for `dest`.
    pub fn best_exact(&self, dest: &str, now: Instant) -> Option<&RouteEntry> {
        self.exact
            .get(dest)?
            .iter()
            .filter(|e| e.live(now))
            .min_by_key(|e| e.rank())
    }

    /// Every exact entry for `dest`, including expired ones not yet swept.
    pub fn entries(&self, dest: &str) -> &[RouteEntry] {
        self.exact.get(dest).map_or(&[], Vec::as_slice)
    }

    /// All exact entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &RouteEntry> {
        self.exact.values().flatten()
    }

    /// Whether `dest` has a live static, connect or announced entry: presence, as the hub
    /// mirrors it to the CSMS.
    pub fn is_present(&self, dest: &str, now: Instant) -> bool {
        self.exact.get(dest).is_some_and(|v| {
            v.iter()
                .any(|e| e.live(now) && e.source != Source::AutoLearn)
        })
    }

    /// Adds or replaces the entry for (dest, link, source). Replacing does not count against the
    /// bound, so refreshing a full table always works.
    pub fn insert(&mut self, route: NewRoute) -> Result<(), TableError> {
        if route.dest.is_empty() {
            return Err(TableError::EmptyDest);
        }
        if route.dest == crate::BROADCAST {
            return Err(TableError::Reserved(route.dest));
        }
        let entry = route;
        if let Some(list) = self.exact.get_mut(&entry.dest)
            && let Some(slot) = list
                .iter_mut()
                .find(|e| e.link == entry.link && e.source == entry.source)
        {
            *slot = entry;
            return Ok(());
        }
        if self.len() >= self.config.max_entries {
            return Err(TableError::Full {
                max: self.config.max_entries,
                dest: entry.dest,
            });
        }
        self.exact_count += 1;
        self.exact
            .entry(entry.dest.clone())
            .or_default()
            .push(entry);
        Ok(())
    }

    /// A node peer authenticated as `id` on `link` (§3.2, §6.2): its own id becomes a connect
    /// route over that link, so that CALLs addressed to the node reach it, and
    /// [`Table::remove_link`] withdraws it with the link. The id comes from the authentication,
    /// never from a frame, so a neighbour cannot make itself the route to another node.
    ///
    /// A newer link of the same node replaces the older one's route at once, as a charger's
    /// newer connection does (§4): the older link may linger until its pings time out, and the
    /// lower link id would otherwise keep winning the tie. The replaced entries are returned.
    pub fn neighbour_up(
        &mut self,
        id: &str,
        link: LinkId,
        now: Instant,
    ) -> Result<Removed, TableError> {
        if is_reserved(id) {
            return Err(TableError::Reserved(id.to_owned()));
        }
        self.insert(NewRoute {
            dest: id.to_owned(),
            link,
            priority: 0,
            source: Source::Connect,
            expires: None,
            version: None,
        })?;
        Ok(self.remove_where(
            |e| e.dest == id && e.link != link && e.source == Source::Connect,
            Some(id),
            now,
        ))
    }

    /// Removes the entry for (dest, link, source), if any.
    pub fn remove(
        &mut self,
        dest: &str,
        link: LinkId,
        source: Source,
        now: Instant,
    ) -> Option<RouteEntry> {
        let mut removed = self.remove_where(
            |e| e.dest == dest && e.link == link && e.source == source,
            Some(dest),
            now,
        );
        removed.entries.pop()
    }

    /// Removes, via `link`, the entries for `dest` from any of `sources`.
    pub fn withdraw(
        &mut self,
        dest: &str,
        link: LinkId,
        sources: &[Source],
        now: Instant,
    ) -> Removed {
        self.remove_where(
            |e| e.dest == dest && e.link == link && sources.contains(&e.source),
            Some(dest),
            now,
        )
    }

    /// Sets the expiry of every `source` entry via `link`: an announcement restates the whole
    /// set the link announced. Returns how many entries were touched.
    pub fn refresh(&mut self, link: LinkId, source: Source, expires: Option<Instant>) -> usize {
        let mut n = 0;
        for entry in self.exact.values_mut().flatten() {
            if entry.link == link && entry.source == source {
                entry.expires = expires;
                n += 1;
            }
        }
        n
    }

    /// Adds a static glob rule. Rules count against the bound like entries.
    pub fn add_rule(
        &mut self,
        glob: Glob,
        link: LinkId,
        priority: Priority,
    ) -> Result<(), TableError> {
        if self.len() >= self.config.max_entries {
            return Err(TableError::Full {
                max: self.config.max_entries,
                dest: glob.as_str().to_owned(),
            });
        }
        self.rules.push(Rule {
            glob,
            link,
            priority,
        });
        Ok(())
    }

    /// Removes the rules with this pattern (all links); returns how many.
    pub fn remove_rule(&mut self, pattern: &str) -> usize {
        let before = self.rules.len();
        self.rules.retain(|r| r.glob.as_str() != pattern);
        before - self.rules.len()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Sets the default route (the active uplink); `None` clears it.
    pub fn set_default(&mut self, link: Option<LinkId>) {
        self.default = link;
    }

    pub fn default_route(&self) -> Option<LinkId> {
        self.default
    }

    /// Drops everything that leads over `link`: exact entries of every source, rules, and the
    /// default route if it is this link. Called when the connection closes; a reconnect gets a
    /// new [`LinkId`], so static routes for it are installed again by the caller.
    pub fn remove_link(&mut self, link: LinkId, now: Instant) -> Removed {
        self.rules.retain(|r| r.link != link);
        if self.default == Some(link) {
            self.default = None;
        }
        self.remove_where(|e| e.link == link, None, now)
    }

    /// Removes the entries whose expiry is at or before `now` and reports them.
    pub fn expire(&mut self, now: Instant) -> Removed {
        self.remove_where(|e| !e.live(now), None, now)
    }

    /// The earliest expiry in the table, so the caller can arm one timer.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.iter().filter_map(|e| e.expires).min()
    }

    /// Auto-learn (§3.4): a frame from `link` with `path` teaches "last via link" and
    /// "first via link". The entries are weak (worst priority by default, and lowest source
    /// rank), so they never displace a configured, connected or announced route; they expire
    /// after [`TableConfig::auto_learn_ttl`] unless seen again. Reserved ids are never learned.
    pub fn auto_learn(&mut self, path: &wire::Route<'_>, link: LinkId, now: Instant) -> Learned {
        let mut out = Learned::default();
        let first = path.first();
        let last = path.last();
        let ids: &[&str] = if first == last {
            &[first]
        } else {
            &[last, first]
        };
        for &id in ids {
            if is_reserved(id) || id.is_empty() {
                continue;
            }
            let route = NewRoute {
                dest: id.to_owned(),
                link,
                priority: self.config.auto_learn_priority,
                source: Source::AutoLearn,
                expires: now.checked_add(self.config.auto_learn_ttl),
                version: None,
            };
            match self.insert(route) {
                Ok(()) => out.learned.push(id.to_owned()),
                Err(_) => out.refused.push(id.to_owned()),
            }
        }
        out
    }

    fn remove_where(
        &mut self,
        mut doomed: impl FnMut(&RouteEntry) -> bool,
        only: Option<&str>,
        now: Instant,
    ) -> Removed {
        let mut removed = Removed::default();
        // Ids that lost a presence entry: only those can have become unreachable.
        let mut touched: Vec<String> = Vec::new();
        let mut scan = |list: &mut Vec<RouteEntry>| {
            let mut i = 0;
            while i < list.len() {
                if doomed(&list[i]) {
                    let entry = list.swap_remove(i);
                    if entry.source != Source::AutoLearn && !touched.contains(&entry.dest) {
                        touched.push(entry.dest.clone());
                    }
                    removed.entries.push(entry);
                } else {
                    i += 1;
                }
            }
        };
        // A single-destination removal must stay O(1) in the table size: withdrawals arrive
        // one id at a time in announcements.
        match only {
            Some(dest) => {
                if let Some(list) = self.exact.get_mut(dest) {
                    scan(list);
                    if list.is_empty() {
                        self.exact.remove(dest);
                    }
                }
            }
            None => {
                self.exact.values_mut().for_each(&mut scan);
                self.exact.retain(|_, list| !list.is_empty());
            }
        }
        self.exact_count -= removed.entries.len();
        touched.retain(|dest| !self.is_present(dest, now));
        touched.sort();
        removed.unreachable = touched;
        removed
            .entries
            .sort_by(|a, b| a.dest.cmp(&b.dest).then(a.rank().cmp(&b.rank())));
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: LinkId = LinkId(1);
    const B: LinkId = LinkId(2);
    const UP: LinkId = LinkId(9);

    fn route(dest: &str, link: LinkId, priority: Priority, source: Source) -> NewRoute {
        NewRoute {
            dest: dest.to_owned(),
            link,
            priority,
            source,
            expires: None,
            version: None,
        }
    }

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ok<E: std::fmt::Debug>(r: Result<(), E>) {
        if let Err(e) = r {
            panic!("{e:?}");
        }
    }

    fn wire_path(ids: &[&str]) -> wire::Route<'static> {
        let ids = ids
            .iter()
            .map(|s| std::borrow::Cow::Owned(s.to_string()))
            .collect();
        wire::Route::from_ids(ids).unwrap_or_else(|| panic!("empty path"))
    }

    fn link_of(t: &Table, dest: &str, now: Instant) -> Option<LinkId> {
        t.lookup(dest, now).map(|h| h.link)
    }

    #[test]
    fn best_priority_wins_then_source_rank() {
        let now = Instant::now();
        let mut t = Table::default();
        ok(t.insert(route("CP-1", A, 5, Source::Static)));
        ok(t.insert(route("CP-1", B, 1, Source::Announce)));
        assert_eq!(link_of(&t, "CP-1", now), Some(B));
        // Equal priority: the configured route beats the announced one.
        ok(t.insert(route("CP-1", A, 1, Source::Static)));
        assert_eq!(link_of(&t, "CP-1", now), Some(A));
        assert!(matches!(
            t.lookup("CP-1", now).map(|h| h.via),
            Some(Via::Exact(RouteEntry {
                source: Source::Static,
                ..
            }))
        ));
        // Replaced, not added: (dest, link, source) is the identity of an entry.
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn expired_entries_are_invisible_before_the_sweep() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut t = Table::default();
        let mut r = route("CP-1", A, 0, Source::Announce);
        r.expires = Some(later);
        ok(t.insert(r));
        ok(t.insert(route("CP-2", A, 0, Source::Connect)));
        assert_eq!(t.next_expiry(), Some(later));
        assert_eq!(link_of(&t, "CP-1", now), Some(A));
        assert_eq!(link_of(&t, "CP-1", later), None);
        assert!(!t.is_present("CP-1", later));
        assert_eq!(t.len(), 2);

        assert!(t.expire(now).is_empty());
        let gone = t.expire(later);
        assert_eq!(gone.entries.len(), 1);
        assert_eq!(gone.entries[0].dest, "CP-1");
        assert_eq!(gone.unreachable, vec!["CP-1".to_owned()]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn lookup_order_exact_then_rule_then_default() {
        let now = Instant::now();
        let mut t = Table::default();
        assert!(t.lookup("CP-1", now).is_none());
        t.set_default(Some(UP));
        assert_eq!(t.lookup("CP-1", now).map(|h| h.via), Some(Via::Default));
        ok(t.add_rule(glob("CP-*"), A, 0));
        ok(t.add_rule(glob("CP-1*"), B, 9));
        ok(t.add_rule(glob("*"), LinkId(7), 0));
        // Most literal characters wins over priority.
        assert_eq!(link_of(&t, "CP-10", now), Some(B));
        assert_eq!(link_of(&t, "CP-20", now), Some(A));
        assert_eq!(link_of(&t, "XY", now), Some(LinkId(7)));
        ok(t.insert(route("CP-10", UP, 0, Source::Announce)));
        assert_eq!(link_of(&t, "CP-10", now), Some(UP));
        assert_eq!(t.remove_rule("*"), 1);
        assert_eq!(link_of(&t, "XY", now), Some(UP));
        t.set_default(None);
        assert_eq!(link_of(&t, "XY", now), None);
        assert_eq!(t.default_route(), None);
        assert_eq!(t.rules().len(), 2);
    }

    #[test]
    fn equal_rules_prefer_priority_then_first_added() {
        let now = Instant::now();
        let mut t = Table::default();
        ok(t.add_rule(glob("CP-*"), A, 5));
        ok(t.add_rule(glob("CP-?"), B, 5));
        ok(t.add_rule(glob("CP*-"), UP, 1));
        // CP-* and CP-? tie on specificity and priority: the first added wins.
        assert_eq!(link_of(&t, "CP-1", now), Some(A));
        assert_eq!(link_of(&t, "CPx-", now), Some(UP));
    }

    #[test]
    fn csms_follows_the_default_route_not_rules() {
        let now = Instant::now();
        let mut t = Table::default();
        ok(t.add_rule(glob("*"), A, 0));
        t.set_default(Some(UP));
        assert_eq!(link_of(&t, crate::CSMS, now), Some(UP));
        // An explicit static route to an overlay-aware CSMS is honoured.
        ok(t.insert(route(crate::CSMS, B, 0, Source::Static)));
        assert_eq!(link_of(&t, crate::CSMS, now), Some(B));
    }

    #[test]
    fn remove_link_drops_everything_through_it() {
        let now = Instant::now();
        let mut t = Table::default();
        ok(t.insert(route("CP-1", A, 0, Source::Connect)));
        ok(t.insert(route("CP-2", A, 0, Source::Announce)));
        ok(t.insert(route("CP-2", B, 3, Source::Announce)));
        ok(t.insert(route("CP-3", A, 0, Source::AutoLearn)));
        ok(t.insert(route("CP-4", A, 0, Source::Static)));
        ok(t.add_rule(glob("X*"), A, 0));
        t.set_default(Some(A));
        let removed = t.remove_link(A, now);
        assert_eq!(removed.entries.len(), 4);
        // CP-2 is still reachable through B; CP-3 was only a guess, never presence.
        assert_eq!(
            removed.unreachable,
            vec!["CP-1".to_owned(), "CP-4".to_owned()]
        );
        assert_eq!(link_of(&t, "CP-2", now), Some(B));
        assert_eq!(t.default_route(), None);
        assert!(t.rules().is_empty());
        assert_eq!(t.len(), 1);
        assert!(t.remove_link(A, now).is_empty());
    }

    #[test]
    fn auto_learn_fills_gaps_only() {
        let now = Instant::now();
        let mut t = Table::default();
        ok(t.insert(route("CP-1", B, 0, Source::Announce)));
        let learned = t.auto_learn(&wire_path(&["CP-1", "edge-2", "edge-1"]), A, now);
        assert_eq!(
            learned.learned,
            vec!["edge-1".to_owned(), "CP-1".to_owned()]
        );
        assert!(learned.refused.is_empty());
        // The announced route still wins: auto-learned entries have the worst priority.
        assert_eq!(link_of(&t, "CP-1", now), Some(B));
        assert_eq!(link_of(&t, "edge-1", now), Some(A));
        assert!(!t.is_present("edge-1", now));
        // Middle hops are not learned: only the ends are known to be behind this link.
        assert_eq!(link_of(&t, "edge-2", now), None);
        let ttl = t.config().auto_learn_ttl;
        assert_eq!(link_of(&t, "edge-1", now + ttl), None);
        // Seen again: refreshed, not duplicated.
        let before = t.len();
        t.auto_learn(&wire_path(&["CP-1", "edge-2", "edge-1"]), A, now + ttl);
        assert_eq!(t.len(), before);
        assert_eq!(link_of(&t, "edge-1", now + ttl), Some(A));
    }

    #[test]
    fn auto_learn_skips_reserved_and_single_element_paths_learn_once() {
        let now = Instant::now();
        let mut t = Table::default();
        let learned = t.auto_learn(&wire_path(&[crate::CSMS, "hub"]), UP, now);
        assert_eq!(learned.learned, vec!["hub".to_owned()]);
        let learned = t.auto_learn(&wire_path(&["edge-1"]), A, now);
        assert_eq!(learned.learned, vec!["edge-1".to_owned()]);
        assert_eq!(t.len(), 2);
        assert!(t.entries(crate::CSMS).is_empty());
    }

    #[test]
    fn the_bound_refuses_growth_but_not_refresh() {
        let now = Instant::now();
        let mut t = Table::new(TableConfig {
            max_entries: 2,
            ..TableConfig::default()
        });
        ok(t.insert(route("a", A, 0, Source::Connect)));
        ok(t.add_rule(glob("r*"), A, 0));
        assert_eq!(
            t.insert(route("b", A, 0, Source::Connect)),
            Err(TableError::Full {
                max: 2,
                dest: "b".to_owned()
            })
        );
        assert!(t.add_rule(glob("s*"), A, 0).is_err());
        ok(t.insert(route("a", A, 7, Source::Connect)));
        assert_eq!(t.best_exact("a", now).map(|e| e.priority), Some(7));
        let learned = t.auto_learn(&wire_path(&["x", "y"]), B, now);
        assert!(learned.learned.is_empty());
        assert_eq!(learned.refused, vec!["y".to_owned(), "x".to_owned()]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn broadcast_and_empty_ids_are_never_destinations() {
        let mut t = Table::default();
        assert_eq!(
            t.insert(route("*", A, 0, Source::Static)),
            Err(TableError::Reserved("*".to_owned()))
        );
        assert_eq!(
            t.insert(route("", A, 0, Source::Static)),
            Err(TableError::EmptyDest)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn remove_withdraw_and_refresh() {
        let now = Instant::now();
        let mut t = Table::default();
        ok(t.insert(route("CP-1", A, 0, Source::Announce)));
        ok(t.insert(route("CP-1", A, 9, Source::AutoLearn)));
        ok(t.insert(route("CP-2", A, 0, Source::Announce)));
        let later = now + Duration::from_secs(60);
        assert_eq!(t.refresh(A, Source::Announce, Some(later)), 2);
        assert!(
            t.iter()
                .filter(|e| e.source == Source::Announce)
                .all(|e| e.expires == Some(later))
        );
        assert_eq!(t.remove("CP-2", B, Source::Announce, now), None);
        assert!(t.remove("CP-2", A, Source::Announce, now).is_some());
        let w = t.withdraw("CP-1", A, &[Source::Announce, Source::AutoLearn], now);
        assert_eq!(w.entries.len(), 2);
        assert_eq!(w.unreachable, vec!["CP-1".to_owned()]);
        assert!(t.is_empty());
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn a_neighbour_is_routable_by_its_own_id_while_its_link_is_up() {
        let now = Instant::now();
        let mut t = Table::default();
        t.set_default(Some(UP));
        // What another link says about the node, or what traffic suggests, loses to the link
        // the node authenticated on.
        ok(t.insert(route("edge-1", B, 0, Source::Announce)));
        t.auto_learn(&wire_path(&["edge-1"]), UP, now);
        let replaced = t.neighbour_up("edge-1", A, now);
        assert_eq!(replaced.map(|r| r.is_empty()), Ok(true));
        assert_eq!(link_of(&t, "edge-1", now), Some(A));
        assert!(matches!(
            t.lookup("edge-1", now).map(|h| h.via),
            Some(Via::Exact(RouteEntry {
                source: Source::Connect,
                version: None,
                expires: None,
                ..
            }))
        ));
        assert!(t.is_present("edge-1", now));
        // Up again on the same link: refreshed, not duplicated.
        let before = t.len();
        assert!(t.neighbour_up("edge-1", A, now).is_ok());
        assert_eq!(t.len(), before);

        let removed = t.remove_link(A, now);
        assert_eq!(removed.entries.len(), 1);
        // Still announced through B, so not gone.
        assert!(removed.unreachable.is_empty());
        assert_eq!(link_of(&t, "edge-1", now), Some(B));
        t.withdraw("edge-1", B, &[Source::Announce], now);
        // Only the guess and the default route are left, both to the uplink.
        assert_eq!(link_of(&t, "edge-1", now), Some(UP));
    }

    #[test]
    fn a_newer_link_of_the_same_neighbour_replaces_the_older() {
        let now = Instant::now();
        let mut t = Table::default();
        assert!(t.neighbour_up("edge-1", B, now).is_ok());
        // The reconnect gets a lower link id here, so the tie-break alone would not pick it.
        let replaced = t.neighbour_up("edge-1", A, now).unwrap_or_default();
        assert_eq!(replaced.entries.len(), 1);
        assert_eq!(replaced.entries[0].link, B);
        assert!(replaced.unreachable.is_empty(), "never unreachable between");
        assert_eq!(link_of(&t, "edge-1", now), Some(A));
        // The older link closing later takes nothing of the newer one's.
        assert!(t.remove_link(B, now).is_empty());
        assert_eq!(link_of(&t, "edge-1", now), Some(A));
        let gone = t.remove_link(A, now);
        assert_eq!(gone.unreachable, vec!["edge-1".to_owned()]);
        assert!(t.is_empty());
    }

    #[test]
    fn a_neighbour_cannot_take_a_reserved_or_empty_id() {
        let now = Instant::now();
        let mut t = Table::default();
        for id in [crate::CSMS, crate::BROADCAST] {
            assert_eq!(
                t.neighbour_up(id, A, now),
                Err(TableError::Reserved(id.to_owned()))
            );
        }
        assert_eq!(t.neighbour_up("", A, now), Err(TableError::EmptyDest));
        assert!(t.is_empty());
    }

    #[test]
    fn version_is_kept() {
        let now = Instant::now();
        let mut t = Table::default();
        let mut r = route("CP-1", A, 0, Source::Announce);
        r.version = Some(OcppVersion::V201);
        ok(t.insert(r));
        assert_eq!(
            t.best_exact("CP-1", now).and_then(|e| e.version),
            Some(OcppVersion::V201)
        );
    }
}
