//! `ocpp-node status`: fetches `/api/status` from a running node and prints it for a technician.
//!
//! The admin API is plain HTTP on loopback, so a single GET over a TCP stream is enough; an HTTP
//! client crate would add a large dependency tree for one request.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Largest admin response read; the status document is a few KiB per hundred chargers.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

pub fn fetch(admin_url: &str, path: &str) -> anyhow::Result<Value> {
    let host = admin_url
        .strip_prefix("http://")
        .context("the admin URL must start with http://")?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(host)
        .with_context(|| format!("cannot reach the node's admin API at {admin_url}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("admin response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "admin API answered: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    // axum answers small bodies with Content-Length, never chunked, for these routes.
    serde_json::from_str(body).context("admin response is not JSON")
}

pub fn print(status: &Value) {
    let node = &status["node"];
    println!(
        "node {} (role {}, version {}), up {} s",
        node["id"].as_str().unwrap_or("?"),
        node["role"].as_str().unwrap_or("?"),
        node["version"].as_str().unwrap_or("?"),
        status["uptimeSeconds"]
    );
    println!("listeners:");
    for l in status["listeners"].as_array().into_iter().flatten() {
        println!(
            "  {:<12} {}  (security profile {})",
            l["name"].as_str().unwrap_or("?"),
            l["url"].as_str().unwrap_or("?"),
            l["securityProfile"]
        );
    }
    let chargers = status["chargers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    println!("chargers connected: {}", chargers.len());
    for c in chargers {
        println!(
            "  {:<24} {:<10} from {:<22} since {}",
            c["id"].as_str().unwrap_or("?"),
            c["ocppVersion"].as_str().unwrap_or("?"),
            c["remoteAddr"].as_str().unwrap_or("?"),
            c["connectedSince"].as_str().unwrap_or("?")
        );
    }
    let list = |key: &str| {
        status[key]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let uplinks = list("uplinks");
    if uplinks.is_empty() && list("overlayLinks").is_empty() && list("csmsConnections").is_empty() {
        println!("uplinks: none (standalone: this node is the central system for its chargers)");
        return;
    }
    println!("uplinks:");
    for u in uplinks {
        println!(
            "  {:<12} {:<10} priority {:<3} {}  {}",
            s(&u["name"]),
            s(&u["state"]),
            s(&u["priority"]),
            s(&u["url"]),
            u["lastError"]
                .as_str()
                .map(|e| format!("(last error: {e})"))
                .unwrap_or_default()
        );
    }
    println!("overlay links:");
    for l in list("overlayLinks") {
        println!(
            "  link#{:<6} {:<8} {:<24} from {}",
            s(&l["link"]),
            s(&l["direction"]),
            s(&l["peer"]),
            s(&l["remoteAddr"])
        );
    }
    println!("routes:");
    for r in list("routes") {
        println!(
            "  {:<24} via link#{:<6} ({}) {:<9} {:<10} expires in {} s",
            s(&r["destination"]),
            s(&r["link"]),
            s(&r["peer"]),
            s(&r["source"]),
            s(&r["ocppVersion"]),
            s(&r["expiresInS"])
        );
    }
    let csms = list("csmsConnections");
    if !csms.is_empty() {
        println!("CSMS connections: {}", csms.len());
        for c in csms {
            let path = c["path"]
                .as_array()
                .map(|p| p.iter().map(&s).collect::<Vec<_>>().join(" > "))
                .unwrap_or_else(|| "-".into());
            println!(
                "  {:<24} {:<10} {:<10} path {}",
                s(&c["charger"]),
                s(&c["ocppVersion"]),
                s(&c["state"]),
                path
            );
        }
    }
}
