//! The status page at `GET /` of the admin API: what `/api/status` and `/api/events` hold, as
//! one HTML page a technician opens in any browser on site. It is rendered here, on the server,
//! with inline CSS and an inline SVG diagram and no JavaScript at all: nothing to build, nothing
//! a browser must run, and a `Content-Security-Policy` that forbids scripts outright. It reloads
//! itself with `<meta http-equiv="refresh">`.
//!
//! Charger ids, peer ids, addresses and event details come from the network, so every string
//! from the status document is HTML-escaped where it is written, and every list is cut at a
//! bound, so a node with thousands of chargers still serves a page of bounded size.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::core::node::Node;

/// Seconds between the page's own reloads.
const REFRESH_S: u32 = 5;
/// Rows of one table (chargers, routes, CSMS sockets); the rest is counted, not listed.
const MAX_ROWS: usize = 200;
/// Security events listed, newest first.
const MAX_EVENTS: usize = 25;
/// Boxes of one column of the diagram; more become one "+ K more" box.
const MAX_DIAGRAM: usize = 12;
/// Characters of one string in a table cell, and in a box of the diagram.
const MAX_TEXT: usize = 160;
const MAX_LABEL: usize = 22;
/// Scripts, frames, forms and every fetch are forbidden; only the inline style may apply.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// `GET /`: the page, from the same status document and event list as the JSON endpoints.
pub async fn page(State(node): State<Arc<Node>>) -> Response {
    let status = super::status_json(&node).await;
    // The page's one source of security events: the same as `/api/events`.
    let (events, notice) = match super::recent_events(&node).await {
        Ok(list) => (list, None),
        Err(e) => (
            Vec::new(),
            Some(format!("the security event log could not be read: {e}")),
        ),
    };
    let html = render_with(&status, &events, notice.as_deref());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Every reload must show the node as it is now.
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

/// The page for a status document (`/api/status`) and security events (`/api/events`, oldest
/// first, as the audit log stores them).
pub fn render(status: &Value, events: &[Value]) -> String {
    render_with(status, events, None)
}

fn render_with(status: &Value, events: &[Value], notice: Option<&str>) -> String {
    let mut out = String::with_capacity(32 * 1024);
    // Writing into a String cannot fail.
    let _ = write_page(&mut out, status, events, notice);
    out
}

fn write_page(
    out: &mut String,
    status: &Value,
    events: &[Value],
    notice: Option<&str>,
) -> fmt::Result {
    let node = &status["node"];
    write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · ocpp-node status</title><style>{STYLE}</style></head><body>\n",
        text(&node["id"], MAX_TEXT)
    )?;
    write!(
        out,
        "<header><h1>{}</h1><span class=\"pill\">{}</span><span>ocpp-node {}</span>\
         <span>up {}</span><span class=\"muted\">reloads every {REFRESH_S} s</span></header>\n<main>\n",
        text(&node["id"], MAX_TEXT),
        text(&node["role"], MAX_TEXT),
        text(&node["version"], MAX_TEXT),
        uptime(status["uptimeSeconds"].as_u64()),
    )?;
    if let Some(n) = notice {
        writeln!(out, "<p class=\"notice\">{}</p>", Esc(n, MAX_TEXT))?;
    }
    if status["overlayLinks"].is_null() && status["routes"].is_null() {
        out.push_str(
            "<p class=\"notice\">The engine did not answer: routes, overlay links and the \
             outbox are not shown.</p>\n",
        );
    }
    cards(out, status, events)?;
    topology(out, status)?;
    chargers(out, status)?;
    uplinks(out, status)?;
    overlay_links(out, status)?;
    routes(out, status)?;
    csms(out, status)?;
    outbox(out, status)?;
    security_events(out, events)?;
    out.push_str(
        "<footer>The same data as JSON: <a href=\"/api/status\">/api/status</a> · \
         <a href=\"/api/events\">/api/events</a> · <a href=\"/api/outbox\">/api/outbox</a> · \
         <a href=\"/metrics\">/metrics</a></footer>\n</main></body></html>\n",
    );
    Ok(())
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn cards(out: &mut String, status: &Value, events: &[Value]) -> fmt::Result {
    let uplinks = list(&status["uplinks"]);
    let up = uplinks.iter().filter(|u| u["state"] == "up").count();
    let csms = list(&status["csmsConnections"]);
    let open = csms.iter().filter(|c| c["state"] == "open").count();
    out.push_str("<section class=\"cards\">");
    let mut card = |n: String, label: &str, class: &str| {
        write!(
            out,
            "<div class=\"card {class}\"><div class=\"n\">{n}</div><div class=\"l\">{label}</div></div>"
        )
    };
    card(list(&status["chargers"]).len().to_string(), "chargers", "")?;
    if !uplinks.is_empty() {
        let class = if up == 0 { "bad" } else { "ok" };
        card(format!("{up} / {}", uplinks.len()), "uplinks up", class)?;
    }
    card(
        list(&status["overlayLinks"]).len().to_string(),
        "overlay links",
        "",
    )?;
    card(list(&status["routes"]).len().to_string(), "routes", "")?;
    if !csms.is_empty() {
        card(format!("{open} / {}", csms.len()), "CSMS sockets open", "")?;
    }
    if let Some(q) = status["outbox"]["queued"].as_u64() {
        card(
            q.to_string(),
            "queued in the outbox",
            if q > 0 { "warn" } else { "" },
        )?;
    }
    card(events.len().to_string(), "recent security events", "")?;
    out.push_str("</section>\n");
    Ok(())
}

fn chargers(out: &mut String, status: &Value) -> fmt::Result {
    let all = list(&status["chargers"]);
    write!(
        out,
        "<section id=\"chargers\"><h2>Chargers on this node ({})</h2>",
        all.len()
    )?;
    if all.is_empty() {
        out.push_str("<p class=\"empty\">No charger is connected.</p></section>\n");
        return Ok(());
    }
    out.push_str(
        "<table><thead><tr><th>id</th><th>OCPP</th><th>security profile</th>\
         <th>connected since</th><th>last message</th><th>from</th><th>path</th></tr></thead><tbody>",
    );
    for c in all.iter().take(MAX_ROWS) {
        write!(
            out,
            "<tr class=\"charger\"><td class=\"id\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
            text(&c["id"], MAX_TEXT),
            text(&c["ocppVersion"], MAX_TEXT),
            text(&c["securityProfile"], MAX_TEXT),
            time(&c["connectedSince"]),
            time(&c["lastMessageAt"]),
            text(&c["remoteAddr"], MAX_TEXT),
            path(&c["path"]),
        )?;
    }
    out.push_str("</tbody></table>");
    more(out, all.len(), "chargers")?;
    out.push_str("</section>\n");
    Ok(())
}

fn uplinks(out: &mut String, status: &Value) -> fmt::Result {
    let all = list(&status["uplinks"]);
    if all.is_empty() {
        return Ok(());
    }
    write!(
        out,
        "<section id=\"uplinks\"><h2>Uplinks ({})</h2>",
        all.len()
    )?;
    out.push_str(
        "<table><thead><tr><th>name</th><th>state</th><th>priority</th><th>url</th>\
         <th>remote address</th><th>last error</th></tr></thead><tbody>",
    );
    for u in all.iter().take(MAX_ROWS) {
        write!(
            out,
            "<tr class=\"uplink\"><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td>\
             <td class=\"mono\">{}</td><td>{}</td></tr>",
            text(&u["name"], MAX_TEXT),
            state(&u["state"]),
            text(&u["priority"], MAX_TEXT),
            text(&u["url"], MAX_TEXT),
            text(&u["remoteAddr"], MAX_TEXT),
            text(&u["lastError"], MAX_TEXT),
        )?;
    }
    out.push_str("</tbody></table>");
    more(out, all.len(), "uplinks")?;
    out.push_str("</section>\n");
    Ok(())
}

/// `host:port` of a URL, for a box too small for the whole URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn overlay_links(out: &mut String, status: &Value) -> fmt::Result {
    let all = list(&status["overlayLinks"]);
    if all.is_empty() {
        return Ok(());
    }
    write!(
        out,
        "<section id=\"overlay-links\"><h2>Overlay links ({})</h2>",
        all.len()
    )?;
    out.push_str(
        "<table><thead><tr><th>link</th><th>direction</th><th>peer node</th>\
         <th>remote address</th><th>routes</th></tr></thead><tbody>",
    );
    for l in all.iter().take(MAX_ROWS) {
        write!(
            out,
            "<tr class=\"overlay-link\"><td>#{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td>\
             <td>{}</td></tr>",
            text(&l["link"], MAX_TEXT),
            text(&l["direction"], MAX_TEXT),
            text(&l["peer"], MAX_TEXT),
            text(&l["remoteAddr"], MAX_TEXT),
            routes_via(status, &l["link"]),
        )?;
    }
    out.push_str("</tbody></table>");
    more(out, all.len(), "overlay links")?;
    out.push_str("</section>\n");
    Ok(())
}

