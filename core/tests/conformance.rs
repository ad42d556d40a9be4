//! RFC 6455 conformance, organised like the Autobahn|Testsuite case families 1–10 and written
//! from the RFC: each test feeds a server connection hand-made frames and checks what it
//! answers, on the virtual clock.

mod util;

use util::*;
use wsrpc_core::ws::frame::OpCode;
use wsrpc_core::ws::{CloseCode, Config, Error, Initiator, ProtocolError};

/// Family 1: framing of text and binary messages of every length class.
mod case1_framing {
    use super::*;

    #[test]
    fn text_and_binary_of_every_length_class_echo_back() {
        for len in [0usize, 125, 126, 127, 128, 65535, 65536, 65537] {
            for (opcode, byte) in [(0x1, b'*'), (0x2, 0xFEu8)] {
                for chop in [usize::MAX, 997, 1] {
                    if chop == 1 && len > 1000 {
                        continue;
                    }
                    let mut rc = RawClient::default_config();
                    let payload = vec![byte; len];
                    rc.send_chopped(&cframe(true, opcode, &payload), chop);
                    assert_eq!(rc.echoed(), vec![payload], "len {len} opcode {opcode} chop {chop}");
                    assert_eq!(
                        rc.frames[0].opcode,
                        if opcode == 1 { OpCode::Text } else { OpCode::Binary }
                    );
                }
            }
        }
    }

    #[test]
    fn frames_use_minimal_length_encoding_when_sent() {
        let mut rc = RawClient::default_config();
        rc.send(&text(&[b'a'; 126]));
        rc.send(&text(&[b'a'; 65536]));
        // Decoding with our own strict decoder succeeded for both, so both were minimal.
        assert_eq!(rc.echoed().iter().map(Vec::len).collect::<Vec<_>>(), [126, 65536]);
    }
}

/// Family 2: pings and pongs.
mod case2_ping_pong {
    use super::*;

    #[test]
    fn ping_is_answered_with_identical_pong() {
        for payload in [&b""[..], b"Hello, world!", &[0u8, 0xFF, 0xFE, 0xFD], &[b'p'; 125]] {
            let mut rc = RawClient::default_config();
            rc.send(&cframe(true, 0x9, payload));
            assert_eq!(
                rc.take_frames(),
                vec![Out { fin: true, rsv: 0, opcode: OpCode::Pong, payload: payload.to_vec() }]
            );
        }
    }

    #[test]
    fn ping_over_125_bytes_is_a_protocol_error() {
        let mut rc = RawClient::default_config();
        rc.send(&cframe(true, 0x9, &[b'x'; 126]));
        assert!(rc.frames.iter().all(|f| f.opcode != OpCode::Pong));
        rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn unsolicited_pongs_are_ignored() {
        let mut rc = RawClient::default_config();
        rc.send(&cframe(true, 0xA, b"unsolicited"));
        rc.send(&text(b"after"));
        assert_eq!(rc.echoed(), vec![b"after".to_vec()]);
        assert!(rc.server.is_open());
    }

    #[test]
    fn ping_chopped_into_single_bytes() {
        let mut rc = RawClient::default_config();
        rc.send_chopped(&cframe(true, 0x9, b"chopped ping"), 1);
        assert_eq!(rc.frames[0].payload, b"chopped ping");
    }

    #[test]
    fn ten_pings_drained_one_by_one_get_ten_pongs() {
        let mut rc = RawClient::default_config();
        for i in 0..10u8 {
            rc.send(&cframe(true, 0x9, &[i]));
        }
        let pongs: Vec<_> = rc
            .frames
            .iter()
            .filter(|f| f.opcode == OpCode::Pong)
            .map(|f| f.payload.clone())
            .collect();
        assert_eq!(pongs, (0..10u8).map(|i| vec![i]).collect::<Vec<_>>());
    }

    #[test]
    fn a_ping_flood_without_reading_is_answered_in_bounded_memory() {
        let mut rc = RawClient::default_config();
        let mut burst = Vec::new();
        for i in 0..1000u16 {
            burst.extend_from_slice(&cframe(true, 0x9, &i.to_be_bytes()));
        }
        let mut at = 0;
        while at < burst.len() {
            at += rc.server.handle_input(rc.now, &burst[at..]);
        }
        // Nothing was written meanwhile: the first pongs are queued in order, later pings are
        // superseded by the newest (RFC 6455 §5.5.3).
        assert!(rc.server.transmit_len() <= 33 * 4, "{}", rc.server.transmit_len());
        rc.collect();
        let pongs: Vec<u16> =
            rc.frames.iter().map(|f| u16::from_be_bytes([f.payload[0], f.payload[1]])).collect();
        assert_eq!(pongs.len(), 33);
        assert_eq!(&pongs[..32], &(0..32).collect::<Vec<_>>()[..]);
        assert_eq!(pongs[32], 999);
    }

    #[test]
    fn pong_to_a_ping_between_fragments_precedes_the_echo() {
        let mut rc = RawClient::default_config();
        let mut wire = cframe(false, 0x1, b"fragment1");
        wire.extend(cframe(true, 0x9, b"ping payload"));
        wire.extend(cframe(true, 0x0, b"fragment2"));
        rc.send(&wire);
        let kinds: Vec<OpCode> = rc.frames.iter().map(|f| f.opcode).collect();
        assert_eq!(kinds, [OpCode::Pong, OpCode::Text]);
    }
}

/// Family 3: reserved bits.
mod case3_reserved_bits {
    use super::*;

