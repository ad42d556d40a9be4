//! The RFC 6455 §5.2 frame header: decoding with every check the RFC asks of a receiver, and
//! encoding for both roles.
//!
//! Written by hand: framing is the product's core and its hottest path.

use super::Role;
use super::error::ProtocolError;
use super::mask::apply_mask;

/// A frame's opcode (RFC 6455 §5.2). Reserved opcodes are rejected while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// Continues a fragmented message.
    Continuation,
    /// Starts a text message.
    Text,
    /// Starts a binary message.
    Binary,
    /// Starts or answers the closing handshake.
    Close,
    /// A keep-alive or liveness probe; answered with a pong.
    Ping,
    /// The answer to a ping (or an unsolicited heartbeat).
    Pong,
}

impl OpCode {
    /// Decodes the low four bits of the first header byte.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The four-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong: at most 125 bytes and never fragmented.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest possible frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of its message.
    pub fin: bool,
    /// The three RSV bits, in the low bits (RSV1 = 4, RSV2 = 2, RSV3 = 1).
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Number of bytes this header takes on the wire.
    pub fn encoded_len(&self) -> usize {
        header_len(self.payload_len, self.mask.is_some())
    }

    /// Writes the header into `out` and returns its length. Always uses the minimal length
    /// encoding, as RFC 6455 §5.2 requires.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 7) << 4) | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = 2;
        if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
        } else if self.payload_len <= u64::from(u16::MAX) {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            n = 4;
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            n = 10;
        }
        if let Some(key) = self.mask {
            out[n..n + 4].copy_from_slice(&key);
            n += 4;
        }
        n
    }
}

/// Header length for a payload of `len` bytes.
pub fn header_len(len: u64, masked: bool) -> usize {
    let base = if len < 126 {
        2
    } else if len <= u64::from(u16::MAX) {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

/// Decodes frame headers for one role, applying every stateless check of RFC 6455 §5:
/// reserved bits and opcodes, control frame rules, minimal length encoding, the masking rule
/// of the role and the frame size limit.
///
/// Stateful checks (continuation order, message size, UTF-8) belong to
/// [`Connection`](super::Connection).
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    role: Role,
    max_frame_size: u64,
    allowed_rsv: u8,
}

/// A whole frame decoded and unmasked in place by [`FrameDecoder::decode_in_place`].
#[derive(Debug)]
pub struct Frame<'a> {
    /// The frame's header.
    pub header: FrameHeader,
    /// The unmasked payload, inside the caller's buffer.
    pub payload: &'a mut [u8],
    /// Bytes of the buffer this frame used (header and payload).
    pub len: usize,
}

impl FrameDecoder {
    /// A decoder for frames arriving at `role` (a server expects masked frames).
    pub fn new(role: Role, max_frame_size: u64) -> Self {
        Self { role, max_frame_size, allowed_rsv: 0 }
    }

    /// The same decoder, letting RSV bits `rsv` through (RSV1 = 4 once permessage-deflate is
    /// negotiated); the connection checks where they may appear.
    pub fn allowing_rsv(self, rsv: u8) -> Self {
        Self { allowed_rsv: rsv & 7, ..self }
    }

    /// Parses a header at the start of `buf`; `Ok(None)` means more bytes are needed.
    ///
    /// Fails as early as the bytes allow: a reserved bit or opcode fails on the first byte.
    pub fn decode_header(&self, buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let Some(&b0) = buf.first() else { return Ok(None) };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 7;
        if rsv & !self.allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits(rsv));
        }
        let opcode =
            OpCode::from_bits(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        let Some(&b1) = buf.get(1) else { return Ok(None) };
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let len7 = b1 & 0x7F;
        if opcode.is_control() && len7 > MAX_CONTROL_PAYLOAD as u8 {
            return Err(ProtocolError::ControlTooLong);
        }
        let (payload_len, mut at) = match len7 {
            126 => {
                let Some(ext) = buf.get(2..4) else { return Ok(None) };
                let len = u64::from(u16::from_be_bytes([ext[0], ext[1]]));
                if len < 126 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (len, 4)
            }
            127 => {
                let Some(ext) = buf.get(2..10) else { return Ok(None) };
                let mut be = [0u8; 8];
                be.copy_from_slice(ext);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthHighBit);
                }
                if len <= u64::from(u16::MAX) {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if payload_len > self.max_frame_size {
            return Err(ProtocolError::FrameTooLarge {
                len: payload_len,
                max: self.max_frame_size,
            });
        }
        let mask = if masked {
            let Some(key) = buf.get(at..at + 4) else { return Ok(None) };
            at += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        Ok(Some((FrameHeader { fin, rsv, opcode, mask, payload_len }, at)))
    }

    /// Decodes one whole frame at the start of `buf` and unmasks its payload in place.
    ///
    /// `Ok(None)` means the frame is not complete yet. This is the zero-copy path for callers
    /// that hold whole frames in their own buffer; [`Connection`](super::Connection) uses
    /// [`decode_header`](Self::decode_header) and streams payloads instead.
    pub fn decode_in_place<'a>(
        &self,
        buf: &'a mut [u8],
    ) -> Result<Option<Frame<'a>>, ProtocolError> {
        let Some((header, hlen)) = self.decode_header(buf)? else { return Ok(None) };
        // `payload_len` is at most `max_frame_size`; on 32-bit targets a larger value cannot fit.
        let Ok(plen) = usize::try_from(header.payload_len) else {
            return Err(ProtocolError::FrameTooLarge {
                len: header.payload_len,
                max: self.max_frame_size,
            });
        };
        let Some(end) = hlen.checked_add(plen).filter(|&end| end <= buf.len()) else {
            return Ok(None);
        };
        let payload = &mut buf[hlen..end];
        if let Some(key) = header.mask {
            apply_mask(payload, key, 0);
        }
        Ok(Some(Frame { header, payload, len: end }))
    }
}

