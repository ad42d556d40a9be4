//! Who the client is behind reverse proxies: the `Forwarded` (RFC 7239) or `X-Forwarded-For`
//! header, believed only as far as it was written by proxies the server trusts.

use core::net::IpAddr;
use std::fmt;

use ipnet::IpNet;

/// The header a server's trusted proxies write the client's address into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"` (RFC 7239).
    #[default]
    Forwarded,
    /// `X-Forwarded-For: 192.0.2.60, 198.51.100.7`: bare addresses, the de facto header.
    XForwardedFor,
}

impl ForwardedHeader {
    /// The header's name, lowercase.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::XForwardedFor => "x-forwarded-for",
        }
    }
}

/// A proxy address or network that could not be parsed, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidProxy(pub String);

impl fmt::Display for InvalidProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an IP address or network (CIDR): {:?}", self.0)
    }
}

impl std::error::Error for InvalidProxy {}

/// The reverse proxies whose forwarding header is believed, and which header that is.
///
/// By default there are none: the client is the address that opened the TCP connection, and
/// forwarding headers are ignored, since any client can send them. With proxies configured,
/// [`client_address`](Self::client_address) walks the header's hops from the right (the one
/// the nearest proxy appended) past every trusted proxy and takes the first address that is
/// not one, so a client cannot choose its address by sending a header of its own: whatever
/// it writes stays to the left of what the trusted proxies append.
///
/// ```
/// # use core::net::IpAddr;
/// use wsrpc_core::limit::{ForwardedHeader, TrustedProxies};
///
/// let proxies = TrustedProxies::new(ForwardedHeader::XForwardedFor, ["10.0.0.0/8"])?;
/// let peer: IpAddr = "10.0.0.2".parse()?;
/// // The client claimed 1.1.1.1; the proxy appended the address it saw.
/// let header: &[u8] = b"1.1.1.1, 203.0.113.9";
/// assert_eq!(proxies.client_address(peer, [header]), "203.0.113.9".parse::<IpAddr>()?);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    header: ForwardedHeader,
    networks: Vec<IpNet>,
}

/// One hop of a forwarding header: an address, or a node the proxy did not name
/// (`unknown`, an obfuscated identifier, an element without `for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    Address(IpAddr),
    Unnamed,
}

/// The header was not what the grammar allows.
#[derive(Debug)]
struct Malformed;

