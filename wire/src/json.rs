use std::fmt;

use serde_json::value::RawValue;

/// A JSON value kept as the exact bytes received. Equality is byte equality, which is what a
/// pass-through relay must preserve (two encodings of one value are different frames to a signer).
#[derive(Clone, Copy)]
pub struct Json<'a>(&'a RawValue);

impl<'a> Json<'a> {
    pub fn new(raw: &'a RawValue) -> Self {
        Json(raw)
    }

    /// The JSON text.
    pub fn get(&self) -> &'a str {
        self.0.get()
    }

    pub fn raw(&self) -> &'a RawValue {
        self.0
    }

    pub fn is_object(&self) -> bool {
        self.0.get().starts_with('{')
    }
}

impl<'a> From<&'a RawValue> for Json<'a> {
    fn from(raw: &'a RawValue) -> Self {
        Json(raw)
    }
}

impl PartialEq for Json<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Json<'_> {}

impl fmt::Debug for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}
