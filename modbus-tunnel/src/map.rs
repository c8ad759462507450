//! Meter register maps: which registers hold a grid meter's currents, voltages, power and
//! energy, and how to decode and sanity-check them.
//!
//! Dynamic load management trusts these numbers to keep a site under its connection limit, so a
//! wrong map must fail loudly rather than yield plausible-looking junk: every value is checked
//! against plausible ranges, a 32-bit value that only makes sense with its words swapped is
//! reported as a word-order mistake with the fix, SunSpec "not implemented" sentinels are
//! errors, and [`Plausibility`] catches energy running backwards across readings.
//!
//! Maps are TOML data; the built-in ones live in `modbus-tunnel/maps/` (the format is documented
//! in `maps/generic.toml`) and user maps load with [`Map::from_toml`].

use std::collections::BTreeSet;

use serde::Deserialize;
use thiserror::Error;

use crate::pdu::{MAX_REGISTERS, ReadKind, ReadRequest};

const BUILTIN: [(&str, &str); 6] = [
    ("sunspec-201", include_str!("../maps/sunspec-201.toml")),
    ("sunspec-202", include_str!("../maps/sunspec-202.toml")),
    ("sunspec-203", include_str!("../maps/sunspec-203.toml")),
    ("sunspec-204", include_str!("../maps/sunspec-204.toml")),
    ("sdm630", include_str!("../maps/sdm630.toml")),
    ("generic", include_str!("../maps/generic.toml")),
];

/// Which register table a map reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    Holding,
    Input,
}

impl RegisterKind {
    pub fn read_kind(self) -> ReadKind {
        match self {
            Self::Holding => ReadKind::HoldingRegisters,
            Self::Input => ReadKind::InputRegisters,
        }
    }
}

/// Order of the two registers of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word first (Modbus convention, SunSpec, Eastron).
    #[default]
    Big,
    /// Low word first.
    Little,
}

impl WordOrder {
    fn other(self) -> Self {
        match self {
            Self::Big => Self::Little,
            Self::Little => Self::Big,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Big => "big",
            Self::Little => "little",
        }
    }
}

/// Register value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    U16,
    I16,
    #[serde(alias = "acc32")]
    U32,
    I32,
    #[serde(alias = "float32")]
    F32,
}

impl ValueType {
    fn registers(self) -> u16 {
        match self {
            Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
        }
    }
}

/// Where and how one quantity is stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// Address relative to the map's `base_address`.
    pub address: u16,
    #[serde(rename = "type")]
    pub ty: ValueType,
    /// Fixed multiplier (e.g. 1000 for kWh to Wh).
    #[serde(default = "one")]
    pub scale: f64,
    /// Address (relative) of a SunSpec `sunssf` register: the value is multiplied by 10^sf.
    #[serde(default)]
    pub scale_factor: Option<u16>,
    /// Overrides the map's word order for this point.
    #[serde(default)]
    pub word_order: Option<WordOrder>,
}

fn one() -> f64 {
    1.0
}
fn default_voltage_min() -> f64 {
    80.0
}
fn default_voltage_max() -> f64 {
    300.0
}
fn default_max_block() -> u16 {
    MAX_REGISTERS
}
fn default_max_gap() -> u16 {
    16
}

/// A register that must hold a fixed value (a model id), checked on every decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub address: u16,
    pub value: u16,
}

/// A meter register map. See `maps/generic.toml` for the file format.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Map {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub register_kind: RegisterKind,
    #[serde(default)]
    pub base_address: u16,
    #[serde(default)]
    pub word_order: WordOrder,
    pub max_current_a: f64,
    #[serde(default = "default_voltage_min")]
    pub voltage_min_v: f64,
    #[serde(default = "default_voltage_max")]
    pub voltage_max_v: f64,
    #[serde(default)]
    pub max_power_w: Option<f64>,
    #[serde(default)]
    pub max_energy_wh: Option<f64>,
    #[serde(default = "default_max_block")]
    pub max_block: u16,
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    #[serde(default)]
    pub expect: Vec<Expect>,
    pub current_l1: Point,
    #[serde(default)]
    pub current_l2: Option<Point>,
    #[serde(default)]
    pub current_l3: Option<Point>,
    pub voltage_l1: Point,
    #[serde(default)]
    pub voltage_l2: Option<Point>,
    #[serde(default)]
    pub voltage_l3: Option<Point>,
    pub power: Point,
    pub energy_import: Point,
}