fn routes_via(status: &Value, link: &Value) -> usize {
    list(&status["routes"])
        .iter()
        .filter(|r| r["link"] == *link)
        .count()
}

fn routes(out: &mut String, status: &Value) -> fmt::Result {
    let all = list(&status["routes"]);
    write!(
        out,
        "<section id=\"routes\"><h2>Routes ({})</h2>",
        all.len()
    )?;
    if all.is_empty() {
        out.push_str("<p class=\"empty\">No routes.</p></section>\n");
        return Ok(());
    }
    out.push_str(
        "<table><thead><tr><th>destination</th><th>via</th><th>source</th><th>priority</th>\
         <th>OCPP</th><th>expires in</th></tr></thead><tbody>",
    );
    for r in all.iter().take(MAX_ROWS) {
        write!(
            out,
            "<tr class=\"route\"><td>{}</td><td>{} (link #{})</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            text(&r["destination"], MAX_TEXT),
            text(&r["peer"], MAX_TEXT),
            text(&r["link"], MAX_TEXT),
            text(&r["source"], MAX_TEXT),
            text(&r["priority"], MAX_TEXT),
            text(&r["ocppVersion"], MAX_TEXT),
            match r["expiresInS"].as_u64() {
                Some(s) => format!("{s} s"),
                None => "never".to_owned(),
            },
        )?;
    }
    out.push_str("</tbody></table>");
    more(out, all.len(), "routes")?;
    out.push_str("</section>\n");
    Ok(())
}

