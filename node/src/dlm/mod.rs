//! Dynamic load management: chargers share what the grid connection leaves after the
//! building's own load, read from the grid meter every cycle, and fall to a safe limit when the
//! meter cannot be trusted. The CSMS sees meter values every few minutes, far too slowly to
//! protect a fuse, so the local controller does it.
//!
//! * `allocate`: the pure allocator (fair shares per phase, minimums, rotation, hysteresis);
//! * `control`: the pure controller around it (fail-safe, safe limits first, CSMS limits);
//! * `profile`: the SetChargingProfile payloads it sends and the CSMS limits it reads;
//! * `observe`: the engine stage that watches the site's frames;
//! * `run`: the async loop that reads the meter and sends the profiles.

pub mod allocate;
pub mod control;
pub mod observe;
pub mod profile;
pub mod run;
