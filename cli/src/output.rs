//! Writing to stdout without panics: `println!` panics when stdout is closed or full. Every
//! command writes through [`print`] or [`Stdout`], which stop at the first write error: a
//! closed pipe (`ember info | head -1`) becomes [`CliError::BrokenPipe`] (the program ends
//! quietly), any other error (`> /dev/full`) a run-time error, exit status 1.

use std::io::{self, Write};

use crate::commands::CliError;

/// The error of a failed write to stdout.
pub fn write_error(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::BrokenPipe
    } else {
        CliError::Run(format!("writing to stdout: {e}"))
    }
}

/// Run `f` on the locked stdout and flush it, mapping any write error.
pub fn print(
    f: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>,
) -> Result<(), CliError> {
    let mut o = io::stdout().lock();
    f(&mut o).and_then(|()| o.flush()).map_err(write_error)
}

/// Stdout for streaming: remembers the first write error so a generation loop can stop at it
/// and report it afterwards.
pub struct Stdout {
    out: io::StdoutLock<'static>,
    error: Option<io::Error>,
}

impl Stdout {
    pub fn new() -> Stdout {
        Stdout {
            out: io::stdout().lock(),
            error: None,
        }
    }

    /// Write and flush `s`; false once any write has failed (the caller should stop).
    pub fn stream(&mut self, s: &str) -> bool {
        if self.error.is_none() {
            if let Err(e) = self
                .out
                .write_all(s.as_bytes())
                .and_then(|()| self.out.flush())
            {
                self.error = Some(e);
            }
        }
        self.error.is_none()
    }

    /// Flush, then the first error seen, if any.
    pub fn finish(mut self) -> Result<(), CliError> {
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
        match self.error {
            Some(e) => Err(write_error(e)),
            None => Ok(()),
        }
    }
}