/// One decoded meter reading. Phases a map does not have read as 0.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reading {
    pub current_a: [f64; 3],
    pub voltage_v: [f64; 3],
    pub power_w: f64,
    pub energy_wh: f64,
}

/// Why a map did not load.
#[derive(Debug, Error)]
pub enum MapError {
    #[error("meter map: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("no built-in meter map {0:?} (known: {known})", known = builtin_list())]
    UnknownBuiltin(String),
    #[error("meter map {map:?}: {problem}")]
    Invalid { map: String, problem: String },
}

fn builtin_list() -> String {
    Map::builtin_names().join(", ")
}

/// Why registers did not decode into a trustworthy reading.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MeterError {
    #[error("{quantity} = {value} is implausible (expected {range})")]
    Implausible {
        quantity: String,
        value: f64,
        range: String,
    },
    #[error("{quantity}: {hint}")]
    WordOrder { quantity: String, hint: String },
    #[error("{quantity} is not implemented by the meter (not-implemented sentinel)")]
    NotImplemented { quantity: String },
    #[error("{quantity}: register {address} was not among the registers read")]
    Missing { quantity: String, address: u16 },
    #[error("register {address} holds {found}, expected {expected} (wrong map or base address?)")]
    Identity {
        address: u16,
        expected: u16,
        found: u16,
    },
    #[error("energy ran backwards from {previous} Wh to {current} Wh")]
    EnergyBackwards { previous: f64, current: f64 },
}

/// Plausible interval of one quantity.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: f64,
    max: f64,
    unit: &'static str,
}

impl Bounds {
    fn contains(&self, v: f64) -> bool {
        v.is_finite() && v >= self.min && v <= self.max
    }

    fn describe(&self) -> String {
        format!("{} to {} {}", self.min, self.max, self.unit)
    }
}

