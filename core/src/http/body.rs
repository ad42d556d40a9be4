//! HTTP/1.1 message bodies: `Content-Length` and `chunked`, bounded while they arrive.

use crate::ws::AssemblyBudget;
use crate::ws::budget::Reservation;

/// Why a body could not be read; each maps to a status.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// Larger than allowed (413).
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// Malformed chunked encoding, or conflicting length headers (400).
    Malformed(&'static str),
    /// The budget shared with other connections' unfinished bodies and WebSocket messages is
    /// spent (503, try again later).
    BudgetExhausted,
}

impl BodyError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 413,
            Self::Malformed(_) => 400,
            Self::BudgetExhausted => 503,
        }
    }

    /// The `Retry-After` value to answer with, when waiting helps.
    pub fn retry_after(&self) -> Option<&'static str> {
        match self {
            Self::BudgetExhausted => Some("1"),
            _ => None,
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { max } => write!(f, "body larger than {max} bytes"),
            Self::Malformed(why) => write!(f, "malformed body: {why}"),
            Self::BudgetExhausted => {
                f.write_str("server busy: too many request bodies in progress")
            }
        }
    }
}

impl std::error::Error for BodyError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    /// Reading the hex size line (with optional extensions).
    Size {
        value: usize,
        digits: usize,
        in_ext: bool,
        line: usize,
    },
    /// Whitespace after the size digits: only more of it, `;` (an extension) or CR may follow.
    SizeBws {
        value: usize,
        line: usize,
    },
    /// Expecting LF after the size line's CR.
    SizeLf {
        value: usize,
    },
    /// Inside chunk data.
    Data {
        remaining: usize,
    },
    /// Expecting CR LF after chunk data.
    DataCr,
    DataLf,
    /// Trailer lines after the last chunk; `line` counts bytes of the current line.
    Trailer {
        line: usize,
        total: usize,
        cr: bool,
    },
    Done,
}

/// Collects one request body, framed by length ([`with_length`](Self::with_length)) or
/// chunked ([`chunked`](Self::chunked)): [`push`](Self::push) the bytes that follow the head
/// until it reports the body complete, then take it with [`into_body`](Self::into_body).
#[derive(Debug)]
pub struct BodyReader {
    body: Vec<u8>,
    max: usize,
    mode: Mode,
    /// The shared budget the body is charged to, and what it holds of it (given back when
    /// the reader is dropped or turned into its body).
    budget: Option<AssemblyBudget>,
    reservation: Reservation,
}

#[derive(Debug)]
enum Mode {
    Length(usize),
    Chunked(Chunked),
}

/// Longest chunk-size line and trailer section accepted.
const MAX_LINE: usize = 1024;
const MAX_TRAILERS: usize = 8 * 1024;

impl BodyReader {
    /// A body of exactly `len` bytes; fails at once when `len > max`.
    pub fn with_length(len: usize, max: usize) -> Result<Self, BodyError> {
        if len > max {
            return Err(BodyError::TooLarge { max });
        }
        Ok(Self {
            body: Vec::with_capacity(len.min(64 * 1024)),
            max,
            mode: Mode::Length(len),
            budget: None,
            reservation: Reservation::default(),
        })
    }

    /// A chunked body of at most `max` bytes once decoded.
    pub fn chunked(max: usize) -> Self {
        Self {
            body: Vec::new(),
            max,
            mode: Mode::Chunked(Chunked::Size { value: 0, digits: 0, in_ext: false, line: 0 }),
            budget: None,
            reservation: Reservation::default(),
        }
    }

    /// Charges the body's memory to `budget`, the one unfinished WebSocket messages use,
    /// beyond its first 64 KiB; a body the budget cannot cover fails with
    /// [`BodyError::BudgetExhausted`].
    #[must_use]
    pub fn charged_to(mut self, budget: Option<&AssemblyBudget>) -> Self {
        self.budget = budget.cloned();
        self
    }

    /// Takes bytes of `data`; returns how many were used, and whether the body is complete.
    pub fn push(&mut self, data: &[u8]) -> Result<(usize, bool), BodyError> {
        match &mut self.mode {
            Mode::Length(len) => {
                let take = (*len - self.body.len()).min(data.len());
                charge(&mut self.reservation, self.budget.as_ref(), &self.body, take)?;
                self.body.extend_from_slice(&data[..take]);
                Ok((take, self.body.len() == *len))
            }
            Mode::Chunked(state) => {
                let mut at = 0;
                while at < data.len() && *state != Chunked::Done {
                    if let Chunked::Data { remaining } = *state {
                        let take = remaining.min(data.len() - at);
                        charge(&mut self.reservation, self.budget.as_ref(), &self.body, take)?;
                        self.body.extend_from_slice(&data[at..at + take]);
                        at += take;
                        *state = if take == remaining {
                            Chunked::DataCr
                        } else {
                            Chunked::Data { remaining: remaining - take }
                        };
                        continue;
                    }
                    *state = step(*state, data[at], self.body.len(), self.max)?;
                    at += 1;
                }
                Ok((at, *state == Chunked::Done))
            }
        }
    }