fn csms(out: &mut String, status: &Value) -> fmt::Result {
    let all = list(&status["csmsConnections"]);
    if status["node"]["role"] != "hub" && all.is_empty() {
        return Ok(());
    }
    write!(
        out,
        "<section id=\"csms\"><h2>CSMS sockets ({})</h2>",
        all.len()
    )?;
    if all.is_empty() {
        out.push_str("<p class=\"empty\">No charger has a socket to the CSMS.</p></section>\n");
        return Ok(());
    }
    out.push_str(
        "<table><thead><tr><th>charger</th><th>OCPP</th><th>state</th><th>path</th></tr>\
         </thead><tbody>",
    );
    for c in all.iter().take(MAX_ROWS) {
        write!(
            out,
            "<tr class=\"csms\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&c["charger"], MAX_TEXT),
            text(&c["ocppVersion"], MAX_TEXT),
            state(&c["state"]),
            path(&c["path"]),
        )?;
    }
    out.push_str("</tbody></table>");
    more(out, all.len(), "CSMS sockets")?;
    out.push_str("</section>\n");
    Ok(())
}

fn outbox(out: &mut String, status: &Value) -> fmt::Result {
    let o = &status["outbox"];
    if !o.is_object() {
        return Ok(());
    }
    write!(
        out,
        "<section id=\"outbox\"><h2>Outbox</h2><dl class=\"facts\">\
         <dt>queued</dt><dd>{}</dd><dt>chargers with queued messages</dt><dd>{}</dd>\
         <dt>in flight</dt><dd>{}</dd><dt>oldest queued</dt><dd>{}</dd>\
         <dt>dead letters</dt><dd>{}</dd></dl>",
        text(&o["queued"], MAX_TEXT),
        text(&o["chargers"], MAX_TEXT),
        text(&o["inFlight"], MAX_TEXT),
        match (o["oldestAgeS"].as_u64(), o["queuedBeforeStart"].as_bool()) {
            (_, Some(true)) => "queued before this start of the node".to_owned(),
            (Some(s), _) => format!("{} ago", uptime(Some(s))),
            (None, _) => "–".to_owned(),
        },
        text(&o["deadLetters"], MAX_TEXT),
    )?;
    out.push_str("</section>\n");
    Ok(())
}