impl Map {
    /// Names of the built-in maps.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(name, _)| *name).collect()
    }

    /// A built-in map by name (`sunspec-201` … `sunspec-204`, `sdm630`, `generic`).
    pub fn builtin(name: &str) -> Result<Self, MapError> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| MapError::UnknownBuiltin(name.to_owned()))?;
        Self::from_toml(text)
    }

    /// Parses and validates a map file.
    pub fn from_toml(text: &str) -> Result<Self, MapError> {
        let map: Self = toml::from_str(text)?;
        map.validate()?;
        Ok(map)
    }

    /// The same map with the block at another base address (SunSpec devices with other models
    /// before the meter model).
    pub fn with_base_address(mut self, base_address: u16) -> Result<Self, MapError> {
        self.base_address = base_address;
        self.validate()?;
        Ok(self)
    }

    /// The same map with another current plausibility bound (e.g. a CT-connected meter).
    pub fn with_max_current_a(mut self, max_current_a: f64) -> Result<Self, MapError> {
        self.max_current_a = max_current_a;
        self.validate()?;
        Ok(self)
    }

    /// The Modbus read kind of this map's registers.
    pub fn read_kind(&self) -> ReadKind {
        self.register_kind.read_kind()
    }

    fn invalid(&self, problem: impl Into<String>) -> MapError {
        MapError::Invalid {
            map: self.name.clone(),
            problem: problem.into(),
        }
    }

    fn points(&self) -> Vec<(&'static str, &Point)> {
        let optional = [
            ("current_l2", &self.current_l2),
            ("current_l3", &self.current_l3),
            ("voltage_l2", &self.voltage_l2),
            ("voltage_l3", &self.voltage_l3),
        ];
        let mut points = vec![
            ("current_l1", &self.current_l1),
            ("voltage_l1", &self.voltage_l1),
            ("power", &self.power),
            ("energy_import", &self.energy_import),
        ];
        points.extend(
            optional
                .into_iter()
                .filter_map(|(name, p)| p.as_ref().map(|p| (name, p))),
        );
        points
    }

    /// Absolute address of a relative one; validated maps never overflow.
    fn absolute(&self, relative: u16) -> Option<u16> {
        self.base_address.checked_add(relative)
    }

    fn validate(&self) -> Result<(), MapError> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.max_current_a) {
            return Err(self.invalid("max_current_a must be a positive number"));
        }
        if !(self.voltage_min_v.is_finite()
            && self.voltage_max_v.is_finite()
            && self.voltage_min_v >= 0.0
            && self.voltage_min_v < self.voltage_max_v)
        {
            return Err(self.invalid("voltage_min_v must be below voltage_max_v"));
        }
        for (name, v) in [
            ("max_power_w", self.max_power_w),
            ("max_energy_wh", self.max_energy_wh),
        ] {
            if v.is_some_and(|v| !positive(v)) {
                return Err(self.invalid(format!("{name} must be a positive number")));
            }
        }
        if self.max_block == 0 || self.max_block > MAX_REGISTERS {
            return Err(self.invalid(format!("max_block must be 1 to {MAX_REGISTERS}")));
        }
        for (name, p) in self.points() {
            if !(p.scale.is_finite() && p.scale != 0.0) {
                return Err(self.invalid(format!("{name}: scale must be a non-zero number")));
            }
            let last = p.address.checked_add(p.ty.registers() - 1);
            if last.and_then(|l| self.absolute(l)).is_none() {
                return Err(self.invalid(format!("{name}: address runs past register 65535")));
            }
            if p.scale_factor.is_some_and(|sf| self.absolute(sf).is_none()) {
                return Err(self.invalid(format!(
                    "{name}: scale_factor register runs past register 65535"
                )));
            }
        }
        if self
            .expect
            .iter()
            .any(|e| self.absolute(e.address).is_none())
        {
            return Err(self.invalid("expect: address runs past register 65535"));
        }
        Ok(())
    }

    /// Every absolute register address a decode needs.
    fn needed(&self) -> BTreeSet<u16> {
        let mut needed = BTreeSet::new();
        for (_, p) in self.points() {
            for i in 0..p.ty.registers() {
                needed.extend(p.address.checked_add(i).and_then(|a| self.absolute(a)));
            }
            needed.extend(p.scale_factor.and_then(|sf| self.absolute(sf)));
        }
        needed.extend(self.expect.iter().filter_map(|e| self.absolute(e.address)));
        needed
    }

    /// The reads to fetch everything [`Map::decode`] needs: contiguous blocks of at most
    /// `max_block` registers, bridging gaps of at most `max_gap` unneeded registers.
    pub fn reads(&self) -> Vec<ReadRequest> {
        let kind = self.read_kind();
        let mut blocks: Vec<ReadRequest> = Vec::new();
        for address in self.needed() {
            if let Some(block) = blocks.last_mut() {
                let last = block.last_address();
                let gap = u32::from(address) - u32::from(last) - 1;
                let span = u32::from(address) - u32::from(block.address) + 1;
                if gap <= u32::from(self.max_gap) && span <= u32::from(self.max_block) {
                    block.count = u16::try_from(span).unwrap_or(block.count);
                    continue;
                }
            }
            blocks.push(ReadRequest {
                kind,
                address,
                count: 1,
            });
        }
        blocks
    }

    /// Decodes fetched blocks (as returned by [`Map::reads`], or any covering set) into a
    /// checked reading.
    ///
    /// When a 32-bit point is implausible but every point decodes plausibly with the word order
    /// flipped, the error is [`MeterError::WordOrder`] with the setting to change. (One value
    /// alone is not enough evidence: 5000.0 with its words swapped reads 2.004.)
    pub fn decode(&self, blocks: &[(ReadRequest, Vec<u16>)]) -> Result<Reading, MeterError> {
        let regs = Registers {
            kind: self.read_kind(),
            blocks,
        };
        for e in &self.expect {
            let address = self.base_address.saturating_add(e.address);
            let found = regs.get("expect", address)?;
            if found != e.value {
                return Err(MeterError::Identity {
                    address,
                    expected: e.value,
                    found,
                });
            }
        }
        match self.decode_with(&regs, false) {
            Err(MeterError::Implausible {
                quantity, value, ..
            }) if self.is_32bit(&quantity) && self.decode_with(&regs, true).is_ok() => {
                Err(MeterError::WordOrder {
                    hint: format!(
                        "word order looks swapped ({quantity} reads {value}, every value is \
                         plausible with the words swapped); set word_order = \"{}\"",
                        self.word_order.other().name()
                    ),
                    quantity,
                })
            }
            other => other,
        }
    }

    fn is_32bit(&self, quantity: &str) -> bool {
        self.points()
            .iter()
            .any(|(name, p)| *name == quantity && p.ty.registers() == 2)
    }

    fn decode_with(&self, regs: &Registers<'_>, flip: bool) -> Result<Reading, MeterError> {
        let current = Bounds {
            min: -self.max_current_a,
            max: self.max_current_a,
            unit: "A",
        };
        let voltage = Bounds {
            min: self.voltage_min_v,
            max: self.voltage_max_v,
            unit: "V",
        };
        let max_power = self
            .max_power_w
            .unwrap_or(3.0 * self.max_current_a * self.voltage_max_v);
        let power = Bounds {
            min: -max_power,
            max: max_power,
            unit: "W",
        };
        let energy = Bounds {
            min: 0.0,
            max: self.max_energy_wh.unwrap_or(1e10),
            unit: "Wh",
        };
        let value = |name, p: &Point, b| self.value(regs, name, p, b, flip);
        let opt = |name, p: &Option<Point>, b| match p {
            Some(p) => value(name, p, b),
            None => Ok(0.0),
        };
        Ok(Reading {
            current_a: [
                value("current_l1", &self.current_l1, current)?,
                opt("current_l2", &self.current_l2, current)?,
                opt("current_l3", &self.current_l3, current)?,
            ],
            voltage_v: [
                value("voltage_l1", &self.voltage_l1, voltage)?,
                opt("voltage_l2", &self.voltage_l2, voltage)?,
                opt("voltage_l3", &self.voltage_l3, voltage)?,
            ],
            power_w: value("power", &self.power, power)?,
            energy_wh: value("energy_import", &self.energy_import, energy)?,
        })
    }

    fn value(
        &self,
        regs: &Registers<'_>,
        quantity: &str,
        p: &Point,
        bounds: Bounds,
        flip: bool,
    ) -> Result<f64, MeterError> {
        let not_implemented = || MeterError::NotImplemented {
            quantity: quantity.to_owned(),
        };
        let address = self.base_address.saturating_add(p.address);
        let mut multiplier = p.scale;
        if let Some(sf) = p.scale_factor {
            let sf_quantity = format!("{quantity} scale factor");
            let raw = regs.get(&sf_quantity, self.base_address.saturating_add(sf))?;
            if raw == 0x8000 {
                return Err(MeterError::NotImplemented {
                    quantity: sf_quantity,
                });
            }
            // sunssf is int16; SunSpec allows -10..=10.
            let sf = i16::from_ne_bytes(raw.to_ne_bytes());
            if !(-10..=10).contains(&sf) {
                return Err(MeterError::Implausible {
                    quantity: sf_quantity,
                    value: f64::from(sf),
                    range: "-10 to 10".to_owned(),
                });
            }
            multiplier *= 10f64.powi(i32::from(sf));
        }
        let w0 = regs.get(quantity, address)?;
        let value = match p.ty {
            ValueType::U16 => {
                if w0 == 0xFFFF {
                    return Err(not_implemented());
                }
                f64::from(w0)
            }
            ValueType::I16 => {
                if w0 == 0x8000 {
                    return Err(not_implemented());
                }
                f64::from(i16::from_ne_bytes(w0.to_ne_bytes()))
            }
            ValueType::U32 | ValueType::I32 | ValueType::F32 => {
                let w1 = regs.get(quantity, address.saturating_add(1))?;
                let mut order = p.word_order.unwrap_or(self.word_order);
                if flip {
                    order = order.other();
                }
                let (hi, lo) = match order {
                    WordOrder::Big => (w0, w1),
                    WordOrder::Little => (w1, w0),
                };
                let bits = (u32::from(hi) << 16) | u32::from(lo);
                let sentinel = match p.ty {
                    ValueType::U32 => 0xFFFF_FFFF,
                    ValueType::I32 => 0x8000_0000,
                    _ => 0x7FC0_0000,
                };
                if bits == sentinel {
                    return Err(not_implemented());
                }
                if subnormal(p.ty, bits) {
                    return Err(MeterError::Implausible {
                        quantity: quantity.to_owned(),
                        value: decode32(p.ty, bits),
                        range: bounds.describe(),
                    });
                }
                decode32(p.ty, bits)
            }
        };
        let value = value * multiplier;
        if bounds.contains(value) {
            Ok(value)
        } else {
            Err(MeterError::Implausible {
                quantity: quantity.to_owned(),
                value,
                range: bounds.describe(),
            })
        }
    }
}

