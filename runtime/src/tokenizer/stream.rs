//! Streaming detokenization: turn ids into text as they are generated without ever splitting a
//! UTF-8 code point across two outputs.
//!
//! A token may end in the middle of a character (byte-level BPE and SentencePiece byte tokens
//! both do this for emoji and CJK). [`StreamDecoder`] keeps the incomplete tail, at most 3 bytes,
//! and emits it once the next token completes it. Bytes that can never form a character are
//! emitted as U+FFFD, one per maximal invalid sequence, exactly as `String::from_utf8_lossy`
//! would on the whole stream.
//!
//! Invariant: after construction, `push` and `flush` allocate nothing as long as the decoder is
//! used with the tokenizer it was built for (its buffers are sized for that tokenizer's longest
//! piece).

use super::Tokenizer;

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Incremental, allocation-free detokenizer. See the module docs.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    /// Incomplete UTF-8 sequence carried over from the previous token (at most 3 bytes).
    pending: [u8; 4],
    pending_len: usize,
    /// Pending bytes followed by the new token's bytes.
    input: Vec<u8>,
    /// Valid UTF-8 output of the last call.
    output: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder whose buffers fit every piece of `tok`.
    pub fn new(tok: &Tokenizer) -> StreamDecoder {
        let cap = tok.max_piece_len() + 4;
        StreamDecoder {
            pending: [0; 4],
            pending_len: 0,
            input: Vec::with_capacity(cap),
            // Worst case: every byte is invalid and becomes a 3-byte U+FFFD.
            output: Vec::with_capacity(cap * REPLACEMENT.len()),
        }
    }

    /// Feeds one token; returns the text it completes (possibly empty). An id out of range or a
    /// control token contributes no bytes.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> &str {
        self.input.clear();
        self.input
            .extend_from_slice(&self.pending[..self.pending_len]);
        self.input.extend_from_slice(tok.token_bytes(id));
        self.pending_len = 0;
        self.output.clear();
        let mut rest: &[u8] = &self.input;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.output.extend_from_slice(s.as_bytes());
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    self.output.extend_from_slice(valid);
                    match e.error_len() {
                        Some(n) => {
                            self.output.extend_from_slice(REPLACEMENT);
                            rest = &after[n..];
                        }
                        None => {
                            // An incomplete but so far valid sequence: at most 3 bytes.
                            let n = after.len().min(3);
                            self.pending[..n].copy_from_slice(&after[..n]);
                            self.pending_len = n;
                            break;
                        }
                    }
                }
            }
        }
        std::str::from_utf8(&self.output).unwrap_or_default()
    }

    /// Number of bytes held back waiting for the rest of a character (0..=3).
    pub fn pending(&self) -> usize {
        self.pending_len
    }

    /// Ends the stream: returns U+FFFD if an incomplete character was pending, else `""`, and
    /// resets the decoder for a new stream.
    pub fn flush(&mut self) -> &str {
        let had = self.pending_len > 0;
        self.pending_len = 0;
        if had {
            "\u{FFFD}"
        } else {
            ""
        }
    }

    /// Drops any pending bytes, ready for a new stream.
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}