impl TrustedProxies {
    /// No proxy is trusted: the client is always the TCP peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// Proxies at `proxies` (addresses such as `10.0.0.2` or `::1`, or networks such as
    /// `10.0.0.0/8` and `fd00::/8`) that write the client's address into `header`.
    pub fn new<I, S>(header: ForwardedHeader, proxies: I) -> Result<Self, InvalidProxy>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let networks = proxies
            .into_iter()
            .map(|p| {
                let p = p.as_ref().trim();
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(|ip| IpNet::from(ip.to_canonical())))
                    .map_err(|_| InvalidProxy(p.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { header, networks })
    }

    /// The header the proxies write.
    pub fn header(&self) -> ForwardedHeader {
        self.header
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer` (the TCP peer) whose lines of
    /// [`header`](Self::header) are `values`, in order.
    ///
    /// - `peer` is not a trusted proxy (always so without proxies): `peer`.
    /// - Otherwise the hops are read from the right, skipping trusted proxies; the first one
    ///   that is not trusted is the client. A hop the proxy did not name (`unknown`, an
    ///   obfuscated node, no `for`) stops the walk at the trusted proxy that wrote it, and so
    ///   does the end of the list (a request made by a trusted proxy itself).
    /// - A header that breaks its grammar anywhere is not believed at all: the client is
    ///   `peer`, so garbage cannot move a request to another client's bucket.
    ///
    /// IPv4-mapped IPv6 addresses count as the IPv4 address.
    pub fn client_address<'v>(
        &self,
        peer: IpAddr,
        values: impl IntoIterator<Item = &'v [u8]>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut hops = Vec::new();
        for value in values {
            let parsed = match self.header {
                ForwardedHeader::Forwarded => parse_forwarded(value, &mut hops),
                ForwardedHeader::XForwardedFor => parse_x_forwarded_for(value, &mut hops),
            };
            if parsed.is_err() {
                log::debug!(
                    target: super::LOG_TARGET,
                    "malformed {} header from trusted proxy {peer}; keyed by the proxy",
                    self.header.name()
                );
                return peer;
            }
        }
        let mut nearest = peer;
        for hop in hops.iter().rev() {
            match *hop {
                Hop::Address(ip) if self.is_trusted(ip) => nearest = ip,
                Hop::Address(ip) => return ip,
                Hop::Unnamed => return nearest,
            }
        }
        nearest
    }
}

/// Appends the hops of one `X-Forwarded-For` line: addresses (or `unknown`) separated by
/// commas, with optional whitespace around them; empty elements are skipped.
fn parse_x_forwarded_for(value: &[u8], hops: &mut Vec<Hop>) -> Result<(), Malformed> {
    let text = std::str::from_utf8(value).map_err(|_| Malformed)?;
    for element in text.split(',') {
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() {
            continue;
        }
        if element.eq_ignore_ascii_case("unknown") {
            hops.push(Hop::Unnamed);
            continue;
        }
        let ip = element.parse::<IpAddr>().map_err(|_| Malformed)?;
        hops.push(Hop::Address(ip.to_canonical()));
    }
    Ok(())
}

/// Appends the hops of one `Forwarded` line (RFC 7239 §4):
/// `1#( [pair] *( ";" [pair] ) )` with `pair = token "=" ( token / quoted-string )`, each
/// parameter at most once per element; whitespace only around the commas.
fn parse_forwarded(value: &[u8], hops: &mut Vec<Hop>) -> Result<(), Malformed> {
    let mut at = 0;
    let ows = |at: &mut usize| {
        while value.get(*at).is_some_and(|b| matches!(b, b' ' | b'\t')) {
            *at += 1;
        }
    };
    loop {
        ows(&mut at);
        match value.get(at) {
            None => return Ok(()),
            // An empty list element.
            Some(b',') => {
                at += 1;
                continue;
            }
            Some(_) => {}
        }
        let mut hop = None;
        let mut seen: Vec<&[u8]> = Vec::new();
        loop {
            if value.get(at) == Some(&b';') {
                at += 1;
                continue;
            }
            if value.get(at).is_none_or(|b| matches!(b, b',' | b' ' | b'\t')) {
                break;
            }
            let name = token(value, &mut at)?;
            if value.get(at) != Some(&b'=') {
                return Err(Malformed);
            }
            at += 1;
            let parameter = parameter_value(value, &mut at)?;
            if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                return Err(Malformed);
            }
            seen.push(name);
            if name.eq_ignore_ascii_case(b"for") {
                hop = Some(node(&parameter)?);
            }
            match value.get(at) {
                Some(b';') => at += 1,
                None | Some(b',' | b' ' | b'\t') => break,
                Some(_) => return Err(Malformed),
            }
        }
        hops.push(hop.unwrap_or(Hop::Unnamed));
        ows(&mut at);
        match value.get(at) {
            None => return Ok(()),
            Some(b',') => at += 1,
            Some(_) => return Err(Malformed),
        }
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token<'v>(value: &'v [u8], at: &mut usize) -> Result<&'v [u8], Malformed> {
    let start = *at;
    while value.get(*at).copied().is_some_and(is_tchar) {
        *at += 1;
    }
    if *at == start { Err(Malformed) } else { Ok(&value[start..*at]) }
}

/// A token, or a quoted-string with its escapes undone (RFC 9110 §5.6.4).
fn parameter_value(value: &[u8], at: &mut usize) -> Result<Vec<u8>, Malformed> {
    if value.get(*at) != Some(&b'"') {
        return token(value, at).map(<[u8]>::to_vec);
    }
    *at += 1;
    let mut out = Vec::new();
    loop {
        match value.get(*at).copied() {
            None => return Err(Malformed),
            Some(b'"') => {
                *at += 1;
                return Ok(out);
            }
            Some(b'\\') => {
                let escaped = value.get(*at + 1).copied().ok_or(Malformed)?;
                if !(escaped == b'\t' || escaped == b' ' || (0x21..=0x7E).contains(&escaped))
                    && escaped < 0x80
                {
                    return Err(Malformed);
                }
                out.push(escaped);
                *at += 2;
            }
            // qdtext: HTAB, SP, %x21, %x23-5B, %x5D-7E, obs-text.
            Some(b) if b == b'\t' || b == b' ' || b == 0x21 || (0x23..=0x7E).contains(&b) => {
                out.push(b);
                *at += 1;
            }
            Some(b) if b >= 0x80 => {
                out.push(b);
                *at += 1;
            }
            Some(_) => return Err(Malformed),
        }
    }
}

/// A `node` of RFC 7239 §6: `nodename [ ":" node-port ]`, where the name is an IPv4 address,
/// a bracketed IPv6 address, `unknown` or an obfuscated `_name`.
fn node(text: &[u8]) -> Result<Hop, Malformed> {
    let text = std::str::from_utf8(text).map_err(|_| Malformed)?;
    let (name, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(Malformed)?;
        let ip = v6.parse::<core::net::Ipv6Addr>().map_err(|_| Malformed)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(Malformed)?),
        };
        (Hop::Address(IpAddr::V6(ip).to_canonical()), port)
    } else {
        let (name, port) = match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        };
        let hop = if name.eq_ignore_ascii_case("unknown") || is_obfuscated(name) {
            Hop::Unnamed
        } else {
            Hop::Address(IpAddr::V4(name.parse().map_err(|_| Malformed)?))
        };
        (hop, port)
    };
    match port {
        None => Ok(name),
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => Ok(name),
        Some(p) if is_obfuscated(p) => Ok(name),
        Some(_) => Err(Malformed),
    }
}

