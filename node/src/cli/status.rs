//! `ocpp-node status`: fetches `/api/status` from a running node and prints it for a technician.
//!
//! The request itself is [`super::client`]'s.

use serde_json::Value;

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
            "  {:<24} {:<10} profile {:<2} from {:<22} since {}  last message {}",
            c["id"].as_str().unwrap_or("?"),
            c["ocppVersion"].as_str().unwrap_or("?"),
            c["securityProfile"]
                .as_u64()
                .map_or_else(|| "?".to_owned(), |p| p.to_string()),
            c["remoteAddr"].as_str().unwrap_or("?"),
            c["connectedSince"].as_str().unwrap_or("?"),
            // null until the charger's first frame
            c["lastMessageAt"].as_str().unwrap_or("-")
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
