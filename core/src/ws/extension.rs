//! The `Sec-WebSocket-Extensions` header (RFC 6455 §9.1): a comma-separated list of
//! extensions, each a token followed by `;`-separated parameters whose values are tokens or
//! quoted strings.
//!
//! Written by hand: the grammar is small and both the server's offer parsing and the client's
//! answer validation depend on its exact, strict reading.

use std::fmt;

/// One element of an extension list: `name; param; param=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionItem {
    /// The extension token, as sent.
    pub name: String,
    /// Parameters in order, with their unquoted value when they have one.
    pub params: Vec<(String, Option<String>)>,
}

impl ExtensionItem {
    /// Whether this item names `extension` (ABNF literals compare without regard to case).
    pub fn is(&self, extension: &str) -> bool {
        self.name.eq_ignore_ascii_case(extension)
    }

    /// Formats the item back into header syntax (values that are tokens are written bare).
    pub fn to_header_value(&self) -> String {
        let mut out = self.name.clone();
        for (name, value) in &self.params {
            out.push_str("; ");
            out.push_str(name);
            if let Some(v) = value {
                out.push('=');
                out.push_str(v);
            }
        }
        out
    }
}

/// The header is not a valid extension list; says where it went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtensionSyntaxError {
    /// Byte offset in the header value where the grammar failed.
    pub at: usize,
    /// What was expected there.
    pub expected: &'static str,
}

impl fmt::Display for ExtensionSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid Sec-WebSocket-Extensions: {} expected at byte {}",
            self.expected, self.at
        )
    }
}

impl std::error::Error for ExtensionSyntaxError {}

/// Parses the values of every `Sec-WebSocket-Extensions` line, in order, into one list
/// (several lines mean the same as one line joined with commas, RFC 9110 §5.3).
pub fn parse_all<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<ExtensionItem>, ExtensionSyntaxError> {
    let mut items = Vec::new();
    for value in values {
        parse_into(value, &mut items)?;
    }
    Ok(items)
}

/// Parses one header value.
pub fn parse(value: &[u8]) -> Result<Vec<ExtensionItem>, ExtensionSyntaxError> {
    let mut items = Vec::new();
    parse_into(value, &mut items)?;
    Ok(items)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is a non-empty token.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn fail(&self, expected: &'static str) -> ExtensionSyntaxError {
        ExtensionSyntaxError { at: self.at, expected }
    }

    fn token(&mut self, what: &'static str) -> Result<String, ExtensionSyntaxError> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.fail(what));
        }
        // tchar is ASCII, so the slice is valid UTF-8.
        Ok(String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned())
    }

    /// A quoted-string (RFC 9110 §5.6.4), unescaped; RFC 6455 §9.1 requires the result to be
    /// a token.
    fn quoted(&mut self) -> Result<String, ExtensionSyntaxError> {
        self.at += 1; // the opening quote
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.fail("closing quote")),
                Some(b'"') => {
                    self.at += 1;
                    break;
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b) if b == b'\t' || (0x20..0x7f).contains(&b) => {
                            out.push(char::from(b));
                            self.at += 1;
                        }
                        _ => return Err(self.fail("escaped character")),
                    }
                }
                Some(b) if b == b'\t' || (0x20..0x7f).contains(&b) => {
                    out.push(char::from(b));
                    self.at += 1;
                }
                Some(_) => return Err(self.fail("printable character in quoted value")),
            }
        }
        if !is_token(&out) {
            return Err(self.fail("a token inside the quoted value"));
        }
        Ok(out)
    }
}

fn parse_into(value: &[u8], items: &mut Vec<ExtensionItem>) -> Result<(), ExtensionSyntaxError> {
    let mut c = Cursor { bytes: value, at: 0 };
    loop {
        c.skip_ows();
        match c.peek() {
            None => return Ok(()),
            // Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
            Some(b',') => {
                c.at += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = c.token("extension name")?;
        let mut params = Vec::new();
        loop {
            c.skip_ows();
            match c.peek() {
                None | Some(b',') => break,
                Some(b';') => c.at += 1,
                Some(_) => return Err(c.fail("';' or ','")),
            }
            c.skip_ows();
            let pname = c.token("parameter name")?;
            c.skip_ows();
            let value = if c.peek() == Some(b'=') {
                c.at += 1;
                c.skip_ows();
                Some(if c.peek() == Some(b'"') { c.quoted()? } else { c.token("parameter value")? })
            } else {
                None
            };
            params.push((pname, value));
        }
        items.push(ExtensionItem { name, params });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, params: &[(&str, Option<&str>)]) -> ExtensionItem {
        ExtensionItem {
            name: name.into(),
            params: params.iter().map(|(n, v)| ((*n).into(), v.map(Into::into))).collect(),
        }
    }

    #[test]
    fn offers_with_parameters_quotes_and_empty_elements() {
        let got = parse(
            b" permessage-deflate; client_max_window_bits ; server_max_window_bits=\"10\" ,, x-foo,permessage-deflate;server_no_context_takeover",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                item(
                    "permessage-deflate",
                    &[("client_max_window_bits", None), ("server_max_window_bits", Some("10"))]
                ),
                item("x-foo", &[]),
                item("permessage-deflate", &[("server_no_context_takeover", None)]),
            ]
        );
        assert_eq!(
            got[0].to_header_value(),
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10"
        );
        assert!(got[0].is("PerMessage-Deflate"));
        assert_eq!(parse(b"").unwrap(), vec![]);
        assert_eq!(parse(b" , ").unwrap(), vec![]);
    }

    #[test]
    fn several_lines_make_one_list() {
        let got = parse_all([&b"a; x=1"[..], b"b"]).unwrap();
        assert_eq!(got, vec![item("a", &[("x", Some("1"))]), item("b", &[])]);
    }

    #[test]
    fn escapes_inside_quotes_are_unescaped() {
        assert_eq!(parse(b"a; p=\"1\\5\"").unwrap(), vec![item("a", &[("p", Some("15"))])]);
    }

    #[test]
    fn syntax_errors_say_where() {
        let cases: &[(&[u8], usize)] = &[
            (b"; x", 0),
            (b"a;", 2),
            (b"a; =1", 3),
            (b"a; b=", 5),
            (b"a; b=\"1", 7),
            (b"a; b=\"1 2\"", 10),
            (b"a; b=\"\"", 7),
            (b"a b", 2),
            (b"a; b=1 2", 7),
            (b"a; b=\"\x01\"", 6),
            (b"a\xff", 1),
        ];
        for (bytes, at) in cases {
            let err = parse(bytes).unwrap_err();
            assert_eq!(err.at, *at, "{:?}: {err}", String::from_utf8_lossy(bytes));
        }
    }
}
