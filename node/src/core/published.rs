//! A JSON document that a background task replaces now and then (load management, once a
//! cycle) and the admin API reads. A lock is fine here: it is taken once per cycle and per
//! admin request, never on the frame path.

use std::sync::Mutex;

use serde_json::Value;

#[derive(Default)]
pub struct Published(Mutex<Value>);

impl Published {
    pub fn get(&self) -> Value {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, v: Value) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}