fn security_events(out: &mut String, events: &[Value]) -> fmt::Result {
    write!(
        out,
        "<section id=\"events\"><h2>Recent security events ({})</h2>",
        events.len()
    )?;
    if events.is_empty() {
        out.push_str("<p class=\"empty\">None recorded.</p></section>\n");
        return Ok(());
    }
    out.push_str(
        "<table><thead><tr><th>#</th><th>time</th><th>kind</th><th>OCPP security event</th>\
         <th>detail</th></tr></thead><tbody>",
    );
    for e in events.iter().rev().take(MAX_EVENTS) {
        write!(
            out,
            "<tr class=\"event\"><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td>\
             <td>{}</td></tr>",
            text(&e["index"], MAX_TEXT),
            time(&e["time"]),
            text(&e["kind"], MAX_TEXT),
            text(&e["event"], MAX_TEXT),
            text(&e["detail"], MAX_TEXT),
        )?;
    }
    out.push_str("</tbody></table>");
    if events.len() > MAX_EVENTS {
        write!(
            out,
            "<p class=\"more\">and {} older ones (<a href=\"/api/events\">/api/events</a>; \
             the whole log: <code>ocpp-node audit show</code>)</p>",
            events.len() - MAX_EVENTS
        )?;
    }
    out.push_str("</section>\n");
    Ok(())
}

