//! The live status line on a terminal: capacity, jobs running per node,
//! jobs done, local fallbacks. Redrawn in place on stderr.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::capacity::Capacity;

/// Counts from the job log, read as it grows.
#[derive(Debug, Default)]
pub struct Progress {
    joblog: PathBuf,
    offset: u64,
    partial: String,
    pub done: usize,
    pub local: usize,
    pub failed: usize,
    drawn: bool,
}

impl Progress {
    pub fn new(joblog: PathBuf) -> Self {
        Progress {
            joblog,
            ..Progress::default()
        }
    }

    /// Reads the job log lines added since the last call.
    pub fn update(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.joblog) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut added = String::new();
        if let Ok(n) = file.read_to_string(&mut added) {
            self.offset += n as u64;
        }
        self.partial.push_str(&added);
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            self.done += 1;
            match entry["placed"].as_str() {
                Some("local") => self.local += 1,
                Some("failed") => self.failed += 1,
                _ => {}
            }
        }
    }

    /// Redraws the line.
    pub fn draw(&mut self, capacity: Option<&Capacity>) {
        let mut line = String::from("mpmake: ");
        if let Some(capacity) = capacity {
            line.push_str(&format!("capacity {}", capacity.slots));
            let running: Vec<String> = capacity
                .nodes
                .iter()
                .map(|n| format!("{} {}/{}", n.node, n.running, n.slots))
                .collect();
            if !running.is_empty() {
                line.push_str(&format!(" | running {}", running.join(", ")));
            }
        }
        line.push_str(&format!(" | done {} | local {}", self.done, self.local));
        if self.failed > 0 {
            line.push_str(&format!(" | failed {}", self.failed));
        }
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{line}");
        let _ = stderr.flush();
        self.drawn = true;
    }

    /// Clears the line before make's last output or the summary.
    pub fn clear(&mut self) {
        if self.drawn {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
            self.drawn = false;
        }
    }
}
