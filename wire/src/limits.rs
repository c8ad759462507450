/// Bounds applied while decoding, before anything is allocated for the bounded thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame, in bytes (text or binary).
    pub max_frame_bytes: usize,
    /// Longest message id, in bytes. OCPP says 36 characters; a little slack for odd peers.
    pub max_id_bytes: usize,
    /// Longest action name, in bytes.
    pub max_action_bytes: usize,
    /// Most elements in a `dest` or `path`: the hop limit.
    pub max_path_len: usize,
    /// Longest node id inside `dest` or `path`, in bytes.
    pub max_node_id_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_id_bytes: 64,
            max_action_bytes: 64,
            max_path_len: 16,
            max_node_id_bytes: 128,
        }
    }
}
