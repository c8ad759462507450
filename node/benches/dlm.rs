//! What one load-management cycle costs in the allocator alone, so the cycle period (and how
//! many chargers one local controller may manage) is chosen from a number, not a guess. The
//! sessions are mixed on purpose: single- and three-phase, several priorities, half with a
//! measured draw, more minimums than fit (so admission and rotation run), and the meter moves
//! a little every cycle so the shares and the hysteresis do real work.
//!
//! The second measurement is a whole cycle of the loop's own work at 100 chargers: the
//! controller's cycle (allocation, fail-safe and retry rules), the SetChargingProfile payload of
//! every command, the answers fed back, and the `/api/dlm` status document, i.e. everything the
//! loop does per cycle except waiting for the meter and the sockets.
//!
//! `cargo bench -p ocpp-node --bench dlm` (release); prints one line per measurement.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ocpp_node::config::DlmConfig;
use ocpp_node::dlm::allocate::{Allocator, SessionInput, Settings, Site};
use ocpp_node::dlm::control::{Controller, SiteEvent};
use ocpp_node::dlm::profile::{self, ProfileSpec};
use wire::OcppVersion;

fn sessions(n: usize) -> Vec<SessionInput> {
    (0..n)
        .map(|i| {
            let phases = match i % 4 {
                0 => [true, false, false],
                1 => [false, true, false],
                2 => [false, false, true],
                _ => [true, true, true],
            };
            SessionInput {
                id: format!("CP{i:05}"),
                phases,
                min_a: 6.0,
                max_a: [16.0, 32.0, 20.0][i % 3],
                priority: (i % 5) as u32 + 1,
                csms_limit_a: (i % 7 == 0).then_some(10.0),
                draw_a: (i % 2 == 0).then_some([
                    if phases[0] { 7.5 } else { 0.0 },
                    if phases[1] { 7.5 } else { 0.0 },
                    if phases[2] { 7.5 } else { 0.0 },
                ]),
            }
        })
        .collect()
}

fn run(n: usize, iterations: u32) {
    let sessions = sessions(n);
    let mut alloc = Allocator::new(Settings {
        deadband_a: 1.0,
        min_change_interval: Duration::from_secs(5),
        rotation: Duration::from_secs(300),
        margin_a: 2.0,
    });
    // About half the minimums fit, so some sessions are always paused.
    let grid = n as f64 * 2.5;
    let start = Instant::now();
    let mut paused = 0usize;
    let started = Instant::now();
    for it in 0..iterations {
        let now = start + Duration::from_secs(u64::from(it));
        let wobble = f64::from(it % 10);
        let site = Site {
            grid_limit_a: [grid; 3],
            meter_a: [
                n as f64 * 1.5 + wobble,
                n as f64 * 1.4,
                n as f64 * 1.6 - wobble,
            ],
        };
        let out = alloc.allocate(now, black_box(&site), black_box(&sessions));
        paused += out.decisions.iter().filter(|d| d.paused).count();
    }
    let elapsed = started.elapsed();
    let mean_us = elapsed.as_secs_f64() * 1e6 / f64::from(iterations);
    println!(
        "dlm allocate sessions={n} iterations={iterations} mean_us={mean_us:.1} paused_mean={:.0}",
        paused as f64 / f64::from(iterations)
    );
}

fn loop_cycle(n: usize, iterations: u32) {
    let config = DlmConfig {
        grid_limit_a: [n as f64 * 4.0; 3],
        ..DlmConfig::default()
    };
    let mut ctl = Controller::new(&config);
    for i in 0..n {
        let id = format!("CP{i:05}");
        ctl.event(SiteEvent::Connected(id.clone()));
        ctl.event(SiteEvent::Transaction {
            id: id.clone(),
            active: true,
        });
        ctl.event(SiteEvent::Draw { id, amps: [7.0; 3] });
    }
    let spec = ProfileSpec {
        purpose_v16: "TxDefaultProfile",
        purpose_v2: "ChargingStationMaxProfile",
        stack_level: 50,
    };
    let start = Instant::now();
    let mut commands = 0usize;
    let mut bytes = 0usize;
    let started = Instant::now();
    for it in 0..iterations {
        let now = start + Duration::from_secs(u64::from(it));
        // The building's load swings by 20 A every 10 cycles, so limits really change.
        let base = if it % 20 < 10 { 20.0 } else { 40.0 };
        ctl.reading(now, [base + n as f64 * 3.0; 3]);
        for c in ctl.cycle(now) {
            let version = if c.id.ends_with('0') {
                OcppVersion::V201
            } else {
                OcppVersion::V16
            };
            bytes += profile::set_profile(version, &spec, c.limit_a, "2026-12-07T00:00:00Z").len();
            ctl.done(now, &c.id, c.limit_a, true);
            commands += 1;
        }
        bytes += black_box(ctl.status(now)).to_string().len();
    }
    let elapsed = started.elapsed();
    let mean_us = elapsed.as_secs_f64() * 1e6 / f64::from(iterations);
    println!(
        "dlm loop cycle chargers={n} iterations={iterations} mean_us={mean_us:.1} profiles_per_cycle={:.1} bytes_per_cycle={}",
        commands as f64 / f64::from(iterations),
        bytes / iterations as usize
    );
}

fn main() {
    for (n, iterations) in [(100, 20_000), (1_000, 2_000)] {
        run(n, iterations);
    }
    loop_cycle(100, 5_000);
}