/// Appends a complete frame to `out`, masking the payload with `mask` when it is given.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    encode_frame_rsv(out, fin, 0, opcode, mask, payload);
}

/// [`encode_frame`] with RSV bits `rsv` (RSV1 = 4 marks a compressed message).
pub fn encode_frame_rsv(
    out: &mut Vec<u8>,
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let header = FrameHeader { fin, rsv, opcode, mask, payload_len: payload.len() as u64 };
    let mut hbuf = [0u8; MAX_HEADER_LEN];
    let hlen = header.encode(&mut hbuf);
    out.reserve(hlen + payload.len());
    out.extend_from_slice(&hbuf[..hlen]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: FrameDecoder =
        FrameDecoder { role: Role::Server, max_frame_size: 1 << 24, allowed_rsv: 0 };
    const CLIENT: FrameDecoder =
        FrameDecoder { role: Role::Client, max_frame_size: 1 << 24, allowed_rsv: 0 };

    #[test]
    fn rfc_examples() {
        // RFC 6455 §5.7: a single-frame unmasked text message "Hello".
        let mut unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let f = CLIENT.decode_in_place(&mut unmasked).unwrap().unwrap();
        assert_eq!(
            (f.header.opcode, f.header.fin, &*f.payload, f.len),
            (OpCode::Text, true, &b"Hello"[..], 7)
        );
        // A single-frame masked text message "Hello".
        let mut masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let f = SERVER.decode_in_place(&mut masked).unwrap().unwrap();
        assert_eq!(&*f.payload, b"Hello");
        // A fragmented unmasked text message: "Hel" then "lo".
        let (h, n) = CLIENT.decode_header(&[0x01, 0x03, 0x48, 0x65, 0x6c]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.payload_len, n), (false, OpCode::Text, 3, 2));
        let (h, _) = CLIENT.decode_header(&[0x80, 0x02, 0x6c, 0x6f]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));
        // 256 bytes binary in a single unmasked message uses the 16-bit length.
        let (h, n) = CLIENT.decode_header(&[0x82, 0x7E, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (256, 4));
        // 64 KiB uses the 64-bit length.
        let (h, n) = CLIENT.decode_header(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn encode_then_decode_round_trips_every_length_class() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut wire = Vec::new();
                encode_frame(&mut wire, true, OpCode::Binary, mask, &payload);
                let dec = if mask.is_some() { SERVER } else { CLIENT };
                let f = dec.decode_in_place(&mut wire).unwrap().unwrap();
                assert_eq!(f.header.payload_len, len as u64);
                assert_eq!(f.payload, &payload[..]);
                assert_eq!(f.len, header_len(len as u64, mask.is_some()) + len);
            }
        }
    }

    #[test]
    fn partial_headers_ask_for_more() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, true, OpCode::Binary, Some([1, 2, 3, 4]), &[0u8; 300]);
        for cut in 0..8 {
            assert_eq!(SERVER.decode_header(&wire[..cut]).unwrap(), None, "cut {cut}");
        }
        assert!(SERVER.decode_header(&wire[..8]).unwrap().is_some());
        assert!(SERVER.decode_in_place(&mut wire[..100]).unwrap().is_none());
    }

    #[test]
    fn stateless_violations_fail_with_their_reason() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (&[0xC1], ProtocolError::ReservedBits(4)),
            (&[0x83], ProtocolError::ReservedOpcode(3)),
            (&[0x8B], ProtocolError::ReservedOpcode(0xB)),
            (&[0x09], ProtocolError::FragmentedControl),
            (&[0x89, 0xFE], ProtocolError::ControlTooLong),
            (&[0x81, 0x05], ProtocolError::UnmaskedFrame),
            (&[0x82, 0xFE, 0x00, 0x7D], ProtocolError::NonMinimalLength),
            (&[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF], ProtocolError::NonMinimalLength),
            (&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], ProtocolError::LengthHighBit),
        ];
        for (bytes, want) in cases {
            assert_eq!(SERVER.decode_header(bytes).unwrap_err(), *want, "{bytes:02x?}");
        }
        assert_eq!(CLIENT.decode_header(&[0x81, 0x85]).unwrap_err(), ProtocolError::MaskedFrame);
        let small = FrameDecoder::new(Role::Server, 1000);
        assert_eq!(
            small.decode_header(&[0x82, 0xFE, 0x03, 0xE9]).unwrap_err(),
            ProtocolError::FrameTooLarge { len: 1001, max: 1000 }
        );
    }

    #[test]
    fn announced_huge_frame_fails_before_any_allocation() {
        // 2^63 - 1 bytes announced: rejected from the header alone.
        let hdr = [0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4];
        assert!(matches!(SERVER.decode_header(&hdr), Err(ProtocolError::FrameTooLarge { .. })));
    }
}
