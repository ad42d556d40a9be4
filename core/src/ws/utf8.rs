//! Incremental, fail-fast UTF-8 validation for text messages that arrive in pieces.
//!
//! The bulk of each piece is checked by `simdutf8`; only a sequence split across pieces (at most
//! three bytes) is carried over. An impossible prefix (for example `F4 90`, beyond U+10FFFF) is
//! rejected as soon as its first bad byte arrives, not when the sequence or frame completes.

use std::fmt;

/// Validates a byte stream as UTF-8 piece by piece.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

/// The bytes fed so far can never become valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid UTF-8")
    }
}

impl std::error::Error for InvalidUtf8 {}

impl Utf8Validator {
    /// A validator at a character boundary.
    pub const fn new() -> Self {
        Self { pending: [0; 4], pending_len: 0 }
    }

    /// Checks the next piece. Fails as soon as the stream cannot be completed into valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            let width = sequence_width(self.pending[0]);
            let take = (width - have).min(data.len());
            let mut seq = self.pending;
            seq[have..have + take].copy_from_slice(&data[..take]);
            match std::str::from_utf8(&seq[..have + take]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => {
                    self.pending = seq;
                    self.pending_len = (have + take) as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
            data = &data[take..];
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// True when the bytes so far end on a character boundary (a message may end here).
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    /// Forgets any partial sequence, ready for the next message.
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}

/// Length of the sequence a valid leading byte starts; only called on stored valid prefixes.
fn sequence_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(pieces: &[&[u8]]) -> Result<bool, (usize, InvalidUtf8)> {
        let mut v = Utf8Validator::new();
        for (i, p) in pieces.iter().enumerate() {
            v.feed(p).map_err(|e| (i, e))?;
        }
        Ok(v.is_complete())
    }

    #[test]
    fn every_split_of_valid_text_is_accepted() {
        let text = "κόσμε 𝄞 a€b \u{10FFFF} end".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(feed_all(&[&text[..a], &text[a..b], &text[b..]]), Ok(true));
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let text = "héllo wörld 😀".as_bytes();
        let mut v = Utf8Validator::new();
        for b in text {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(v.is_complete());
    }

    #[test]
    fn impossible_prefix_fails_on_its_first_bad_byte() {
        // Autobahn 6.4.1: F4 90 is beyond U+10FFFF; the failure must come with the 0x90.
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        v.feed(&[0xF4]).unwrap();
        assert_eq!(v.feed(&[0x90]), Err(InvalidUtf8));
        // Overlong and surrogate prefixes fail at the second byte too.
        assert_eq!(Utf8Validator::new().feed(&[0xE0, 0x80]), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(&[0xED, 0xA0]), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(&[0xC0]), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(&[0xFF]), Err(InvalidUtf8));
    }

    #[test]
    fn incomplete_end_is_reported() {
        assert_eq!(feed_all(&[&[0xE2, 0x82]]), Ok(false));
        assert_eq!(feed_all(&[b"ab", &[0xF0]]), Ok(false));
    }

    #[test]
    fn pending_sequence_completed_then_invalid_bulk() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xE2]).unwrap();
        v.feed(&[0x82]).unwrap();
        assert_eq!(v.feed(&[0xAC, b'x', 0x80]), Err(InvalidUtf8));
    }

    #[test]
    fn agrees_with_std_on_pseudo_random_bytes() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(x % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Bias towards bytes that form multi-byte sequences.
                buf.push(match x % 4 {
                    0 => (x >> 8) as u8 & 0x7f,
                    1 => 0x80 | ((x >> 8) as u8 & 0x3f),
                    _ => (x >> 8) as u8,
                });
            }
            let expected = std::str::from_utf8(&buf).is_ok();
            for split in 0..=buf.len() {
                let got = matches!(feed_all(&[&buf[..split], &buf[split..]]), Ok(true));
                assert_eq!(got, expected, "{buf:02x?} split at {split}");
            }
        }
    }
}
