//! Reading files and lines whose size the user controls, within a bound: `--input /dev/zero`,
//! a 50 MB line on stdin or a multi-gigabyte `--chat-template` must end in a clear error after
//! reading at most the bound, never in reading until memory runs out.

use std::io::{BufRead, Read};
use std::path::Path;

use crate::commands::CliError;

/// Most bytes of a `--chat-template` file (real templates are a few KiB).
pub const MAX_TEMPLATE_BYTES: u64 = 1 << 20;
/// Most bytes of a `perplexity -f` text.
pub const MAX_TEXT_BYTES: u64 = 256 << 20;
/// Most bytes of one `ember batch` input line.
pub const MAX_BATCH_LINE: usize = 64 << 20;

/// The whole of `path` as UTF-8 text, if it holds at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64, what: &str) -> Result<String, CliError> {
    let err = |e: std::io::Error| CliError::Run(format!("{what} {}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > limit {
        return Err(CliError::Run(format!(
            "{what} {}: larger than {limit} bytes",
            path.display()
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| CliError::Run(format!("{what} {}: not valid UTF-8", path.display())))
}

/// One line read by [`read_line`].
pub enum Line {
    /// A complete line (its newline removed), at most the limit.
    Bytes(Vec<u8>),
    /// A line longer than the limit. Reading stopped there (the rest of that line is not
    /// consumed: an input without newlines, like `/dev/zero`, would never end).
    TooLong,
    /// End of input.
    Eof,
}

/// Read one line of at most `limit` bytes (without the newline) into memory.
pub fn read_line(input: &mut impl BufRead, limit: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let content = take - usize::from(done);
        if line.len() + content > limit {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&buf[..content]);
        input.consume(take);
        if done {
            return Ok(Line::Bytes(line));
        }
    }
    Ok(if line.is_empty() {
        Line::Eof
    } else {
        Line::Bytes(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded() {
        let mut r = std::io::Cursor::new(b"abc\ndefghij\nxy".to_vec());
        let mut got = Vec::new();
        loop {
            match read_line(&mut r, 4).unwrap() {
                Line::Bytes(b) => got.push(String::from_utf8(b).unwrap()),
                Line::TooLong => {
                    got.push("<long>".into());
                    break;
                }
                Line::Eof => break,
            }
        }
        assert_eq!(got, ["abc", "<long>"]);
        let mut r = std::io::Cursor::new(b"abcd\nabcde\n".to_vec());
        assert!(matches!(read_line(&mut r, 4).unwrap(), Line::Bytes(b) if b == b"abcd"));
        assert!(matches!(read_line(&mut r, 4).unwrap(), Line::TooLong));
        // Nothing past the limit was consumed: the caller stops reading there.
        assert!(matches!(read_line(&mut r, 4).unwrap(), Line::TooLong));
        let mut r = std::io::Cursor::new(b"ab\n\nc".to_vec());
        assert!(matches!(read_line(&mut r, 4).unwrap(), Line::Bytes(b) if b == b"ab"));
        assert!(matches!(read_line(&mut r, 4).unwrap(), Line::Bytes(b) if b.is_empty()));
        assert!(matches!(read_line(&mut r, 4).unwrap(), Line::Bytes(b) if b == b"c"));
        assert!(matches!(read_line(&mut r, 4).unwrap(), Line::Eof));
    }
}