fn more(out: &mut String, total: usize, what: &str) -> fmt::Result {
    if total > MAX_ROWS {
        write!(
            out,
            "<p class=\"more\">and {} more {what} (all of them: <a href=\"/api/status\">/api/status</a>)</p>",
            total - MAX_ROWS
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The diagram
// ---------------------------------------------------------------------------------------------

/// One box of the diagram.
struct Box_ {
    class: &'static str,
    label: String,
    sub: String,
    /// The tooltip: the untruncated label and more.
    title: String,
    /// The class of its line to this node.
    line: &'static str,
}

const W: u32 = 960;
const BOX_W: u32 = 230;
const BOX_H: u32 = 34;
const ROW: u32 = 44;
const TOP: u32 = 40;
const LEFT_X: u32 = 10;
const SELF_X: u32 = (W - BOX_W) / 2;
const RIGHT_X: u32 = W - BOX_W - 10;

fn topology(out: &mut String, status: &Value) -> fmt::Result {
    let (left, right) = diagram_boxes(status);
    let rows = left.len().max(right.len()).max(2) as u32;
    let height = TOP + rows * ROW + 10;
    let self_h = 56;
    let self_y = TOP + (rows * ROW - self_h) / 2;
    let node = &status["node"];
    write!(
        out,
        "<section id=\"topology\"><h2>Topology as this node sees it</h2>\
         <svg class=\"topo\" viewBox=\"0 0 {W} {height}\" width=\"100%\" role=\"img\" \
         aria-label=\"overlay topology\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text class=\"head\" x=\"{}\" y=\"20\">downstream: chargers, nodes</text>\
         <text class=\"head\" x=\"{}\" y=\"20\">this node</text>\
         <text class=\"head\" x=\"{}\" y=\"20\">upstream</text>",
        LEFT_X, SELF_X, RIGHT_X,
    )?;
    let self_mid = self_y + self_h / 2;
    for (i, b) in left.iter().enumerate() {
        let y = TOP + i as u32 * ROW + BOX_H / 2;
        line(out, LEFT_X + BOX_W, y, SELF_X, self_mid, b.line)?;
    }
    for (i, b) in right.iter().enumerate() {
        let y = TOP + i as u32 * ROW + BOX_H / 2;
        line(out, SELF_X + BOX_W, self_mid, RIGHT_X, y, b.line)?;
    }
    for (i, b) in left.iter().enumerate() {
        node_box(out, LEFT_X, TOP + i as u32 * ROW, b)?;
    }
    for (i, b) in right.iter().enumerate() {
        node_box(out, RIGHT_X, TOP + i as u32 * ROW, b)?;
    }
    let sub = match (node["role"].as_str(), right.is_empty()) {
        (Some("local-controller"), true) => "local-controller, standalone".to_owned(),
        (Some(role), _) => role.to_owned(),
        (None, _) => String::new(),
    };
    write!(
        out,
        "<g class=\"node self\"><title>{}</title><rect x=\"{SELF_X}\" y=\"{self_y}\" \
         width=\"{BOX_W}\" height=\"{self_h}\" rx=\"8\"/>\
         <text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text class=\"sub\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text></g>",
        text(&node["id"], MAX_TEXT),
        SELF_X + BOX_W / 2,
        self_y + 24,
        text(&node["id"], MAX_LABEL),
        SELF_X + BOX_W / 2,
        self_y + 42,
        Esc(&sub, MAX_LABEL + 10),
    )?;
    out.push_str("</svg></section>\n");
    Ok(())
}

/// The boxes left (chargers, then nodes whose overlay links come in) and right (uplinks, and on
/// a hub the CSMS) of this node.
fn diagram_boxes(status: &Value) -> (Vec<Box_>, Vec<Box_>) {
    let chargers = list(&status["chargers"]);
    let inbound: Vec<&Value> = list(&status["overlayLinks"])
        .iter()
        .filter(|l| l["direction"] == "inbound")
        .collect();
    let mut left = Vec::new();
    // Each kind gets its share of the column, so a thousand chargers cannot hide the edges.
    let charger_room = if inbound.is_empty() {
        MAX_DIAGRAM
    } else {
        MAX_DIAGRAM / 2
    };
    let shown = if chargers.len() > charger_room {
        charger_room - 1
    } else {
        chargers.len()
    };
    for c in &chargers[..shown] {
        left.push(Box_ {
            class: "charger",
            label: plain(&c["id"]),
            sub: format!(
                "{} · profile {}",
                plain(&c["ocppVersion"]),
                plain(&c["securityProfile"])
            ),
            title: format!(
                "charger {} from {}",
                plain(&c["id"]),
                plain(&c["remoteAddr"])
            ),
            line: "line-charger",
        });
    }
    if chargers.len() > shown {
        left.push(more_box(chargers.len() - shown, "chargers"));
    }
    let room = MAX_DIAGRAM - left.len();
    let shown = if inbound.len() > room {
        room - 1
    } else {
        inbound.len()
    };
    for l in &inbound[..shown] {
        left.push(Box_ {
            class: "peer",
            label: plain(&l["peer"]),
            sub: format!("node · {} routes", routes_via(status, &l["link"])),
            title: format!(
                "node {} from {}",
                plain(&l["peer"]),
                plain(&l["remoteAddr"])
            ),
            line: "line-up",
        });
    }
    if inbound.len() > shown {
        left.push(more_box(inbound.len() - shown, "nodes"));
    }

    let mut right = Vec::new();
    let uplinks = list(&status["uplinks"]);
    let shown = uplinks.len().min(MAX_DIAGRAM - 2);
    for u in &uplinks[..shown] {
        let st = plain(&u["state"]);
        let url = plain(&u["url"]);
        right.push(Box_ {
            class: "uplink",
            label: plain(&u["name"]),
            sub: format!("{st} · {}", authority(&url)),
            title: format!("uplink {} to {}: {st}", plain(&u["name"]), plain(&u["url"])),
            line: if st == "up" { "line-up" } else { "line-down" },
        });
    }
    if uplinks.len() > shown {
        right.push(more_box(uplinks.len() - shown, "uplinks"));
    }
    if status["node"]["role"] == "hub" {
        let csms = list(&status["csmsConnections"]);
        let open = csms.iter().filter(|c| c["state"] == "open").count();
        right.push(Box_ {
            class: "csms",
            label: "CSMS".to_owned(),
            sub: format!("{open} of {} sockets open", csms.len()),
            title: "the CSMS: one plain OCPP-J socket per charger".to_owned(),
            line: if open > 0 { "line-up" } else { "line-down" },
        });
    }
    (left, right)
}

fn more_box(n: usize, what: &str) -> Box_ {
    Box_ {
        class: "more",
        label: format!("+ {n} more {what}"),
        sub: "see the tables below".to_owned(),
        title: format!("{n} more {what}"),
        line: "line-more",
    }
}

fn node_box(out: &mut String, x: u32, y: u32, b: &Box_) -> fmt::Result {
    write!(
        out,
        "<g class=\"node {}\"><title>{}</title><rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" \
         height=\"{BOX_H}\" rx=\"6\"/><text class=\"label\" x=\"{}\" y=\"{}\">{}</text>\
         <text class=\"sub\" x=\"{}\" y=\"{}\">{}</text></g>",
        b.class,
        Esc(&b.title, MAX_TEXT),
        x + 10,
        y + 15,
        Esc(&b.label, MAX_LABEL),
        x + 10,
        y + 28,
        Esc(&b.sub, MAX_LABEL + 10),
    )
}

fn line(out: &mut String, x1: u32, y1: u32, x2: u32, y2: u32, class: &str) -> fmt::Result {
    let mid = (x1 + x2) / 2;
    write!(
        out,
        "<path class=\"{class}\" d=\"M{x1} {y1} C{mid} {y1} {mid} {y2} {x2} {y2}\"/>"
    )
}

// ---------------------------------------------------------------------------------------------
// Escaping and formatting
// ---------------------------------------------------------------------------------------------

/// A string written HTML-escaped (for text and for quoted attributes alike) and cut after
/// `.1` characters. Control characters, which have no business in an id, show as U+FFFD.
struct Esc<'a>(&'a str, usize);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(self.1) {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                c if c.is_control() => f.write_char('\u{FFFD}')?,
                c => f.write_char(c)?,
            }
        }
        if chars.next().is_some() {
            f.write_char('…')?;
        }
        Ok(())
    }
}

