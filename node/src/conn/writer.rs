//! The order in which one link writes what is queued for it: control frames (every text frame:
//! CALLs, answers, announcements) before bulk frames (binary file chunks), and the bulk streams
//! in turn, one frame each, so a 1 MiB transfer never holds up a Heartbeat by more than one
//! chunk, and one transfer never starves another.

use std::collections::VecDeque;

use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::engine::Outbound;

/// Most bulk bytes taken off the bulk queue ahead of writing; beyond it the writer leaves bulk
/// frames in their (small, bounded) channel, so memory stays bounded whatever is sent.
pub const BULK_AHEAD_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Writer {
    control: VecDeque<Message>,
    /// (stream, its frames), in turn order.
    bulk: VecDeque<(u64, VecDeque<Bytes>)>,
    bulk_bytes: usize,
}

impl Writer {
    pub fn push(&mut self, out: Outbound) {
        match out {
            Outbound::Text(text) => self.control.push_back(Message::text(text)),
            Outbound::Binary { bytes, stream } => {
                self.bulk_bytes += bytes.len();
                match self.bulk.iter_mut().find(|(s, _)| *s == stream) {
                    Some((_, frames)) => frames.push_back(bytes),
                    None => self.bulk.push_back((stream, VecDeque::from([bytes]))),
                }
            }
        }
    }

    /// Whether more bulk frames may be taken off their channel now.
    pub fn takes_bulk(&self) -> bool {
        self.bulk_bytes < BULK_AHEAD_BYTES
    }

    /// Control frames waiting to be written.
    pub fn control_len(&self) -> usize {
        self.control.len()
    }

    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.bulk.is_empty()
    }

    /// The next frames to write in one go: every queued control frame (up to `max`), then one
    /// bulk frame of the stream whose turn it is.
    pub fn batch(&mut self, max: usize) -> Vec<Message> {
        let n = self.control.len().min(max);
        let mut out: Vec<Message> = self.control.drain(..n).collect();
        if out.len() < max
            && let Some((stream, mut frames)) = self.bulk.pop_front()
        {
            if let Some(bytes) = frames.pop_front() {
                self.bulk_bytes -= bytes.len();
                out.push(Message::Binary(bytes));
            }
            if !frames.is_empty() {
                self.bulk.push_back((stream, frames));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(stream: u64, tag: u8) -> Outbound {
        Outbound::Binary {
            bytes: Bytes::from(vec![tag; 1000]),
            stream,
        }
    }

    fn describe(batch: &[Message]) -> Vec<String> {
        batch
            .iter()
            .map(|m| match m {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => format!("bin{}", b[0]),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn control_goes_first_and_bulk_streams_take_turns() {
        let mut w = Writer::default();
        w.push(bin(1, 10));
        w.push(bin(1, 11));
        w.push(bin(2, 20));
        w.push(Outbound::Text("hb".into()));
        assert_eq!(describe(&w.batch(64)), ["hb", "bin10"]);
        w.push(Outbound::Text("hb2".into()));
        assert_eq!(describe(&w.batch(64)), ["hb2", "bin20"], "stream 2's turn");
        assert_eq!(describe(&w.batch(64)), ["bin11"]);
        assert!(w.is_empty());
        assert!(w.takes_bulk());
    }

    #[test]
    fn bulk_ahead_is_bounded() {
        let mut w = Writer::default();
        while w.takes_bulk() {
            w.push(Outbound::Binary {
                bytes: Bytes::from(vec![0; 64 * 1024]),
                stream: 1,
            });
        }
        assert!(w.bulk_bytes >= BULK_AHEAD_BYTES);
        assert!(w.bulk_bytes < BULK_AHEAD_BYTES + 64 * 1024);
    }
}
