//! Stop strings: finds them in the stream of generated text and decides what may be shown.
//!
//! Text arrives in pieces (one decoded token at a time), and a stop string can straddle pieces:
//! with the stop `"\nUser:"`, the piece `"\nUs"` must not be shown until the next piece says
//! whether it continues into `"er:"`. [`StopMatcher`] therefore holds back the longest tail of the
//! stream that is a proper prefix of some stop string and releases it once it can no longer
//! become one (or at [`StopMatcher::finish`]). When a stop string completes, everything from its
//! first byte on is dropped and the matcher stays stopped.
//!
//! Invariants:
//! - Text returned by [`StopMatcher::push`] never contains, and is never followed by, a stop
//!   string: a match never starts inside text already released.
//! - Released text always ends on a `char` boundary (a stop string starts on one, so a held-back
//!   prefix of it does too).
//! - No allocation while the held-back text plus one piece fits the buffer reserved in
//!   [`StopMatcher::new`] (4 KiB, or more for long stop strings); a larger piece grows it once.

/// Bytes reserved for the pending text beyond the longest stop string.
const RESERVE: usize = 4096;

/// Finds stop strings in a stream of generated text, holding back text that could be the start
/// of one so that the caller never shows text that a later token turns into a stop.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    /// The stop strings, empty ones removed.
    stops: Vec<String>,
    /// Text of the stream not yet consumed: `buf[..released]` was returned by the last call and
    /// is dropped at the next; `buf[released..]` is held back.
    buf: String,
    released: usize,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops`. Empty strings are ignored (they would stop before any text). With
    /// no stop strings every piece is passed through unchanged.
    pub fn new(stops: &[String]) -> StopMatcher {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        StopMatcher {
            stops,
            buf: String::with_capacity(RESERVE + 2 * longest),
            released: 0,
            stopped: false,
        }
    }

    /// Feeds newly decoded text (complete UTF-8) and returns `(text safe to show now, stopped)`.
    ///
    /// When a stop string completes, the returned text is what precedes it and `stopped` is
    /// true; later calls return `("", true)`. The returned slice borrows the matcher and is valid
    /// until the next call.
    pub fn push(&mut self, text: &str) -> (&str, bool) {
        self.buf.replace_range(..self.released, "");
        self.released = 0;
        if self.stopped {
            return ("", true);
        }
        self.buf.push_str(text);
        if let Some(at) = self.first_match() {
            self.stopped = true;
            self.buf.truncate(at);
            self.released = at;
            return (&self.buf[..at], true);
        }
        self.released = self.buf.len() - self.held_back_len();
        (&self.buf[..self.released], false)
    }

    /// Ends the stream: returns the held-back text (empty after a stop) and leaves the matcher
    /// with nothing pending.
    pub fn finish(&mut self) -> &str {
        let start = if self.stopped {
            self.buf.len()
        } else {
            self.released
        };
        self.released = self.buf.len();
        &self.buf[start..]
    }

    /// Whether a stop string has been seen.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Forgets the stream so the matcher can serve a new one; keeps its memory.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.released = 0;
        self.stopped = false;
    }

    /// Byte offset in `buf` of the earliest complete stop string.
    fn first_match(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.buf.find(s.as_str()))
            .min()
    }

    /// Length of the longest tail of `buf` that is a proper prefix of a stop string.
    fn held_back_len(&self) -> usize {
        let tail = self.buf.as_bytes();
        let mut hold = 0;
        for stop in &self.stops {
            let stop = stop.as_bytes();
            let longest = (stop.len() - 1).min(tail.len());
            for len in (hold + 1..=longest).rev() {
                if tail.ends_with(&stop[..len]) {
                    hold = len;
                    break;
                }
            }
        }
        hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        StopMatcher::new(&stops)
    }

    /// Pushes every piece and returns everything shown, plus whether it stopped.
    fn stream(m: &mut StopMatcher, pieces: &[&str]) -> (String, bool) {
        let mut shown = String::new();
        for piece in pieces {
            let (text, stopped) = m.push(piece);
            shown.push_str(text);
            if stopped {
                return (shown, true);
            }
        }
        shown.push_str(m.finish());
        (shown, false)
    }

    #[test]
    fn stop_spanning_several_pushes() {
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("Hello <|"), ("Hello ", false));
        assert_eq!(m.push("en"), ("", false));
        assert_eq!(m.push("d|> ignored"), ("", true));
        assert!(m.is_stopped());
        assert_eq!(m.push("more"), ("", true));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn held_prefix_is_released_when_it_diverges() {
        let mut m = matcher(&["\nUser:"]);
        assert_eq!(m.push("a\nUs"), ("a", false));
        assert_eq!(m.push("ually"), ("\nUsually", false));
        assert_eq!(m.push(" fine\n"), (" fine", false));
        assert_eq!(m.finish(), "\n");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stop_inside_one_piece_cuts_the_rest() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("abcSTOPdef"), ("abc", true));
    }

    #[test]
    fn earliest_of_multiple_stops_wins() {
        let mut m = matcher(&["world", "lo w", "xyz"]);
        assert_eq!(
            stream(&mut m, &["hel", "lo ", "world"]),
            ("hel".into(), true)
        );
        let mut m = matcher(&["xyz", "aab"]);
        // "aa" is held (prefix of "aab"), then "a" shifts the candidate by one.
        assert_eq!(m.push("xaa"), ("x", false));
        assert_eq!(m.push("a"), ("a", false));
        assert_eq!(m.push("b!"), ("", true));
        // A stop that is a suffix of another.
        let mut m = matcher(&["abc", "bc"]);
        assert_eq!(stream(&mut m, &["xa", "b", "c"]), ("x".into(), true));
    }

    #[test]
    fn empty_stop_list_passes_everything_through() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("any"), ("any", false));
        assert_eq!(m.push(" text"), (" text", false));
        assert_eq!(m.finish(), "");
        let mut m = matcher(&[""]);
        assert_eq!(
            m.push("empty stops are ignored"),
            ("empty stops are ignored", false)
        );
    }

    #[test]
    fn multibyte_characters() {
        let mut m = matcher(&["終わり"]);
        assert_eq!(m.push("これで終"), ("これで", false));
        assert_eq!(m.push("わ"), ("", false));
        assert_eq!(m.push("った。"), ("終わった。", false));
        assert_eq!(m.push("終わり！"), ("", true));
        let mut m = matcher(&["é!"]);
        assert_eq!(
            stream(&mut m, &["caf", "é", "s é", "!"]),
            ("cafés ".into(), true)
        );
    }

    #[test]
    fn reset_serves_a_new_stream() {
        let mut m = matcher(&["##"]);
        assert_eq!(m.push("a##"), ("a", true));
        m.reset();
        assert_eq!(stream(&mut m, &["b#", "c"]), ("b#c".into(), false));
    }

    #[test]
    fn streamed_output_matches_a_one_shot_cut() {
        // Every split of the text into two pieces gives the same output as cutting it at once.
        let text = "one two <stop> three";
        for split in 0..=text.len() {
            let mut m = matcher(&["<stop>", "<st0p>"]);
            let got = stream(&mut m, &[&text[..split], &text[split..]]);
            assert_eq!(got, ("one two ".into(), true), "split at {split}");
        }
    }
}