    #[test]
    fn any_rsv_bit_fails_the_connection_and_stops_processing() {
        for (rsv, opcode) in
            [(0x40, 0x1), (0x20, 0x1), (0x10, 0x1), (0x70, 0x2), (0x50, 0x9), (0x30, 0x2)]
        {
            let mut rc = RawClient::default_config();
            let mut wire = text(b"first");
            wire.extend(raw_frame(0x80 | rsv | opcode, Some(KEY), b"bad", 0));
            wire.extend(cframe(true, 0x9, b"ping after"));
            rc.send(&wire);
            assert_eq!(rc.echoed(), vec![b"first".to_vec()]);
            assert!(
                rc.frames.iter().all(|f| f.opcode != OpCode::Pong),
                "no pong after the violation"
            );
            rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
            assert!(matches!(
                rc.server.error(),
                Some(Error::Protocol(ProtocolError::ReservedBits(_)))
            ));
        }
    }
}

/// Family 4: reserved opcodes.
mod case4_opcodes {
    use super::*;

    #[test]
    fn reserved_data_and_control_opcodes_fail() {
        for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let mut rc = RawClient::default_config();
            let mut wire = text(b"before");
            wire.extend(cframe(true, opcode, b"reserved"));
            wire.extend(text(b"after"));
            rc.send(&wire);
            assert_eq!(rc.echoed(), vec![b"before".to_vec()], "opcode {opcode}");
            rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
        }
    }
}

/// Family 5: fragmentation.
mod case5_fragmentation {
    use super::*;

    #[test]
    fn fragments_reassemble_with_control_frames_interleaved() {
        let mut rc = RawClient::default_config();
        let mut wire = cframe(false, 0x1, b"frag");
        wire.extend(cframe(true, 0x9, b"ping in between"));
        wire.extend(cframe(false, 0x0, b"men"));
        wire.extend(cframe(true, 0xA, b"pong in between"));
        wire.extend(cframe(true, 0x0, b"ted"));
        for chop in [usize::MAX, 3, 1] {
            let mut rc2 = RawClient::default_config();
            rc2.send_chopped(&wire, chop);
            assert_eq!(rc2.echoed(), vec![b"fragmented".to_vec()], "chop {chop}");
            assert!(
                rc2.frames
                    .iter()
                    .any(|f| f.opcode == OpCode::Pong && f.payload == b"ping in between")
            );
        }
        rc.send(&wire);
        // The pong to the interleaved ping leaves before the reassembled echo.
        assert_eq!(rc.frames[0].opcode, OpCode::Pong);
    }

