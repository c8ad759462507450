use std::borrow::Cow;
use std::fmt;

/// A `dest` or `path` element list of an overlay frame.
///
/// On the wire it is a string (one element) or an array. `dest` as an array is an explicit source
/// route whose first element is the next hop; `path` lists the originator first, then each node
/// that forwarded the frame. Ids are compared byte for byte: no case folding, so two identities
/// can never alias each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route<'a>(Vec<Cow<'a, str>>);

impl<'a> Route<'a> {
    /// A one-element route. Callers validate the id; the decoders do it for received frames.
    pub fn single(id: impl Into<Cow<'a, str>>) -> Self {
        Route(vec![id.into()])
    }

    /// `None` when `ids` is empty: a route always names at least one node.
    pub fn from_ids(ids: Vec<Cow<'a, str>>) -> Option<Self> {
        (!ids.is_empty()).then_some(Route(ids))
    }

    pub fn ids(&self) -> &[Cow<'a, str>] {
        &self.0
    }

    /// First element: the originator of a `path`, the next hop of a `dest`.
    pub fn first(&self) -> &str {
        &self.0[0]
    }

    /// Last element: the node the frame came from, for a `path`.
    pub fn last(&self) -> &str {
        &self.0[self.0.len() - 1]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true; present because clippy expects it next to `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|x| x == id)
    }

    pub fn push(&mut self, id: impl Into<Cow<'a, str>>) {
        self.0.push(id.into());
    }

    pub fn into_owned(self) -> Route<'static> {
        Route(
            self.0
                .into_iter()
                .map(|c| Cow::Owned(c.into_owned()))
                .collect(),
        )
    }

    /// JSON form: a string when there is one element (as §3.1 asks of senders), else an array.
    pub(crate) fn write_json(&self, out: &mut String) {
        if let [only] = self.0.as_slice() {
            crate::text::write_json_str(out, only);
            return;
        }
        out.push('[');
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            crate::text::write_json_str(out, id);
        }
        out.push(']');
    }
}

impl fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" > ")?;
            }
            f.write_str(id)?;
        }
        Ok(())
    }
}
