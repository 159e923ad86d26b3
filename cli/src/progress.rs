//! A one-line progress report on stderr for long work (`perplexity`, `convert`, `batch`):
//! `label done/total (pct%), elapsed, ETA`, redrawn at most ten times a second and erased at the
//! end. Only when stderr is a terminal (a log file or a pipe gets nothing), or when
//! `EMBER_PROGRESS=1` asks for it anyway (`EMBER_PROGRESS=0` turns it off).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    done: u64,
    /// Extra text after the counts (e.g. the perplexity so far).
    note: String,
    start: Instant,
    last: Option<Instant>,
    on: bool,
}

/// Whether progress lines are drawn.
pub fn enabled() -> bool {
    match std::env::var("EMBER_PROGRESS").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => std::io::stderr().is_terminal(),
    }
}

fn clock(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

impl Progress {
    pub fn new(label: &'static str, total: Option<u64>) -> Progress {
        Progress {
            label,
            total,
            done: 0,
            note: String::new(),
            start: Instant::now(),
            last: None,
            on: enabled(),
        }
    }

    /// The total, once known.
    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// `done` units finished; `note` shown after the counts.
    pub fn set(&mut self, done: u64, note: &str) {
        self.done = done;
        if !self.on {
            return;
        }
        let now = Instant::now();
        let finished = self.total.is_some_and(|t| done >= t);
        if !finished
            && self
                .last
                .is_some_and(|l| now - l < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        self.note.clear();
        self.note.push_str(note);
        let elapsed = (now - self.start).as_secs_f64();
        let counts = match self.total {
            Some(t) if t > 0 => {
                let eta = if done > 0 {
                    format!(
                        ", ETA {}",
                        clock(elapsed / done as f64 * (t - done.min(t)) as f64)
                    )
                } else {
                    String::new()
                };
                format!(
                    "{done}/{t} ({:.0}%), {}{eta}",
                    100.0 * done as f64 / t as f64,
                    clock(elapsed)
                )
            }
            _ => format!("{done}, {}", clock(elapsed)),
        };
        let sep = if self.note.is_empty() { "" } else { " " };
        eprint!("\r\x1b[2K{} {counts}{sep}{}", self.label, self.note);
    }

    /// Erase the line.
    pub fn finish(&mut self) {
        if self.on && self.last.is_some() {
            eprint!("\r\x1b[2K");
            self.last = None;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