    #[test]
    fn fragmented_control_frames_fail() {
        for opcode in [0x9u8, 0xA, 0x8] {
            let mut rc = RawClient::default_config();
            rc.send(&cframe(false, opcode, b"frag"));
            rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn continuation_without_a_message_fails() {
        for fin in [true, false] {
            let mut rc = RawClient::default_config();
            rc.send(&cframe(fin, 0x0, b"orphan"));
            rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
            assert!(matches!(
                rc.server.error(),
                Some(Error::Protocol(ProtocolError::UnexpectedContinuation))
            ));
        }
    }

    #[test]
    fn new_message_inside_a_fragmented_one_fails() {
        let mut rc = RawClient::default_config();
        let mut wire = cframe(false, 0x1, b"one");
        wire.extend(cframe(true, 0x1, b"two"));
        rc.send(&wire);
        assert!(rc.echoed().is_empty());
        rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn one_byte_fragments() {
        let mut rc = RawClient::default_config();
        let msg = b"fragmented into single bytes";
        let mut wire = Vec::new();
        for (i, b) in msg.iter().enumerate() {
            let op = if i == 0 { 0x1 } else { 0x0 };
            wire.extend(cframe(i == msg.len() - 1, op, &[*b]));
        }
        rc.send(&wire);
        assert_eq!(rc.echoed(), vec![msg.to_vec()]);
    }

    #[test]
    fn empty_fragments_are_valid() {
        let mut rc = RawClient::default_config();
        let mut wire = cframe(false, 0x1, b"");
        wire.extend(cframe(false, 0x0, b""));
        wire.extend(cframe(true, 0x0, b""));
        rc.send(&wire);
        assert_eq!(rc.echoed(), vec![Vec::<u8>::new()]);
    }
}

/// Family 6: UTF-8 handling, including fail-fast inside a frame.
mod case6_utf8 {
    use super::*;

    #[test]
    fn valid_text_in_any_split_echoes() {
        let s = "Hello-µ@ßöäüàá-UTF-8!! κόσμε 𝄞 \u{10FFFF}".as_bytes();
        for split in 0..=s.len() {
            let mut rc = RawClient::default_config();
            let mut wire = cframe(false, 0x1, &s[..split]);
            wire.extend(cframe(true, 0x0, &s[split..]));
            rc.send(&wire);
            assert_eq!(rc.echoed(), vec![s.to_vec()], "split {split}");
        }
    }

    #[test]
    fn invalid_sequences_get_1007() {
        let cases: &[&[u8]] = &[
            &[
                0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
                0x65, 0x64, 0x69, 0x74, 0x65, 0x64,
            ],
            &[0xC0, 0xAF],
            &[0xF8, 0x88, 0x80, 0x80, 0x80],
            &[0xED, 0xBF, 0xBF],
            &[0xF4, 0x90, 0x80, 0x80],
            &[0x80],
            &[0xFE],
            &[b'a', 0xE2, 0x82], // truncated at the end of the message
        ];
        for bad in cases {
            let mut rc = RawClient::default_config();
            rc.send(&text(bad));
            assert!(rc.echoed().is_empty(), "{bad:02x?}");
            rc.assert_failed_with(CloseCode::INVALID_PAYLOAD);
        }
    }

    #[test]
    fn fails_at_the_first_bad_byte_inside_one_frame() {
        // Autobahn 6.4.3/6.4.4: one frame whose payload arrives in pieces; the close must come
        // as soon as the piece with the bad byte arrives, before the frame is complete.
        let mut payload = "κόσμε".as_bytes().to_vec();
        let bad_at = payload.len();
        payload.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]);
        payload.extend_from_slice(b"edited");
        let wire = text(&payload);
        let header = wire.len() - payload.len();
        let mut rc = RawClient::default_config();
        rc.send(&wire[..header + bad_at + 1]); // up to and including 0xF4: still possible
        assert_eq!(rc.sent_close(), None);
        rc.send(&wire[header + bad_at + 1..header + bad_at + 2]); // 0x90: impossible now
        assert_eq!(rc.sent_close(), Some(1007));
        rc.send(&wire[header + bad_at + 2..]);
        assert!(rc.echoed().is_empty());
    }

    #[test]
    fn fails_fast_across_fragment_boundaries() {
        let mut rc = RawClient::default_config();
        rc.send(&cframe(false, 0x1, &[b'o', b'k', 0xF4]));
        assert_eq!(rc.sent_close(), None);
        rc.send(&cframe(false, 0x0, &[0x90]));
        assert_eq!(rc.sent_close(), Some(1007));
    }

    #[test]
    fn sequence_split_across_fragments_is_valid() {
        let mut rc = RawClient::default_config();
        let euro = "€".as_bytes();
        let mut wire = cframe(false, 0x1, &euro[..1]);
        wire.extend(cframe(false, 0x0, &euro[1..2]));
        wire.extend(cframe(true, 0x0, &euro[2..]));
        rc.send_chopped(&wire, 1);
        assert_eq!(rc.echoed(), vec![euro.to_vec()]);
    }

    #[test]
    fn binary_messages_are_not_checked() {
        let mut rc = RawClient::default_config();
        rc.send(&cframe(true, 0x2, &[0xFF, 0xFE, 0xC0]));
        assert_eq!(rc.echoed(), vec![vec![0xFF, 0xFE, 0xC0]]);
    }
}

/// Family 7: the closing handshake.
mod case7_close {
    use super::*;

