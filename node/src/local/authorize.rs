//! The one place that decides an idTag's status when the node answers for the CSMS: the
//! configured local list first, then what the CSMS said recently (an edge learns it from the
//! answers it relays), then the configured default for unknown tags.

use std::collections::HashMap;

use crate::config::AuthConfig;

/// Most idTags remembered from the CSMS's answers for offline Authorize.
const AUTH_CACHE: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Authorizer {
    config: AuthConfig,
    learned: HashMap<String, String>,
}

impl Authorizer {
    pub fn new(config: AuthConfig) -> Self {
        Authorizer {
            config,
            learned: HashMap::new(),
        }
    }

    /// The status answered for `tag` now.
    pub fn status(&self, tag: &str) -> &str {
        if let Some(status) = self.config.local_list.get(tag) {
            return status.as_str();
        }
        self.learned
            .get(tag)
            .map_or(self.config.unknown_id_tag.as_str(), String::as_str)
    }

    /// Remembers what the CSMS answered for `tag`.
    pub fn learn(&mut self, tag: String, status: String) {
        if self.learned.len() >= AUTH_CACHE && !self.learned.contains_key(&tag) {
            // Bounded without bookkeeping per lookup: start over, the list refills online.
            self.learned.clear();
        }
        self.learned.insert(tag, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthStatus;

    #[test]
    fn local_list_then_learned_then_default() {
        let mut config = AuthConfig::default();
        config
            .local_list
            .insert("LOCAL".into(), AuthStatus::Blocked);
        let mut a = Authorizer::new(config);
        assert_eq!(a.status("LOCAL"), "Blocked");
        assert_eq!(a.status("X"), "Invalid");
        a.learn("X".into(), "Accepted".into());
        a.learn("LOCAL".into(), "Accepted".into());
        assert_eq!(a.status("X"), "Accepted");
        assert_eq!(a.status("LOCAL"), "Blocked", "the local list wins");
    }
}
