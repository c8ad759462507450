//! Load management, closed loop: a real local controller reads a real Modbus TCP meter
//! (`ocpp-sim site`'s tokio-modbus server, whose reading is a scripted base load plus what the
//! simulated chargers draw) and limits ten profile-obeying simulated chargers through
//! SetChargingProfile. The simulator's own timeline (every 200 ms: the meter's true total and
//! each charger's limit) is what the assertions read, so they judge what the grid would see.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::NodeProc;
use serde_json::Value;

const GRID_A: f64 = 80.0;
const SAFE_A: f64 = 6.0;
const CHARGERS: usize = 10;

fn sim_bin() -> PathBuf {
    let p = std::path::Path::new(common::BIN).with_file_name("ocpp-sim");
    assert!(
        p.is_file(),
        "{} not found: build the workspace (cargo nextest run --workspace)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn dlm_config(meter_port: u16, stale_s: u64) -> String {
    format!(
        r#"
[dlm]
grid_limit_a = {GRID_A}
meter = "grid"
cycle_ms = 1000
stale_s = {stale_s}
safe_limit_a = {SAFE_A}
min_a = 6
max_a = 16
deadband_a = 1
min_change_interval_s = 2
rotation_s = 30
margin_a = 1

[[meter]]
name = "grid"
transport = "tcp"
address = "127.0.0.1:{meter_port}"
unit_id = 1
map = "sdm630"
timeout_ms = 300
"#
    )
}

struct Sim {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sim(url: &str, meter_port: u16, extra: &[&str]) -> Sim {
    let mut child = Command::new(sim_bin())
        .args(["site", "--url", url, "--prefix", "SIM", "--version", "1.6"])
        .args(["--chargers", &CHARGERS.to_string(), "--max-a", "16"])
        .args(["--ramp-a-per-s", "16", "--meter-interval-s", "2"])
        .args(["--meter-bind", &format!("127.0.0.1:{meter_port}")])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ocpp-sim site");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Sim { child, lines }
}

/// One 200 ms sample of the simulator's timeline.
#[derive(Debug, Clone)]
struct Sample {
    t: f64,
    total: [f64; 3],
    limits: Vec<f64>,
}

fn sample(v: &Value) -> Option<Sample> {
    let t = v["t"].as_f64()?;
    let total = v["total_a"].as_array()?;
    let total = [
        total.first()?.as_f64()?,
        total.get(1)?.as_f64()?,
        total.get(2)?.as_f64()?,
    ];
    let limits = v["chargers"]
        .as_object()?
        .values()
        .filter_map(|c| c["limit_a"].as_f64())
        .collect();
    Some(Sample { t, total, limits })
}

/// Collects samples until the simulator's clock passes `until_t`, polling `/api/dlm` on the way.
fn run_until(sim: &Sim, node: &NodeProc, until_t: f64, dlm_polls: &mut Vec<Value>) -> Vec<Sample> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(until_t + 60.0);
    let mut next_poll = Instant::now();
    loop {
        assert!(Instant::now() < deadline, "the simulator stopped reporting");
        if Instant::now() >= next_poll {
            dlm_polls.push(node.get_json("/api/dlm"));
            next_poll = Instant::now() + Duration::from_millis(500);
        }
        let Ok(v) = sim.lines.recv_timeout(Duration::from_secs(10)) else {
            panic!("no line from ocpp-sim site for 10 s");
        };
        if let Some(s) = sample(&v) {
            let done = s.t >= until_t;
            out.push(s);
            if done {
                return out;
            }
        }
    }
}

/// The longest run of consecutive samples above the grid limit on any phase, in seconds.
fn longest_excess(samples: &[Sample]) -> f64 {
    let mut longest: f64 = 0.0;
    let mut since: Option<f64> = None;
    for s in samples {
        if s.total.iter().any(|&a| a > GRID_A + 0.05) {
            let start = *since.get_or_insert(s.t);
            longest = longest.max(s.t - start);
        } else {
            since = None;
        }
    }
    longest
}

#[test]
fn ten_chargers_share_the_grid_through_base_load_steps() {
    let port = free_port();
    let node = NodeProc::start("", &dlm_config(port, 3));
    // Base load per phase: 10 A (69 A left with the 1 A margin: 6.9 A each), then 50 A at 25 s
    // (29 A left: only four chargers get their 6 A, the others are paused), then 5 A at 45 s.
    let sim = start_sim(&node.charger_url, port, &["--base", "0:10,25:50,45:5"]);
    let mut polls = Vec::new();
    let samples = run_until(&sim, &node, 62.0, &mut polls);
    let window = |a: f64, b: f64| -> Vec<Sample> {
        samples
            .iter()
            .filter(|s| s.t >= a && s.t < b)
            .cloned()
            .collect()
    };

    // The grid limit: never exceeded for longer than 2 cycles (2 s), the step up included.
    let excess = longest_excess(&window(5.0, 62.0));
    assert!(
        excess <= 2.0,
        "the grid limit was exceeded for {excess:.1} s"
    );

    // The allocation never exceeds what the node believes is available, nor the grid limit.
    let mut allocating = 0;
    for p in &polls {
        if p["mode"] != "allocating" {
            continue;
        }
        allocating += 1;
        for i in 0..3 {
            let alloc = p["allocatedA"][i].as_f64().unwrap_or_default();
            let avail = p["availableA"][i].as_f64().unwrap_or_default();
            assert!(
                alloc <= avail + 0.15 && alloc <= GRID_A,
                "allocated {alloc} > available {avail}: {p}"
            );
        }
    }
    assert!(
        allocating > 20,
        "the node was allocating in only {allocating} polls"
    );

    // Steady state at 10 A base: the chargers' limits sum to at most the room left.
    let settled = window(18.0, 24.0);
    let sum = |s: &Sample| s.limits.iter().sum::<f64>();
    for s in &settled {
        assert!(
            sum(s) <= GRID_A - 10.0 + 0.15,
            "limits sum {} at t={}",
            sum(s),
            s.t
        );
    }
    // While paused chargers wait, the others still get at least their minimum.
    for s in &window(30.0, 44.0) {
        let running: Vec<f64> = s.limits.iter().copied().filter(|&l| l > 0.0).collect();
        assert!(
            running.iter().all(|&l| l >= 6.0) && running.len() < CHARGERS,
            "at t={} with 29 A left: {:?}",
            s.t,
            s.limits
        );
    }
    // No flapping: while the load is steady, no charger's limit changes.
    let (first, last) = (&settled[0], &settled[settled.len() - 1]);
    assert_eq!(
        first.limits, last.limits,
        "limits changed during a steady base load (t {}..{})",
        first.t, last.t
    );

    // After the drop to 5 A at 45 s, capacity is redistributed within 5 s: 74 A per phase
    // left, demand 160 A, so the limits must sum to nearly 74.
    let after = window(50.0, 51.0);
    assert!(!after.is_empty());
    for s in &after {
        assert!(
            sum(s) >= 0.85 * 74.0,
            "5 s after the drop the limits sum to only {:.1} A (t={})",
            sum(s),
            s.t
        );
    }
    assert_eq!(samples.last().map(|s| s.limits.len()), Some(CHARGERS));
}

#[test]
fn a_lost_meter_puts_every_charger_on_the_safe_limit() {
    let port = free_port();
    let stale_s = 3.0;
    let node = NodeProc::start("", &dlm_config(port, 3));
    let sim = start_sim(
        &node.charger_url,
        port,
        &["--base", "0:5", "--meter-stop-after-s", "15"],
    );
    let mut polls = Vec::new();
    let samples = run_until(&sim, &node, 25.0, &mut polls);
    // Before the loss the chargers were above the safe limit (74 A over 10 chargers).
    let before = samples
        .iter()
        .rfind(|s| s.t < 15.0)
        .expect("samples before the loss");
    assert!(
        before.limits.iter().all(|&l| l > SAFE_A),
        "before the loss: {:?}",
        before.limits
    );
    // Within stale_s + 1 cycle (+0.5 s for the profiles to travel) all are at the safe limit.
    let budget = 15.0 + stale_s + 1.0 + 0.5;
    let at_safe = samples
        .iter()
        .find(|s| s.t >= 15.0 && s.limits.iter().all(|&l| (l - SAFE_A).abs() < 0.05))
        .map(|s| s.t);
    assert!(
        at_safe.is_some_and(|t| t <= budget),
        "every charger at {SAFE_A} A by t={budget}: first seen at {at_safe:?}"
    );
    let status = node.get_json("/api/dlm");
    assert_eq!(status["mode"], "fail-safe", "{status}");
}