    #[test]
    fn close_with_valid_code_is_echoed_and_ends_the_connection() {
        for code in
            [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
        {
            let mut rc = RawClient::default_config();
            rc.send(&close_frame(code, b"bye"));
            assert_eq!(rc.sent_close(), Some(code));
            assert!(rc.server.wants_shutdown_write());
            // A clean close: the server closes TCP first, at once (RFC 6455 §7.1.1).
            assert!(rc.server.is_finished(), "code {code}");
            let closed = rc.closed().unwrap();
            assert_eq!(
                (closed.code, closed.reason.as_str(), closed.initiator, closed.clean),
                (CloseCode(code), "bye", Initiator::Remote, true)
            );
        }
    }

    #[test]
    fn empty_close_is_answered_with_an_empty_close() {
        let mut rc = RawClient::default_config();
        rc.send(&cframe(true, 0x8, b""));
        assert_eq!(
            rc.frames,
            vec![Out { fin: true, rsv: 0, opcode: OpCode::Close, payload: vec![] }]
        );
        assert_eq!(rc.closed().unwrap().code, CloseCode::NO_STATUS);
    }

    #[test]
    fn invalid_codes_and_payloads_get_1002() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            let mut rc = RawClient::default_config();
            rc.send(&close_frame(code, b""));
            assert_eq!(rc.sent_close(), Some(1002), "code {code}");
        }
        let mut rc = RawClient::default_config();
        rc.send(&cframe(true, 0x8, &[0x03]));
        assert_eq!(rc.sent_close(), Some(1002));
        let mut rc = RawClient::default_config();
        rc.send(&close_frame(1000, &[0xCE, 0xBA, 0xED, 0xA0, 0x80]));
        assert_eq!(rc.sent_close(), Some(1002));
        assert!(matches!(
            rc.server.error(),
            Some(Error::Protocol(ProtocolError::InvalidCloseReason))
        ));
    }

    #[test]
    fn close_with_longest_reason() {
        let mut rc = RawClient::default_config();
        rc.send(&close_frame(1000, &[b'r'; 123]));
        assert_eq!(rc.sent_close(), Some(1000));
    }

    #[test]
    fn nothing_is_accepted_after_a_close() {
        let mut rc = RawClient::default_config();
        let mut wire = close_frame(1000, b"");
        wire.extend(text(b"after close"));
        wire.extend(cframe(true, 0x9, b"ping after close"));
        rc.send(&wire);
        assert!(rc.echoed().is_empty());
        assert_eq!(rc.frames.len(), 1);
        rc.send(&text(b"later still"));
        assert_eq!(rc.frames.len(), 1);
        // The peer went on after its close frame in the same read: a lingering close, since
        // closing now would answer its unread bytes with a reset that can destroy our close
        // frame in flight.
        assert!(rc.server.wants_shutdown_write());
        assert!(!rc.server.is_finished());
        rc.server.handle_eof(rc.now);
        assert!(rc.server.is_finished());
    }

