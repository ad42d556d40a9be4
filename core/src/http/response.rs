//! Writing HTTP/1.1 responses.

use std::io::Write as _;

use super::head::reason_phrase;

/// Appends a complete response. `headers` are written as given; `Content-Length` and
/// `Connection` are added here. For an answer to `HEAD` (`head_only`) the body is left out
/// but `Content-Length` still gives its size, as a `GET` would have (RFC 9110 §9.3.2).
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if status != 204 && status >= 200 {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    if status != 204 && !head_only {
        out.extend_from_slice(body);
    }
}