    /// Whether the body is complete (a `Content-Length: 0` body is complete at once).
    pub fn is_complete(&self) -> bool {
        match &self.mode {
            Mode::Length(len) => self.body.len() == *len,
            Mode::Chunked(state) => *state == Chunked::Done,
        }
    }

    /// The complete body.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

/// Makes sure `reservation` covers the capacity `body` will have once `more` bytes are
/// appended (a `Vec` grows to at least twice its capacity), before that memory is taken.
fn charge(
    reservation: &mut Reservation,
    budget: Option<&AssemblyBudget>,
    body: &Vec<u8>,
    more: usize,
) -> Result<(), BodyError> {
    let (len, capacity) = (body.len(), body.capacity());
    let after = if len + more > capacity { (len + more).max(2 * capacity) } else { capacity };
    if reservation.cover(budget, after as u64) { Ok(()) } else { Err(BodyError::BudgetExhausted) }
}

/// One byte of the chunked framing (everything but chunk data).
fn step(state: Chunked, b: u8, have: usize, max: usize) -> Result<Chunked, BodyError> {
    Ok(match state {
        Chunked::Size { value, digits, in_ext, line } => {
            if line >= MAX_LINE {
                return Err(BodyError::Malformed("chunk size line too long"));
            }
            // RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, chunk-ext = *( BWS ";" … ); no
            // bare LF and nothing but whitespace before the `;`, so no two parsers can
            // disagree on where a chunk ends.
            match b {
                b'\r' if digits > 0 => Chunked::SizeLf { value },
                b'\n' => return Err(BodyError::Malformed("chunk size line must end in CRLF")),
                _ if in_ext => Chunked::Size { value, digits, in_ext, line: line + 1 },
                b';' if digits > 0 => Chunked::Size { value, digits, in_ext: true, line: line + 1 },
                b' ' | b'\t' if digits > 0 => Chunked::SizeBws { value, line: line + 1 },
                _ => {
                    let d =
                        (b as char).to_digit(16).ok_or(BodyError::Malformed("bad chunk size"))?;
                    let value = value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(d as usize))
                        .filter(|v| have.saturating_add(*v) <= max)
                        .ok_or(BodyError::TooLarge { max })?;
                    Chunked::Size { value, digits: digits + 1, in_ext, line: line + 1 }
                }
            }
        }
        Chunked::SizeBws { line, .. } if line >= MAX_LINE => {
            return Err(BodyError::Malformed("chunk size line too long"));
        }
        Chunked::SizeBws { value, line } => match b {
            b' ' | b'\t' => Chunked::SizeBws { value, line: line + 1 },
            b';' => Chunked::Size { value, digits: 1, in_ext: true, line: line + 1 },
            b'\r' => Chunked::SizeLf { value },
            _ => return Err(BodyError::Malformed("bad chunk size")),
        },
        Chunked::SizeLf { value } if b == b'\n' => after_size(value),
        Chunked::SizeLf { .. } => return Err(BodyError::Malformed("expected LF after chunk size")),
        Chunked::DataCr if b == b'\r' => Chunked::DataLf,
        Chunked::DataLf if b == b'\n' => {
            Chunked::Size { value: 0, digits: 0, in_ext: false, line: 0 }
        }
        Chunked::DataCr | Chunked::DataLf => {
            return Err(BodyError::Malformed("expected CRLF after chunk data"));
        }
        Chunked::Trailer { total, .. } if total >= MAX_TRAILERS => {
            return Err(BodyError::Malformed("trailers too long"));
        }
        // Trailer lines end in CRLF like the size lines: a bare LF (or CR) could end the
        // body for one parser and not for another.
        Chunked::Trailer { cr: false, .. } if b == b'\n' => {
            return Err(BodyError::Malformed("trailer lines must end in CRLF"));
        }
        Chunked::Trailer { cr: true, .. } if b != b'\n' => {
            return Err(BodyError::Malformed("bare CR in a trailer"));
        }
        Chunked::Trailer { line, total, .. } if b == b'\n' => {
            if line == 0 {
                Chunked::Done
            } else {
                Chunked::Trailer { line: 0, total: total + 1, cr: false }
            }
        }
        Chunked::Trailer { line, total, .. } if b == b'\r' => {
            Chunked::Trailer { line, total: total + 1, cr: true }
        }
        Chunked::Trailer { line, total, .. } => {
            Chunked::Trailer { line: line + 1, total: total + 1, cr: false }
        }
        Chunked::Data { .. } | Chunked::Done => state,
    })
}

