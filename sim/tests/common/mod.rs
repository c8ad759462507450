//! What the sim end-to-end tests share: child processes that announce themselves with
//! `listening <name> <url>` lines and are killed when the test ends.
#![allow(dead_code)] // each test binary uses a different part of this harness

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SIM: &str = env!("CARGO_BIN_EXE_ocpp-sim");

pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process that is killed when the test ends, also when it panics.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// `ocpp-sim <args>`.
    pub fn sim(args: &[&str]) -> Proc {
        Proc::spawn(Path::new(SIM), args)
    }

    pub fn spawn(program: &Path, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        let stdout = child.stdout.take().unwrap();
        Proc {
            child,
            lines: forward_lines(stdout),
        }
    }

    /// The next stdout line, or a panic after `LINE_TIMEOUT`.
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(LINE_TIMEOUT)
            .expect("no line on stdout in time (or the process exited)")
    }

    /// The URL of the `listening <name> <url>` line, which must be the next line.
    pub fn first_listening(&self, name: &str) -> String {
        let line = self.line();
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("listening"), "{line}");
        assert_eq!(words.next(), Some(name), "{line}");
        words.next().unwrap().to_owned()
    }

    /// The URL of the first `listening <name> <url>` line for `name`, skipping other lines.
    pub fn listening(&self, name: &str) -> String {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `listening {name}` line"));
            let mut words = line.split_whitespace();
            if words.next() == Some("listening") && words.next() == Some(name) {
                return words.next().unwrap().to_owned();
            }
        }
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit on its own, up to `LINE_TIMEOUT`.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads stdout on a thread so that waiting for a line can time out.
fn forward_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn parse_json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}