/// A value of the status document as text, unescaped: "–" for null.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "–".to_owned(),
        other => other.to_string(),
    }
}

/// A value of the status document, escaped and cut.
fn text(v: &Value, max: usize) -> String {
    Esc(&plain(v), max).to_string()
}

/// An RFC 3339 time as `2026-05-20 10:00:00 UTC`; anything else as escaped text.
fn time(v: &Value) -> String {
    match v
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        None => text(v, MAX_TEXT),
    }
}

/// A path of node and charger ids, charger first.
fn path(v: &Value) -> String {
    match v.as_array() {
        Some(hops) => hops
            .iter()
            .take(16)
            .map(|h| text(h, 48))
            .collect::<Vec<_>>()
            .join(" › "),
        None => text(v, MAX_TEXT),
    }
}

/// A state as a coloured badge; only the states the node uses get their own colour.
fn state(v: &Value) -> String {
    let s = v.as_str().unwrap_or("");
    let class = match s {
        "up" | "open" => "ok",
        "connecting" | "standby" => "wait",
        "backoff" | "refused" => "bad",
        _ => "other",
    };
    format!("<span class=\"state {class}\">{}</span>", text(v, 32))
}

fn uptime(secs: Option<u64>) -> String {
    let Some(s) = secs else {
        return "–".to_owned();
    };
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

const STYLE: &str = "\
:root{--fg:#1d2330;--muted:#5d6676;--line:#d0d5dd;--bg:#f4f5f7;--ok:#0f7a55;--wait:#b25e09;\
--bad:#b42318;--accent:#2957a4}\
*{box-sizing:border-box}\
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;\
color:var(--fg);background:var(--bg)}\
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;gap:18px;align-items:baseline;\
flex-wrap:wrap}\
header h1{font-size:21px;margin:0}\
header .muted{color:#aab2c0;margin-left:auto}\
.pill{background:var(--accent);border-radius:10px;padding:1px 10px;font-size:13px}\
main{padding:16px 24px 24px}\
.notice{background:#fef3f2;border:1px solid #fecdca;color:var(--bad);padding:8px 12px;border-radius:6px}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px}\
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 14px}\
.card .n{font-size:24px;font-weight:600}\
.card .l{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}\
.card.ok .n{color:var(--ok)}.card.bad .n{color:var(--bad)}.card.warn .n{color:var(--wait)}\
section{background:#fff;border:1px solid var(--line);border-radius:8px;margin-top:14px;padding:12px 16px}\
section.cards{background:none;border:0;padding:0}\
h2{font-size:15px;margin:0 0 8px}\
table{border-collapse:collapse;width:100%;font-size:13px}\
th{text-align:left;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line);padding:4px 8px}\
td{border-bottom:1px solid #eceef2;padding:4px 8px;vertical-align:top;overflow-wrap:anywhere}\
td.id{font-weight:600}\
.mono,code{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12px}\
.state{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;\
color:#fff;background:var(--muted)}\
.state.ok{background:var(--ok)}.state.wait{background:var(--wait)}.state.bad{background:var(--bad)}\
.more,.empty{color:var(--muted);margin:6px 0 0}\
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}\
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0;font-weight:600}\
footer{color:var(--muted);margin-top:14px;font-size:12px}\
a{color:var(--accent)}\
.topo{display:block;max-width:1100px}\
.topo text{font-size:12px;fill:var(--fg)}\
.topo .head{fill:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.05em}\
.topo .label{font-weight:600}\
.topo .sub{font-size:10.5px;fill:var(--muted)}\
.topo rect{fill:#fff;stroke:#98a2b3;stroke-width:1.2}\
.topo .charger rect{fill:#eef4ff;stroke:var(--accent)}\
.topo .peer rect,.topo .uplink rect{fill:#f0faf5;stroke:var(--ok)}\
.topo .csms rect{fill:#fdf6ec;stroke:var(--wait)}\
.topo .more rect{fill:#f4f5f7;stroke-dasharray:4 3}\
.topo .self rect{fill:#1d2330;stroke:#1d2330}\
.topo .self text{fill:#fff}.topo .self .sub{fill:#c5ccd8}\
.topo path{fill:none;stroke-width:1.6}\
.topo .line-charger{stroke:#8fa8d6}\
.topo .line-up{stroke:var(--ok);stroke-width:2.4}\
.topo .line-down{stroke:var(--bad);stroke-dasharray:6 4}\
.topo .line-more{stroke:#c0c6d0;stroke-dasharray:3 3}\
";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edge(chargers: usize) -> Value {
        let chargers: Vec<Value> = (0..chargers)
            .map(|i| {
                json!({
                    "id": format!("CP-{i:04}"),
                    "ocppVersion": "ocpp1.6",
                    "remoteAddr": "10.0.0.7:51234",
                    "listener": "chargers",
                    "securityProfile": 2,
                    "connectedSince": "2026-05-20T10:00:00.123+00:00",
                    "lastMessageAt": "2026-05-20T10:05:07.900+00:00",
                    "path": [format!("CP-{i:04}")],
                })
            })
            .collect();
        json!({
            "node": {"id": "edge1", "role": "edge", "version": "0.1.0"},
            "uptimeSeconds": 3725,
            "chargers": chargers,
            "uplinks": [{"name": "hub1", "url": "wss://hub.example:9000/ocpp", "priority": 0,
                         "state": "up", "link": 7, "remoteAddr": "192.0.2.1:9000",
                         "lastError": null}],
            "overlayLinks": [{"link": 7, "peer": "hub", "direction": "uplink",
                              "remoteAddr": "192.0.2.1:9000"}],
            "routes": [{"destination": "CSMS", "link": 7, "peer": "hub", "source": "static",
                        "priority": 0, "ocppVersion": null, "expiresInS": null}],
            "csmsConnections": [],
            "outbox": {"queued": 3, "chargers": 1, "inFlight": 1, "oldestAgeS": 75,
                       "queuedBeforeStart": false, "deadLetters": 2},
        })
    }

    fn count(html: &str, needle: &str) -> usize {
        html.matches(needle).count()
    }

    #[test]
    fn an_edge_shows_its_chargers_uplink_outbox_and_diagram() {
        let html = render(&edge(3), &[]);
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(!html.contains("<script"), "no JavaScript at all");
        assert_eq!(count(&html, "<tr class=\"charger\">"), 3);
        assert!(html.contains("<td class=\"id\">CP-0002</td><td>ocpp1.6</td><td>2</td>"));
        assert!(html.contains("2026-05-20 10:00:00 UTC"), "connected since");
        assert!(html.contains("2026-05-20 10:05:07 UTC"), "last message");
        // The uplink is up, and the diagram shows it with where it goes.
        assert!(html.contains("<span class=\"state ok\">up</span>"));
        assert_eq!(count(&html, "<g class=\"node charger\">"), 3);
        assert_eq!(count(&html, "<g class=\"node uplink\">"), 1);
        assert!(html.contains(">hub1</text>") && html.contains(">up · hub.example:9000</text>"));
        assert_eq!(count(&html, "class=\"line-up\""), 1);
        assert!(html.contains("<dt>queued</dt><dd>3</dd>"));
        assert!(html.contains("1 min 15 s ago"));
        assert!(html.contains("<dt>dead letters</dt><dd>2</dd>"));
        assert!(html.contains("up 1 h 2 min"));
        // Only a hub has CSMS sockets to show.
        assert!(!html.contains("id=\"csms\""));
    }

    #[test]
    fn a_hostile_charger_id_is_escaped_everywhere() {
        let mut status = edge(0);
        let evil = "<script>alert('x')</script>\"&";
        status["chargers"] = json!([{
            "id": evil, "ocppVersion": "<b>", "remoteAddr": "1.2.3.4:5", "securityProfile": 0,
            "connectedSince": "<i>", "lastMessageAt": null, "path": [evil, "<edge>"],
        }]);
        status["node"]["id"] = json!("</title><script>");
        let events = [
            json!({"index": 0, "time": "now", "kind": "auth_failed", "event": null,
                              "detail": format!("charger {evil} refused")}),
        ];
        let html = render(&status, &events);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>") && !html.contains("<i>") && !html.contains("<edge>"));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"));
        assert!(html.contains("<title>&lt;/title&gt;&lt;script&gt; · ocpp-node status</title>"));
        // The SVG label and its tooltip are escaped as well (the label cut, with an ellipsis).
        assert!(html.contains("<title>charger &lt;script&gt;"));
        assert!(html.contains(">&lt;script&gt;alert(&#39;x&#39;)&lt;/sc…</text>"));
    }

    #[test]
    fn control_characters_and_long_strings_are_cut() {
        let s = format!("a\u{7}b{}", "x".repeat(500));
        let shown = Esc(&s, 10).to_string();
        assert_eq!(shown, "a\u{FFFD}bxxxxxxx…");
        assert_eq!(Esc("é<", 2).to_string(), "é&lt;");
        assert_eq!(Esc("abc", 3).to_string(), "abc");
    }

    #[test]
    fn the_page_is_bounded_however_many_chargers() {
        let small = render(&edge(MAX_ROWS), &[]);
        let huge = render(&edge(5000), &[]);
        assert_eq!(count(&huge, "<tr class=\"charger\">"), MAX_ROWS);
        assert!(huge.contains(&format!("and {} more chargers", 5000 - MAX_ROWS)));
        assert!(huge.contains("Chargers on this node (5000)"));
        // The diagram keeps to its column and counts the rest in one box.
        assert_eq!(count(&huge, "<g class=\"node charger\">"), MAX_DIAGRAM - 1);
        assert!(huge.contains(&format!("+ {} more chargers", 5000 - (MAX_DIAGRAM - 1))));
        assert!(
            huge.len() < small.len() + 1024,
            "{} vs {}",
            huge.len(),
            small.len()
        );
        assert!(huge.len() < 256 * 1024);
    }

    #[test]
    fn a_hub_shows_its_edges_and_the_csms() {
        let status = json!({
            "node": {"id": "hub", "role": "hub", "version": "0.1.0"},
            "uptimeSeconds": 5,
            "chargers": [],
            "uplinks": [],
            "overlayLinks": [{"link": 3, "peer": "edge1", "direction": "inbound",
                              "remoteAddr": "10.0.0.2:40000"}],
            "routes": [
                {"destination": "CP-1", "link": 3, "peer": "edge1", "source": "announce",
                 "priority": 0, "ocppVersion": "ocpp1.6", "expiresInS": 290},
                {"destination": "CP-2", "link": 3, "peer": "edge1", "source": "announce",
                 "priority": 0, "ocppVersion": "ocpp2.0.1", "expiresInS": 290},
            ],
            "csmsConnections": [
                {"charger": "CP-1", "ocppVersion": "ocpp1.6", "state": "open", "path": ["CP-1", "edge1"]},
                {"charger": "CP-2", "ocppVersion": "ocpp2.0.1", "state": "refused", "path": ["CP-2", "edge1"]},
            ],
            "outbox": null,
        });
        let html = render(&status, &[]);
        assert!(html.contains("<g class=\"node peer\">"));
        assert!(html.contains("node · 2 routes"));
        assert!(html.contains("<g class=\"node csms\">"));
        assert!(html.contains("1 of 2 sockets open"));
        assert_eq!(count(&html, "<tr class=\"csms\">"), 2);
        assert!(html.contains("<span class=\"state bad\">refused</span>"));
        assert!(html.contains("CP-1 › edge1"));
        assert!(html.contains("expires in</th>") && html.contains("<td>290 s</td>"));
        assert!(!html.contains("id=\"outbox\""), "a hub keeps no outbox");
        assert!(html.contains("No charger is connected."));
    }

    #[test]
    fn events_are_listed_newest_first_and_bounded() {
        let events: Vec<Value> = (0..40)
            .map(|i| {
                json!({"index": i, "time": "2026-05-20T10:00:00Z", "kind": format!("kind_{i}"),
                            "event": null, "detail": "d"})
            })
            .collect();
        let html = render(&edge(0), &events);
        assert_eq!(count(&html, "<tr class=\"event\">"), MAX_EVENTS);
        let newest = html.find("kind_39").expect("newest shown");
        let older = html.find("kind_38").expect("next shown");
        assert!(newest < older);
        assert!(!html.contains("kind_14<"), "the oldest are cut");
        assert!(html.contains("and 15 older ones"));
    }

    #[test]
    fn a_standalone_node_and_a_silent_engine_say_so() {
        let status = json!({
            "node": {"id": "lc", "role": "local-controller", "version": "0.1.0"},
            "uptimeSeconds": 1, "chargers": [], "uplinks": [],
            "overlayLinks": null, "routes": null, "csmsConnections": null, "outbox": null,
        });
        let html = render(&status, &[]);
        assert!(html.contains("local-controller, standalone"));
        assert!(html.contains("The engine did not answer"));
        let html = render_with(&edge(0), &[], Some("the log <broke>"));
        assert!(html.contains("<p class=\"notice\">the log &lt;broke&gt;</p>"));
    }
}