fn after_size(value: usize) -> Chunked {
    if value == 0 {
        Chunked::Trailer { line: 0, total: 0, cr: false }
    } else {
        Chunked::Data { remaining: value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(
        mut r: BodyReader,
        wire: &[u8],
        chop: usize,
    ) -> Result<(Vec<u8>, usize), BodyError> {
        let mut used_total = 0;
        for piece in wire.chunks(chop) {
            let (used, done) = r.push(piece)?;
            used_total += used;
            if done {
                return Ok((r.into_body(), used_total));
            }
            assert_eq!(used, piece.len(), "an incomplete body takes everything");
        }
        panic!("body incomplete");
    }

    #[test]
    fn content_length_bodies() {
        for chop in [1, 3, 100] {
            let (body, used) =
                read_all(BodyReader::with_length(5, 10).unwrap(), b"helloNEXT", chop).unwrap();
            assert_eq!((body.as_slice(), used), (&b"hello"[..], 5));
        }
        assert_eq!(BodyReader::with_length(11, 10).unwrap_err().status(), 413);
    }

    #[test]
    fn chunked_bodies_any_chopping() {
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for chop in [1, 2, 7, wire.len()] {
            let (body, used) = read_all(BodyReader::chunked(1000), wire, chop).unwrap();
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
            assert_eq!(used, wire.len() - 4, "chop {chop}");
        }
    }

    #[test]
    fn bodies_are_charged_beyond_their_first_64_kib_and_give_it_back() {
        const KIB: usize = 1024;
        let budget = AssemblyBudget::new(128 * KIB as u64);
        let mut a = BodyReader::with_length(100 * KIB, 1 << 20).unwrap().charged_to(Some(&budget));
        assert_eq!(a.push(&[b'a'; 64 * KIB]).unwrap(), (64 * KIB, false));
        assert_eq!(budget.used(), 0, "the first 64 KiB are free");
        assert_eq!(a.push(&[b'a'; KIB]).unwrap(), (KIB, false));
        assert_eq!(budget.used(), 64 * KIB as u64, "the buffer doubled to 128 KiB");
        let mut b = BodyReader::chunked(1 << 20).charged_to(Some(&budget));
        let mut wire = b"30000\r\n".to_vec();
        wire.extend_from_slice(&[b'b'; 0x30000]);
        let err = b.push(&wire).unwrap_err();
        assert_eq!((err.status(), err.retry_after()), (503, Some("1")));
        drop(b);
        assert_eq!(budget.used(), 64 * KIB as u64);
        assert_eq!(a.push(&[b'a'; 35 * KIB]).unwrap(), (35 * KIB, true));
        assert_eq!(a.into_body().len(), 100 * KIB);
        assert_eq!(budget.used(), 0, "a complete body holds nothing");
    }

    #[test]
    fn chunked_errors() {
        let cases: [(&[u8], u16); 12] = [
            (b"0\r\n\nGET / HTTP/1.1\r\n", 400),
            (b"0\r\nX: 1\n\r\n", 400),
            (b"zz\r\n", 400),
            // Smuggling-prone leniencies (RFC 9112 §7.1): junk after whitespace, bare LFs,
            // digits split by whitespace.
            (b"3 garbage\r\nabc\r\n", 400),
            (b"3\nabc\r\n", 400),
            (b"3\r\nabc\n0\r\n\r\n", 400),
            (b"1 2\r\n", 400),
            (b"3 \t ;ext\r\nabc\r\n", 0),
            (b"4\r\nWikiX\r\n", 400),
            (b"FFFFFFFFFFFFFFFFFFFFFF\r\n", 413),
            (b"20\r\n", 413),
            (b"\r\n", 400),
        ];
        for (wire, status) in cases {
            let mut r = BodyReader::chunked(16);
            if status == 0 {
                // Whitespace before a `;` is allowed (BWS).
                assert!(r.push(wire).is_ok(), "{:?}", String::from_utf8_lossy(wire));
                continue;
            }
            let err = r.push(wire).unwrap_err();
            assert_eq!(err.status(), status, "{:?}", String::from_utf8_lossy(wire));
        }
        // The decoded total counts across chunks.
        let mut r = BodyReader::chunked(6);
        assert_eq!(r.push(b"4\r\nabcd\r\n4\r\n").unwrap_err().status(), 413);
    }
}