    #[test]
    fn bytes_after_the_close_frame_before_the_reply_is_written_make_it_linger() {
        // One read holding the close frame and more: the peer goes on after its close, so
        // closing at once would answer its unread bytes with a reset that can destroy our
        // close frame in flight. The server reads to end of file instead.
        let mut rc = RawClient::default_config();
        let mut wire = close_frame(1000, b"");
        wire.extend(text(b"after close"));
        let mut at = 0;
        while at < wire.len() {
            at += rc.server.handle_input(rc.now, &wire[at..]);
        }
        rc.collect();
        assert_eq!(rc.sent_close(), Some(1000));
        assert!(rc.server.wants_shutdown_write());
        assert!(!rc.server.is_finished());
        rc.server.handle_eof(rc.now);
        assert!(rc.server.is_finished());
        // The same, ended by the close timeout rather than end of file.
        let mut rc = RawClient::default_config();
        let mut at = 0;
        while at < wire.len() {
            at += rc.server.handle_input(rc.now, &wire[at..]);
        }
        rc.collect();
        assert!(!rc.server.is_finished());
        rc.advance(Config::default().close_timeout);
        assert!(rc.server.is_finished(), "bounded by the close timeout");
        // Finished after a clean close, it stays finished whatever else arrives.
        let mut rc = RawClient::default_config();
        rc.send(&close_frame(1000, b""));
        assert!(rc.server.is_finished());
        rc.send(b"x");
        assert!(rc.server.is_finished(), "finished is final");
    }

    #[test]
    fn local_close_waits_for_the_peer_then_finishes() {
        let mut rc = RawClient::default_config();
        rc.server.close(rc.now, CloseCode::GOING_AWAY, "shutdown").unwrap();
        rc.collect();
        assert_eq!(rc.sent_close(), Some(1001));
        assert!(!rc.server.is_finished());
        // Messages still in flight from the peer are delivered before its close.
        rc.send(&text(b"in flight"));
        assert_eq!(
            rc.events.iter().filter(|e| matches!(e, wsrpc_core::ws::Event::Message(_))).count(),
            1
        );
        rc.send(&close_frame(1001, b""));
        assert!(rc.server.wants_shutdown_write());
        assert!(rc.server.is_finished(), "both close frames exchanged: the server closes TCP");
        let closed = rc.closed().unwrap();
        assert_eq!(
            (closed.code, closed.initiator, closed.clean),
            (CloseCode::GOING_AWAY, Initiator::Local, true)
        );
    }

    #[test]
    fn close_timeout_aborts_a_silent_peer() {
        let mut rc = RawClient::default_config();
        rc.server.close(rc.now, CloseCode::NORMAL, "").unwrap();
        rc.collect();
        let deadline = rc.server.poll_timeout().unwrap();
        assert_eq!(deadline - rc.now, Config::default().close_timeout);
        rc.advance(Config::default().close_timeout);
        assert!(rc.server.is_finished());
        assert_eq!(rc.server.error(), Some(&Error::CloseTimeout));
    }

    #[test]
    fn sending_after_close_is_refused() {
        let mut rc = RawClient::default_config();
        rc.server.close(rc.now, CloseCode::NORMAL, "").unwrap();
        assert!(rc.server.send_text(rc.now, "late").is_err());
        assert!(rc.server.close(rc.now, CloseCode::NORMAL, "").is_err());
        assert!(rc.server.close(rc.now, CloseCode(1005), "").is_err());
    }
}

/// Family 9: large messages and limits.
mod case9_limits {
    use super::*;