/// `"_" 1*( ALPHA / DIGIT / "." / "_" / "-" )`.
fn is_obfuscated(s: &str) -> bool {
    s.strip_prefix('_').is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ForwardedHeader::Forwarded, nets).unwrap()
    }

    fn xff(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ForwardedHeader::XForwardedFor, nets).unwrap()
    }

    fn client(proxies: &TrustedProxies, peer: &str, lines: &[&str]) -> IpAddr {
        proxies.client_address(ip(peer), lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn nothing_is_believed_by_default() {
        let none = TrustedProxies::none();
        assert!(none.is_empty());
        for peer in ["10.0.0.2", "127.0.0.1", "::1"] {
            assert_eq!(client(&none, peer, &["for=1.2.3.4"]), ip(peer));
        }
        let x = TrustedProxies { header: ForwardedHeader::XForwardedFor, ..none };
        assert_eq!(client(&x, "10.0.0.2", &["1.2.3.4"]), ip("10.0.0.2"));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let proxies = xff(&["10.0.0.0/8"]);
        assert_eq!(client(&proxies, "203.0.113.5", &["10.0.0.1", "1.2.3.4"]), ip("203.0.113.5"));
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let proxies = xff(&["10.0.0.0/8", "192.168.1.1"]);
        // The client wrote "6.6.6.6" itself; the edge proxy appended what it saw.
        assert_eq!(
            client(&proxies, "10.0.0.2", &["6.6.6.6, 198.51.100.7, 192.168.1.1"]),
            ip("198.51.100.7")
        );
        // Several lines are one list, in order.
        assert_eq!(
            client(&proxies, "10.0.0.2", &["6.6.6.6", "198.51.100.7 ,\t10.1.1.1"]),
            ip("198.51.100.7")
        );
        // Every hop trusted: the left-most trusted proxy made the request.
        assert_eq!(client(&proxies, "10.0.0.2", &["10.9.9.9"]), ip("10.9.9.9"));
        // No header at all: the proxy itself.
        assert_eq!(client(&proxies, "10.0.0.2", &[]), ip("10.0.0.2"));
    }

    #[test]
    fn spoofing_attempts_do_not_move_the_client() {
        let proxies = xff(&["10.0.0.0/8"]);
        let peer = "10.0.0.2";
        // A trusted-looking address to the left of the real client changes nothing.
        assert_eq!(client(&proxies, peer, &["10.0.0.3, 198.51.100.7"]), ip("198.51.100.7"));
        // A header sent straight to the server, bypassing the proxy, is not believed.
        assert_eq!(client(&proxies, "198.51.100.7", &["1.2.3.4"]), ip("198.51.100.7"));
        // Garbage anywhere in the list: nothing in it is believed, the proxy is the key.
        for garbage in [
            "1.2.3.4, evil, 198.51.100.7",
            "1.2.3.4:80, 198.51.100.7",
            "[::1], 198.51.100.7",
            "01.2.3.4, 198.51.100.7",
            "198.51.100.7 198.51.100.8",
        ] {
            assert_eq!(client(&proxies, peer, &[garbage]), ip(peer), "{garbage}");
        }
        // A header of the other kind is not read at all.
        let f = forwarded(&["10.0.0.0/8"]);
        assert_eq!(f.client_address(ip(peer), std::iter::empty()), ip(peer));
    }

    #[test]
    fn forwarded_elements_and_nodes() {
        let proxies = forwarded(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let peer = "10.0.0.2";
        let cases: &[(&[&str], &str)] = &[
            (&["for=192.0.2.60;proto=http;by=203.0.113.43"], "192.0.2.60"),
            (&["For=\"[2001:db8:cafe::17]:4711\""], "2001:db8:cafe::17"),
            (&["for=\"192.0.2.60:8080\""], "192.0.2.60"),
            (&["for=192.0.2.43, for=198.51.100.17"], "198.51.100.17"),
            (&["for=192.0.2.43", "for=198.51.100.17;proto=https"], "198.51.100.17"),
            (&["for=198.51.100.17, for=10.1.2.3"], "198.51.100.17"),
            (&["for=198.51.100.17, for=\"[2001:db8:ffff::1]\""], "198.51.100.17"),
            (&["for=198.51.100.17,,  , for=10.1.2.3"], "198.51.100.17"),
            (&["proto=https;;for=198.51.100.17;"], "198.51.100.17"),
            // Escapes are undone before the node is read.
            (&["for=\"19\\2.0.2.60\""], "192.0.2.60"),
            // IPv4-mapped IPv6 is the IPv4 address (and trusted as such).
            (&["for=\"[::ffff:198.51.100.17]\""], "198.51.100.17"),
            (&["for=198.51.100.17, for=\"[::ffff:10.1.1.1]\""], "198.51.100.17"),
        ];
        for (lines, want) in cases {
            assert_eq!(client(&proxies, peer, lines), ip(want), "{lines:?}");
        }
    }

    #[test]
    fn unnamed_hops_stop_at_the_proxy_that_wrote_them() {
        let proxies = forwarded(&["10.0.0.0/8"]);
        let peer = "10.0.0.2";
        for lines in [
            &["for=198.51.100.17, for=unknown, for=10.1.1.1"][..],
            &["for=198.51.100.17, for=_hidden, for=10.1.1.1"],
            &["for=198.51.100.17, for=\"_gazonk:_p0rt\", for=10.1.1.1"],
            &["for=198.51.100.17, proto=https, for=10.1.1.1"],
        ] {
            // 10.1.1.1 is the proxy that could not name its peer.
            assert_eq!(client(&proxies, peer, lines), ip("10.1.1.1"), "{lines:?}");
        }
        assert_eq!(client(&proxies, peer, &["for=unknown"]), ip(peer));
        let x = xff(&["10.0.0.0/8"]);
        assert_eq!(client(&x, peer, &["198.51.100.17, unknown"]), ip(peer));
    }

    #[test]
    fn malformed_forwarded_headers_are_not_believed() {
        let proxies = forwarded(&["10.0.0.0/8"]);
        let peer = "10.0.0.2";
        for bad in [
            "for=192.0.2.60:80",                         // a port needs quotes
            "for=[2001:db8::1]",                         // so do brackets
            "for=\"2001:db8::1\"",                       // IPv6 needs brackets
            "for=\"[2001:db8::1]x\"",                    // junk after the bracket
            "for=\"[2001:db8::1]:123456\"",              // a port of six digits
            "for=\"192.0.2.60:\"",                       // an empty port
            "for=192.0.2.60;for=198.51.100.1",           // a parameter twice
            "for=192.0.2.60 ;proto=http",                // whitespace inside an element
            "for = 192.0.2.60",                          // around '='
            "for=\"192.0.2.60",                          // an unterminated quote
            "for",                                       // no value
            "=192.0.2.60",                               // no name
            "for=192.0.2.60 for=198.51.100.1",           // two elements without a comma
            "for=_",                                     // an empty obfuscated name
            "for=\"_a b\"",                              // a bad obfuscated name
            "for=300.1.1.1",                             // not an address
            "for=\"\\\u{7f}\"",                          // an escaped control character
            "for=198.51.100.17, for=\"[2001:db8::1]\"x", // junk after a quoted value
        ] {
            assert_eq!(client(&proxies, peer, &["for=1.1.1.1", bad]), ip(peer), "{bad}");
        }
        // Bytes that are not UTF-8 inside quotes are obs-text, and not an address.
        let value: &[u8] = b"for=\"\xff\"";
        assert_eq!(proxies.client_address(ip(peer), [value]), ip(peer));
    }

    #[test]
    fn proxy_lists_parse_addresses_and_networks() {
        let proxies = xff(&["10.0.0.0/8", "::1", " 192.168.0.1 ", "fd00::/8", "::ffff:172.16.0.1"]);
        for trusted in ["10.255.0.1", "::1", "192.168.0.1", "fd12::1", "172.16.0.1"] {
            assert!(proxies.is_trusted(ip(trusted)), "{trusted}");
        }
        assert!(proxies.is_trusted(ip("::ffff:10.1.2.3")));
        for not in ["11.0.0.1", "::2", "192.168.0.2", "fe80::1", "127.0.0.1"] {
            assert!(!proxies.is_trusted(ip(not)), "{not}");
        }
        for bad in ["10.0.0.0/33", "localhost", "", "10.0.0.0/8/8", "1.2.3"] {
            let err = TrustedProxies::new(ForwardedHeader::Forwarded, [bad]).unwrap_err();
            assert_eq!(err, InvalidProxy(bad.to_owned()));
        }
        assert_eq!(ForwardedHeader::default().name(), "forwarded");
        assert_eq!(ForwardedHeader::XForwardedFor.name(), "x-forwarded-for");
    }
}