/// A non-zero subnormal float32: no meter reports 1e-40 of anything, but a float whose words
/// are swapped often decodes to one (230.0 = 0x4366_0000 reads as 0x0000_4366).
fn subnormal(ty: ValueType, bits: u32) -> bool {
    ty == ValueType::F32 && f32::from_bits(bits).is_subnormal()
}

fn decode32(ty: ValueType, bits: u32) -> f64 {
    match ty {
        ValueType::I32 => f64::from(i32::from_ne_bytes(bits.to_ne_bytes())),
        ValueType::F32 => f64::from(f32::from_bits(bits)),
        _ => f64::from(bits),
    }
}

/// Register lookup over fetched blocks.
struct Registers<'a> {
    kind: ReadKind,
    blocks: &'a [(ReadRequest, Vec<u16>)],
}

impl Registers<'_> {
    fn get(&self, quantity: &str, address: u16) -> Result<u16, MeterError> {
        self.blocks
            .iter()
            .filter(|(req, _)| req.kind == self.kind && address >= req.address)
            .find_map(|(req, words)| {
                let index = usize::from(address - req.address);
                (index < usize::from(req.count))
                    .then(|| words.get(index).copied())
                    .flatten()
            })
            .ok_or_else(|| MeterError::Missing {
                quantity: quantity.to_owned(),
                address,
            })
    }
}