    #[test]
    fn large_messages_in_large_and_small_pieces() {
        for (len, frag) in [(1 << 20, 1 << 20), (4 << 20, 64 * 1024), (1 << 20, 64)] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut wire = Vec::new();
            let chunks: Vec<_> = payload.chunks(frag).collect();
            for (i, c) in chunks.iter().enumerate() {
                wire.extend(cframe(i == chunks.len() - 1, if i == 0 { 0x1 } else { 0x0 }, c));
            }
            let mut cfg = Config::default();
            cfg.max_fragments = 1 << 20;
            let mut rc = RawClient::new(cfg);
            rc.send_chopped(&wire, 65536);
            assert_eq!(rc.echoed(), vec![payload], "len {len} frag {frag}");
        }
    }

    #[test]
    fn frame_over_the_limit_gets_1009_from_its_header() {
        let mut cfg = Config::default();
        cfg.max_frame_size = 1000;
        let mut rc = RawClient::new(cfg);
        let wire = cframe(true, 0x2, &[0; 1001]);
        rc.send(&wire[..8]); // header only
        rc.assert_failed_with(CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn message_over_the_limit_gets_1009_when_the_sum_passes_it() {
        let mut cfg = Config::default();
        cfg.max_message_size = 100;
        let mut rc = RawClient::new(cfg);
        rc.send(&cframe(false, 0x2, &[0; 60]));
        assert_eq!(rc.sent_close(), None);
        rc.send(&cframe(false, 0x0, &[0; 41]));
        rc.assert_failed_with(CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn too_many_fragments_get_1009() {
        let mut cfg = Config::default();
        cfg.max_fragments = 10;
        let mut rc = RawClient::new(cfg);
        let mut wire = cframe(false, 0x2, b"x");
        for _ in 0..10 {
            wire.extend(cframe(false, 0x0, b"x"));
        }
        rc.send(&wire);
        rc.assert_failed_with(CloseCode::MESSAGE_TOO_BIG);
        assert!(matches!(
            rc.server.error(),
            Some(Error::Protocol(ProtocolError::TooManyFragments { max: 10 }))
        ));
    }

    #[test]
    fn huge_announced_length_fails_without_allocating() {
        let mut rc = RawClient::default_config();
        let mut hdr = vec![0x82, 0xFF];
        hdr.extend_from_slice(&(1u64 << 62).to_be_bytes());
        hdr.extend_from_slice(&KEY);
        rc.send(&hdr);
        rc.assert_failed_with(CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn non_minimal_lengths_fail() {
        let mut rc = RawClient::default_config();
        rc.send(&raw_frame(0x81, Some(KEY), b"short", 2));
        rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
        let mut rc = RawClient::default_config();
        rc.send(&raw_frame(0x81, Some(KEY), b"short", 8));
        rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn unmasked_client_frames_fail() {
        let mut rc = RawClient::default_config();
        rc.send(&raw_frame(0x81, None, b"unmasked", 0));
        rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
    }
}

/// Family 10: misc — a large message in one frame echoes as one.
mod assembly_budget {
    use wsrpc_core::ws::AssemblyBudget;

    use super::*;

    const KIB: usize = 1024;

    #[test]
    fn unfinished_messages_share_one_budget_and_give_it_back() {
        // What is charged is the buffer's capacity beyond the first 64 KiB of each message,
        // in 64 KiB steps.
        let budget = AssemblyBudget::new(448 * KIB as u64);
        let mut cfg = config();
        cfg.assembly_budget = Some(budget.clone());
        let mut a = RawClient::new(cfg.clone());
        let mut b = RawClient::new(cfg.clone());
        // A holds 200 KiB of an unfinished message: 136 KiB counted, 192 KiB charged.
        a.send(&cframe(false, 1, &vec![b'a'; 200 * KIB]));
        assert_eq!(budget.used(), 192 * KIB as u64);
        // B cannot assemble 330 KiB more (320 KiB charged): close 1013, nothing buffered.
        b.send(&cframe(false, 1, &vec![b'b'; 330 * KIB]));
        b.assert_failed_with(CloseCode::TRY_AGAIN_LATER);
        assert_eq!(budget.used(), 192 * KIB as u64);
        // A finishes (one more byte doubles its buffer to 400 KiB: 384 KiB charged, which
        // fits); its share is given back and it gets its message.
        a.send(&cframe(true, 0, b"!"));
        assert!(a.echoed() == [[vec![b'a'; 200 * KIB], b"!".to_vec()].concat()], "A's message");
        assert_eq!(budget.used(), 0);
        // Another connection can now use the room; a dropped connection gives it back too.
        let mut c = RawClient::new(cfg);
        c.send(&cframe(false, 1, &vec![b'c'; 100 * KIB]));
        assert_eq!(budget.used(), 64 * KIB as u64);
        drop(c);
        assert_eq!(budget.used(), 0);
    }
}

mod case10_misc {
    use super::*;

    #[test]
    fn large_single_frame_echoes_intact() {
        let mut rc = RawClient::default_config();
        let payload = vec![b'*'; 65536];
        rc.send_chopped(&text(&payload), 1300);
        assert_eq!(rc.echoed(), vec![payload]);
    }
}

/// A protocol violation ends frame processing at once, wherever in a frame it is found.
mod first_failure_is_final {
    use super::*;
    use wsrpc_core::ws::Event;

    /// Violations caught by each stage of reading a frame, each followed by frames that would
    /// produce output or events of their own (a ping, a message, a bad close, a close).
    fn violations() -> Vec<(&'static str, Vec<u8>, CloseCode)> {
        vec![
            (
                "header: reserved bits",
                raw_frame(0xC1, Some(KEY), b"x", 0),
                CloseCode::PROTOCOL_ERROR,
            ),
            ("frame start: stray continuation", cframe(true, 0x0, b"x"), CloseCode::PROTOCOL_ERROR),
            ("payload: invalid UTF-8", text(b"caf\xC3\x28 mid-frame"), CloseCode::INVALID_PAYLOAD),
            ("frame end: bad close code", close_frame(999, b""), CloseCode::PROTOCOL_ERROR),
            ("frame end: truncated UTF-8", text(b"caf\xC3"), CloseCode::INVALID_PAYLOAD),
        ]
    }

    fn trailing_frames() -> Vec<u8> {
        let mut wire = cframe(true, 0x9, b"ping after");
        wire.extend(text(b"message after"));
        wire.extend(raw_frame(0xF2, Some(KEY), b"second violation", 0));
        wire.extend(close_frame(1000, b""));
        wire
    }

    #[test]
    fn one_close_and_no_events_after_a_violation_in_one_read() {
        for close_sent in [false, true] {
            for (what, bad, code) in violations() {
                let mut rc = RawClient::default_config();
                if close_sent {
                    rc.server.close(rc.now, CloseCode::GOING_AWAY, "bye").unwrap();
                    rc.collect();
                    rc.frames.clear();
                }
                let mut wire = text(b"before");
                wire.extend(&bad);
                wire.extend(trailing_frames());
                // First the message before the violation, as a drive loop would take it.
                let used = rc.server.handle_input(rc.now, &wire);
                let mut events = Vec::new();
                while let Some(e) = rc.server.poll_event() {
                    events.push(e);
                }
                assert!(matches!(events[..], [Event::Message(_)]), "{what}: {events:?}");
                // Then the rest, in one call: consumed whole, one close, nothing more.
                assert_eq!(rc.server.handle_input(rc.now, &wire[used..]), wire.len() - used);
                while let Some(e) = rc.server.poll_event() {
                    events.push(e);
                }
                let closes: Vec<_> = events[1..]
                    .iter()
                    .map(|e| match e {
                        Event::Closed(c) => c.code,
                        other => panic!("{what}: only a close after the violation: {other:?}"),
                    })
                    .collect();
                assert_eq!(closes, [code], "{what}, close sent first: {close_sent}");
                rc.collect();
                let sent: Vec<OpCode> = rc.frames.iter().map(|f| f.opcode).collect();
                let expect_sent: &[OpCode] = if close_sent { &[] } else { &[OpCode::Close] };
                assert_eq!(sent, expect_sent, "{what}, close sent first: {close_sent}");
                if !close_sent {
                    assert_eq!(rc.sent_close(), Some(code.0), "{what}");
                }
                assert!(!rc.server.is_open() && rc.server.error().is_some(), "{what}");
            }
        }
    }
}
