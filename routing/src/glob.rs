//! Charger-id globs, for node allow-lists and static prefix rules.
//!
//! `*` matches any run of characters (also none), `?` exactly one character; everything else
//! matches itself, byte for byte. There is no escape and no case folding: ids are identities
//! (ARCHITECTURE §3.1), and `acme-1` must never match a rule written for `ACME-1`.

use std::fmt;

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    pattern: String,
    literal_chars: usize,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("empty glob pattern")]
    Empty,
    #[error("glob pattern of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
}

impl Glob {
    /// Longest accepted pattern. Matching is O(pattern × id); the bound keeps that small even for
    /// patterns that come from a hostile config reload.
    pub const MAX_LEN: usize = 256;

    pub fn new(pattern: impl Into<String>) -> Result<Self, GlobError> {
        let pattern = pattern.into();
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.len() > Self::MAX_LEN {
            return Err(GlobError::TooLong {
                len: pattern.len(),
                max: Self::MAX_LEN,
            });
        }
        let literal_chars = pattern.chars().filter(|c| !matches!(c, '*' | '?')).count();
        Ok(Glob {
            pattern,
            literal_chars,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Number of non-wildcard characters: how specific the rule is. The table prefers the
    /// matching rule with the most, which for `PREFIX*` rules is longest-prefix-match.
    pub fn specificity(&self) -> usize {
        self.literal_chars
    }

    /// True when the pattern has no wildcard, so it matches exactly one id.
    pub fn is_literal(&self) -> bool {
        self.literal_chars == self.pattern.chars().count()
    }

    /// Whether `id` matches the whole pattern.
    pub fn matches(&self, id: &str) -> bool {
        matches(&self.pattern, id)
    }
}

/// Whether `id` matches the whole of `pattern`, for callers that keep patterns as plain strings
/// (the Modbus allow-list). [`Glob::new`] bounds a pattern's length; such callers bound theirs.
///
/// Greedy two-cursor matching that backtracks only to the most recent `*`: linear in the
/// common case and O(pattern × id) at worst, never exponential, with no allocation.
pub fn matches(pattern: &str, id: &str) -> bool {
    let p = pattern.as_bytes();
    let t = id.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Pattern index just after the last `*`, and the id index that `*` currently extends to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    pi += 1;
                    star = Some((pi, ti));
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += utf8_len(t[ti]);
                    continue;
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            // Let the last `*` swallow one more character and retry from just after it.
            Some((after_star, swallowed)) => {
                let next = swallowed + utf8_len(t[swallowed]);
                star = Some((after_star, next));
                pi = after_star;
                ti = next;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Length of the UTF-8 sequence that starts with `lead`. Both inputs are `&str`, so a literal
/// byte comparison can never stop inside a character of the id unless the pattern byte was a
/// continuation byte too, and `?`/`*` advance by whole characters.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xff => 4,
        // A continuation byte: only reachable mid-character, step one byte to resynchronise.
        _ => 1,
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl std::str::FromStr for Glob {
    type Err = GlobError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Glob::new(s)
    }
}

/// The charger ids a node peer may speak for and announce (ARCHITECTURE §6.2): any glob matches.
/// An empty list allows nothing, so a forgotten config line fails closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    globs: Vec<Glob>,
}

impl AllowList {
    pub fn new(globs: Vec<Glob>) -> Self {
        AllowList { globs }
    }

    /// Parses each pattern; the first bad one is the error.
    pub fn parse<I, S>(patterns: I) -> Result<Self, GlobError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let globs = patterns
            .into_iter()
            .map(Glob::new)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { globs })
    }

    /// Allows every id: for an uplink, whose frames legitimately start with `"CSMS"` or with
    /// ids this node cannot know in advance.
    pub fn any() -> Self {
        AllowList {
            globs: vec![Glob {
                pattern: "*".to_owned(),
                literal_chars: 0,
            }],
        }
    }

    pub fn allows(&self, id: &str) -> bool {
        self.globs.iter().any(|g| g.matches(id))
    }

    pub fn globs(&self) -> &[Glob] {
        &self.globs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(p: &str) -> Glob {
        match Glob::new(p) {
            Ok(g) => g,
            Err(e) => panic!("{p}: {e}"),
        }
    }

    /// Obviously-correct reference: recursion over characters.
    fn reference(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|k| reference(rest, &t[k..])),
            Some(('?', rest)) => !t.is_empty() && reference(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    #[test]
    fn literals_match_exactly_and_case_sensitively() {
        assert!(g("CP-1").matches("CP-1"));
        assert!(!g("CP-1").matches("cp-1"));
        assert!(!g("CP-1").matches("CP-10"));
        assert!(!g("CP-1").matches("CP-"));
        assert!(!g("CP-1").matches(""));
        assert!(g("CP-1").is_literal());
    }

    #[test]
    fn star_matches_any_run() {
        let p = g("ACME-*");
        assert!(p.matches("ACME-"));
        assert!(p.matches("ACME-001"));
        assert!(!p.matches("ACME"));
        assert!(!p.matches("acme-001"));
        assert!(g("*").matches(""));
        assert!(g("*").matches("anything"));
        assert!(g("a*b*c").matches("abc"));
        assert!(g("a*b*c").matches("aXXbYYc"));
        assert!(!g("a*b*c").matches("aXXbYY"));
        assert!(g("*-01").matches("site-3-01"));
        assert!(g("**").matches("x"));
        assert!(!g("ACME-*").is_literal());
    }

    #[test]
    fn question_mark_matches_one_character() {
        let p = g("CP-?");
        assert!(p.matches("CP-1"));
        assert!(!p.matches("CP-"));
        assert!(!p.matches("CP-12"));
        // One character, not one byte.
        assert!(p.matches("CP-é"));
        assert!(p.matches("CP-日"));
        assert!(g("?*").matches("日本"));
        assert!(!g("?").matches(""));
    }

    #[test]
    fn non_ascii_literals() {
        assert!(g("Zürich-*").matches("Zürich-7"));
        assert!(!g("Zürich-*").matches("Zurich-7"));
        assert!(g("*ü").matches("aü"));
        assert!(!g("*ü").matches("aû"));
    }

    #[test]
    fn specificity_counts_literal_characters() {
        assert_eq!(g("*").specificity(), 0);
        assert_eq!(g("AB*").specificity(), 2);
        assert_eq!(g("A?C*").specificity(), 2);
        assert_eq!(g("ABC").specificity(), 3);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        assert!(matches!(
            Glob::new("x".repeat(Glob::MAX_LEN + 1)),
            Err(GlobError::TooLong { .. })
        ));
        assert!(Glob::new("x".repeat(Glob::MAX_LEN)).is_ok());
    }

    #[test]
    fn allow_lists() {
        let empty = AllowList::default();
        assert!(!empty.allows("CP-1"));
        assert!(AllowList::any().allows("CSMS"));
        let list = match AllowList::parse(["ACME-*", "CP-?"]) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        assert!(list.allows("ACME-9"));
        assert!(list.allows("CP-7"));
        assert!(!list.allows("CP-77"));
        assert!(!list.allows("OTHER"));
        assert_eq!(list.globs().len(), 2);
        assert_eq!(AllowList::parse(["ok", ""]), Err(GlobError::Empty));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        // Exponential matchers die here; the two-cursor one does ~pattern × id steps.
        let p = g(&"*a".repeat(60));
        let id = "a".repeat(59) + "b";
        assert!(!p.matches(&id));
    }

    fn small_str(alphabet: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(alphabet.chars().collect::<Vec<_>>()),
            0..10,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn agrees_with_reference(p in small_str("ab*?é"), t in small_str("abé")) {
            prop_assume!(!p.is_empty());
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(g(&p).matches(&t), reference(&pc, &tc), "pattern {:?} id {:?}", p, t);
        }

        #[test]
        fn literal_pattern_matches_only_itself(a in "[ -~]{1,12}", b in "[ -~]{0,12}") {
            prop_assume!(!a.contains(['*', '?']));
            prop_assert!(g(&a).matches(&a));
            prop_assert_eq!(g(&a).matches(&b), a == b);
        }

        #[test]
        fn prefix_rule_is_starts_with(prefix in "[A-Za-z0-9-]{0,8}", id in "[A-Za-z0-9-]{0,12}") {
            let rule = g(&format!("{prefix}*"));
            prop_assert_eq!(rule.matches(&id), id.starts_with(&prefix));
        }

        #[test]
        fn never_panics(p in "\\PC{1,20}", t in "\\PC{0,20}") {
            let _ = g(&p).matches(&t);
        }
    }
}