/// Checks a series of readings of one meter: energy must not run backwards.
#[derive(Debug, Clone, Default)]
pub struct Plausibility {
    last_energy_wh: Option<f64>,
}

impl Plausibility {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `r` against the last accepted reading; only accepted readings become the
    /// reference for the next one.
    pub fn check_next(&mut self, r: &Reading) -> Result<(), MeterError> {
        if let Some(previous) = self.last_energy_wh {
            if r.energy_wh < previous {
                return Err(MeterError::EnergyBackwards {
                    previous,
                    current: r.energy_wh,
                });
            }
        }
        self.last_energy_wh = Some(r.energy_wh);
        Ok(())
    }

    /// Forgets the history (meter replaced or reset).
    pub fn reset(&mut self) {
        self.last_energy_wh = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register image covering `[start, start + len)` for a map's kind.
    struct Image {
        kind: ReadKind,
        start: u16,
        words: Vec<u16>,
    }

    impl Image {
        fn new(map: &Map, start: u16, len: u16) -> Self {
            Self {
                kind: map.read_kind(),
                start,
                words: vec![0; usize::from(len)],
            }
        }

        fn set(&mut self, address: u16, word: u16) {
            self.words[usize::from(address - self.start)] = word;
        }

        fn set_i16(&mut self, address: u16, v: i16) {
            self.set(address, u16::from_ne_bytes(v.to_ne_bytes()));
        }

        fn set_u32(&mut self, address: u16, v: u32) {
            self.set(address, (v >> 16) as u16);
            self.set(address + 1, v as u16);
        }

        fn set_f32(&mut self, address: u16, v: f32) {
            self.set_u32(address, v.to_bits());
        }

        /// The blocks `map.reads()` asks for, cut from this image.
        fn blocks(&self, map: &Map) -> Vec<(ReadRequest, Vec<u16>)> {
            map.reads()
                .into_iter()
                .map(|req| {
                    assert_eq!(req.kind, self.kind);
                    let from = usize::from(req.address - self.start);
                    (
                        req,
                        self.words[from..from + usize::from(req.count)].to_vec(),
                    )
                })
                .collect()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    fn assert_reading(r: &Reading, want: &Reading) {
        for i in 0..3 {
            assert!(
                close(r.current_a[i], want.current_a[i]),
                "{r:?} vs {want:?}"
            );
            assert!(
                close(r.voltage_v[i], want.voltage_v[i]),
                "{r:?} vs {want:?}"
            );
        }
        assert!(close(r.power_w, want.power_w), "{r:?} vs {want:?}");
        assert!(close(r.energy_wh, want.energy_wh), "{r:?} vs {want:?}");
    }

    /// SunSpec image: A_SF = -2, V_SF = -1, W_SF = 0, TotWh_SF = 1.
    fn sunspec_image(model: u16, phases: usize, voltage_offset: u16) -> (Map, Image, Reading) {
        let map = Map::builtin(&format!("sunspec-{model}")).expect("builtin");
        let base = map.base_address;
        let mut img = Image::new(&map, base, 105 + 2);
        img.set(base, model);
        img.set(base + 1, 105);
        img.set_i16(base + 6, -2);
        img.set_i16(base + 15, -1);
        img.set_i16(base + 22, 0);
        img.set_i16(base + 54, 1);
        let currents = [16.25, 15.5, 14.75];
        let voltages = [230.1, 229.4, 231.0];
        let mut want = Reading {
            power_w: 11040.0,
            energy_wh: 1_234_560.0,
            ..Reading::default()
        };
        for i in 0..phases {
            img.set_i16(base + 3 + i as u16, (currents[i] * 100.0) as i16);
            img.set_i16(
                base + voltage_offset + i as u16,
                (voltages[i] * 10.0) as i16,
            );
            want.current_a[i] = currents[i];
            want.voltage_v[i] = voltages[i];
        }
        img.set_i16(base + 18, 11040);
        img.set_u32(base + 46, 123_456);
        (map, img, want)
    }

    #[test]
    fn sunspec_maps_decode() {
        for (model, phases, voltage_offset) in [(201, 1, 8), (202, 2, 8), (203, 3, 8), (204, 3, 12)]
        {
            let (map, img, want) = sunspec_image(model, phases, voltage_offset);
            let reads = map.reads();
            assert_eq!(reads.len(), 1, "sunspec-{model}: {reads:?}");
            assert_eq!(reads[0].address, 40070);
            assert_eq!(reads[0].count, 55);
            let r = map.decode(&img.blocks(&map)).expect("decodes");
            assert_reading(&r, &want);
        }
    }

    #[test]
    fn sunspec_wrong_model_or_base_is_refused() {
        let (map, img, _) = sunspec_image(203, 3, 8);
        let other = Map::builtin("sunspec-201").expect("builtin");
        assert_eq!(
            other.decode(&img.blocks(&other)),
            Err(MeterError::Identity {
                address: 40070,
                expected: 201,
                found: 203
            })
        );
        let moved = map.with_base_address(40188).expect("valid");
        assert_eq!(moved.reads()[0].address, 40188);
        assert!(matches!(
            moved.decode(&img.blocks(&Map::builtin("sunspec-203").expect("builtin"))),
            Err(MeterError::Missing { .. })
        ));
    }

    #[test]
    fn sunspec_not_implemented_is_an_error() {
        let (map, mut img, _) = sunspec_image(203, 3, 8);
        img.set(40070 + 5, 0x8000);
        assert_eq!(
            map.decode(&img.blocks(&map)),
            Err(MeterError::NotImplemented {
                quantity: "current_l3".into()
            })
        );
        let (map, mut img, _) = sunspec_image(203, 3, 8);
        img.set(40070 + 15, 0x8000);
        assert_eq!(
            map.decode(&img.blocks(&map)),
            Err(MeterError::NotImplemented {
                quantity: "voltage_l1 scale factor".into()
            })
        );
    }

    #[test]
    fn sunspec_wrong_scale_factor_is_implausible() {
        let (map, mut img, _) = sunspec_image(201, 1, 8);
        img.set_i16(40070 + 15, 0); // 2301 V
        let err = map.decode(&img.blocks(&map)).expect_err("implausible");
        assert!(
            matches!(&err, MeterError::Implausible { quantity, .. } if quantity == "voltage_l1"),
            "{err}"
        );
        assert!(err.to_string().contains("80 to 300 V"), "{err}");
    }

    fn float_image(map: &Map, want: &Reading, addrs: [u16; 8]) -> Image {
        let mut img = Image::new(map, 0, 0x50);
        for i in 0..3 {
            img.set_f32(addrs[i], want.voltage_v[i] as f32);
            img.set_f32(addrs[3 + i], want.current_a[i] as f32);
        }
        img.set_f32(addrs[6], want.power_w as f32);
        img.set_f32(addrs[7], (want.energy_wh / 1000.0) as f32);
        img
    }

    fn three_phase() -> Reading {
        Reading {
            current_a: [12.5, 8.25, 31.0],
            voltage_v: [230.5, 229.75, 231.25],
            power_w: 11_500.0,
            energy_wh: 4_567_250.0,
        }
    }

    const SDM630: [u16; 8] = [0x00, 0x02, 0x04, 0x06, 0x08, 0x0A, 0x34, 0x48];
    const GENERIC: [u16; 8] = [0, 2, 4, 6, 8, 10, 12, 14];

    #[test]
    fn sdm630_decodes() {
        let map = Map::builtin("sdm630").expect("builtin");
        assert_eq!(map.read_kind(), ReadKind::InputRegisters);
        let reads = map.reads();
        assert_eq!(
            reads
                .iter()
                .map(|r| (r.address, r.count))
                .collect::<Vec<_>>(),
            vec![(0x00, 12), (0x34, 2), (0x48, 2)]
        );
        let want = three_phase();
        let img = float_image(&map, &want, SDM630);
        assert_reading(&map.decode(&img.blocks(&map)).expect("decodes"), &want);
    }

    #[test]
    fn generic_decodes_in_one_read() {
        let map = Map::builtin("generic").expect("builtin");
        assert_eq!(map.read_kind(), ReadKind::HoldingRegisters);
        assert_eq!(
            map.reads(),
            vec![ReadRequest::new(ReadKind::HoldingRegisters, 0, 16).expect("valid")]
        );
        let want = three_phase();
        let img = float_image(&map, &want, GENERIC);
        assert_reading(&map.decode(&img.blocks(&map)).expect("decodes"), &want);
    }

    #[test]
    fn swapped_words_are_detected() {
        let map = Map::builtin("sdm630").expect("builtin");
        let want = three_phase();
        let mut img = float_image(&map, &want, SDM630);
        for w in img.words.chunks_exact_mut(2) {
            w.swap(0, 1);
        }
        let err = map.decode(&img.blocks(&map)).expect_err("swapped");
        match &err {
            MeterError::WordOrder { quantity, hint } => {
                assert_eq!(quantity, "current_l1");
                assert!(hint.contains("set word_order = \"little\""), "{hint}");
            }
            other => panic!("expected WordOrder, got {other:?}"),
        }
        // With the hint applied the same registers decode.
        let fixed = Map::from_toml(
            &include_str!("../maps/sdm630.toml")
                .replace("word_order = \"big\"", "word_order = \"little\""),
        )
        .expect("valid");
        assert_reading(&fixed.decode(&img.blocks(&fixed)).expect("decodes"), &want);
    }

    #[test]
    fn garbage_is_implausible_not_swapped() {
        let map = Map::builtin("generic").expect("builtin");
        let want = three_phase();
        let mut img = float_image(&map, &want, GENERIC);
        img.set_f32(6, 5000.0); // current_l1
        let err = map.decode(&img.blocks(&map)).expect_err("implausible");
        assert!(
            matches!(&err, MeterError::Implausible { quantity, .. } if quantity == "current_l1"),
            "{err}"
        );
        let mut img = float_image(&map, &want, GENERIC);
        img.set_u32(14, 0x7FC0_0000);
        assert_eq!(
            map.decode(&img.blocks(&map)),
            Err(MeterError::NotImplemented {
                quantity: "energy_import".into()
            })
        );
    }

    #[test]
    fn missing_blocks_are_reported() {
        let map = Map::builtin("sdm630").expect("builtin");
        let img = float_image(&map, &three_phase(), SDM630);
        let mut blocks = img.blocks(&map);
        blocks.pop();
        assert_eq!(
            map.decode(&blocks),
            Err(MeterError::Missing {
                quantity: "energy_import".into(),
                address: 0x48
            })
        );
        // Blocks of the wrong kind do not count.
        let mut wrong = img.blocks(&map);
        for (req, _) in &mut wrong {
            req.kind = ReadKind::HoldingRegisters;
        }
        assert!(matches!(
            map.decode(&wrong),
            Err(MeterError::Missing { .. })
        ));
    }

    #[test]
    fn all_builtins_load_and_unknown_is_an_error() {
        for name in Map::builtin_names() {
            let map = Map::builtin(name).expect(name);
            assert_eq!(map.name, name);
            assert!(map.reads().len() <= 3, "{name}");
        }
        let err = Map::builtin("sdm72").expect_err("unknown");
        assert!(err.to_string().contains("sdm630"), "{err}");
    }

    #[test]
    fn invalid_maps_are_rejected() {
        let generic = include_str!("../maps/generic.toml");
        let bad = generic.replace("max_current_a = 100.0", "max_current_a = -1.0");
        assert!(matches!(
            Map::from_toml(&bad),
            Err(MapError::Invalid { .. })
        ));
        let typo = generic.replace("type = \"f32\"", "type = \"float64\"");
        assert!(matches!(Map::from_toml(&typo), Err(MapError::Toml(_))));
        let overflow = Map::builtin("generic")
            .expect("builtin")
            .with_base_address(65530);
        assert!(matches!(overflow, Err(MapError::Invalid { .. })));
        let unknown = format!("{generic}\nbogus = 1\n");
        assert!(Map::from_toml(&unknown).is_err());
    }

    #[test]
    fn plausibility_catches_energy_running_backwards() {
        let mut p = Plausibility::new();
        let mut r = three_phase();
        assert_eq!(p.check_next(&r), Ok(()));
        r.energy_wh += 10.0;
        assert_eq!(p.check_next(&r), Ok(()));
        assert_eq!(p.check_next(&r), Ok(()));
        let mut back = r;
        back.energy_wh -= 1.0;
        assert_eq!(
            p.check_next(&back),
            Err(MeterError::EnergyBackwards {
                previous: r.energy_wh,
                current: back.energy_wh
            })
        );
        // The rejected reading did not become the reference.
        assert_eq!(p.check_next(&r), Ok(()));
        p.reset();
        assert_eq!(p.check_next(&back), Ok(()));
    }
}
