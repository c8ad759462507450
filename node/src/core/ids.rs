//! UUID v4 message ids (§6.1) without a system call each: a SplitMix64 stream seeded once from
//! the OS. Ids need to be unique, not secret: 122 random bits from a fresh seed per process
//! start do that, across restarts too.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct IdGen(AtomicU64);

impl Default for IdGen {
    fn default() -> Self {
        IdGen::new()
    }
}

impl IdGen {
    pub fn new() -> IdGen {
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        IdGen(AtomicU64::new(seed))
    }

    fn next_u64(&self) -> u64 {
        let s = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next(&self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::IdGen;

    #[test]
    fn ids_are_distinct_uuid_v4() {
        let ids = IdGen::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = ids.next();
            let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert_eq!(id.len(), 36);
            assert!(seen.insert(id), "duplicate id");
        }
    }
}
