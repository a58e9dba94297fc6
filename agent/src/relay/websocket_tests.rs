//! Unit tests for the frame codec: every frame form, every refusal, truncation at every
//! byte, bounded buffering, and the async reader/writer.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame on the wire: FIN/opcode byte `b0`, then the length in the shortest form (or
/// the form `long` forces), the key when masked, the (masked) payload.
fn wire(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if let Some(key) = mask {
        out.extend_from_slice(&key);
        naive_mask(&mut body, key, 0);
    }
    out.extend_from_slice(&body);
    out
}

/// The textbook per-byte masking, to check the word-at-a-time one against.
fn naive_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    for (b, k) in data.iter_mut().zip(key.iter().cycle().skip(offset % 4)) {
        *b ^= k;
    }
}

/// A header declaring `len` with the 64-bit form, and no payload.
fn long_header(b0: u8, len: u64) -> Vec<u8> {
    let mut out = vec![b0, 127];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// Decodes all of `bytes` as one transport that then ends.
fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut codec = Codec::new(false);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(frame) = codec.decode(&mut buf)? {
        out.push(frame);
    }
    while let Some(frame) = codec.decode_eof(&mut buf)? {
        out.push(frame);
    }
    Ok(out)
}

/// Encodes `frames` with a codec that masks (client) or not (server).
fn encode_all(mask: bool, frames: &[OutFrame<'_>]) -> BytesMut {
    let mut codec = Codec::new(mask);
    let mut buf = BytesMut::new();
    for frame in frames {
        codec.encode(*frame, &mut buf).expect("encodable frame");
    }
    buf
}

fn summary(frames: &[Frame]) -> Vec<(OpCode, bool, Vec<u8>)> {
    frames
        .iter()
        .map(|f| (f.opcode, f.fin, f.payload.to_vec()))
        .collect()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn every_length_form_round_trips_masked_and_unmasked() {
    let lengths = [
        0usize,
        1,
        125,
        126,
        127,
        65_535,
        65_536,
        PIECE_LEN + 1,
        300_000,
    ];
    for mask in [false, true] {
        for len in lengths {
            let payload = pattern(len);
            let bytes = encode_all(
                mask,
                &[OutFrame {
                    opcode: OpCode::Binary,
                    fin: true,
                    payload: &payload,
                }],
            );
            let frames = decode_all(&bytes).expect("valid frame");
            let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload.to_vec()).collect();
            assert_eq!(joined, payload, "len {len} mask {mask}");
            // Long frames come in pieces: the first keeps the opcode, the last the FIN.
            assert_eq!(frames.len(), len.div_ceil(PIECE_LEN).max(1), "len {len}");
            assert_eq!(frames.first().map(|f| f.opcode), Some(OpCode::Binary));
            for (i, f) in frames.iter().enumerate() {
                let last = i + 1 == frames.len();
                assert_eq!(f.fin, last, "piece {i} of len {len}");
                if i > 0 {
                    assert_eq!(f.opcode, OpCode::Continuation);
                }
                assert!(f.payload.len() <= PIECE_LEN);
            }
        }
    }
}

#[test]
fn headers_use_the_shortest_length_form() {
    let cases: &[(usize, &[u8])] = &[
        (0, &[0x82, 0]),
        (125, &[0x82, 125]),
        (126, &[0x82, 126, 0, 126]),
        (65_535, &[0x82, 126, 0xFF, 0xFF]),
        (65_536, &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
    ];
    for (len, head) in cases {
        let payload = vec![0u8; *len];
        let bytes = encode_all(
            false,
            &[OutFrame {
                opcode: OpCode::Binary,
                fin: true,
                payload: &payload,
            }],
        );
        assert_eq!(bytes.get(..head.len()), Some(*head), "len {len}");
        assert_eq!(
            bytes.len(),
            head.len() + len,
            "header + payload in one buffer"
        );
        // A client sets the mask bit and adds a 4-byte key.
        let masked = encode_all(
            true,
            &[OutFrame {
                opcode: OpCode::Binary,
                fin: true,
                payload: &payload,
            }],
        );
        assert_eq!(masked.get(1).map(|b| b & 0x80), Some(0x80));
        assert_eq!(masked.len(), head.len() + 4 + len);
    }
}

#[test]
fn valid_wire_forms_decode() {
    type Want = Vec<(OpCode, bool, Vec<u8>)>;
    let cat = |parts: &[Vec<u8>]| parts.concat();
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "unmasked binary",
            wire(0x82, b"hi", None),
            vec![(OpCode::Binary, true, b"hi".to_vec())],
        ),
        (
            "masked text",
            wire(0x81, b"hello", Some(KEY)),
            vec![(OpCode::Text, true, b"hello".to_vec())],
        ),
        (
            "empty binary",
            wire(0x82, b"", Some(KEY)),
            vec![(OpCode::Binary, true, vec![])],
        ),
        (
            "16-bit length",
            wire(0x82, &pattern(300), Some(KEY)),
            vec![(OpCode::Binary, true, pattern(300))],
        ),
        (
            "16-bit length form for a short payload (not minimal, still valid)",
            vec![0x82, 126, 0, 2, b'o', b'k'],
            vec![(OpCode::Binary, true, b"ok".to_vec())],
        ),
        (
            "64-bit length form for a short payload",
            cat(&[long_header(0x82, 2), b"ok".to_vec()]),
            vec![(OpCode::Binary, true, b"ok".to_vec())],
        ),
        (
            "fragmented message with control frames in between",
            cat(&[
                wire(0x01, b"hel", Some(KEY)),
                wire(0x89, b"p", Some(KEY)),
                wire(0x00, b"l", Some(KEY)),
                wire(0x8A, b"", None),
                wire(0x80, b"o", Some(KEY)),
            ]),
            vec![
                (OpCode::Text, false, b"hel".to_vec()),
                (OpCode::Ping, true, b"p".to_vec()),
                (OpCode::Continuation, false, b"l".to_vec()),
                (OpCode::Pong, true, vec![]),
                (OpCode::Continuation, true, b"o".to_vec()),
            ],
        ),
        (
            "ping without and with payload, pong",
            cat(&[
                wire(0x89, b"", Some(KEY)),
                wire(0x89, &[7u8; 125], Some(KEY)),
                wire(0x8A, b"x", None),
            ]),
            vec![
                (OpCode::Ping, true, vec![]),
                (OpCode::Ping, true, vec![7u8; 125]),
                (OpCode::Pong, true, b"x".to_vec()),
            ],
        ),
        (
            "close without and with reason",
            cat(&[
                wire(0x88, b"", Some(KEY)),
                wire(0x88, &close_payload(1000, ""), None),
                wire(0x88, &close_payload(1001, "bye"), Some(KEY)),
            ]),
            vec![
                (OpCode::Close, true, vec![]),
                (OpCode::Close, true, vec![0x03, 0xE8]),
                (OpCode::Close, true, close_payload(1001, "bye")),
            ],
        ),
        ("nothing at all", vec![], vec![]),
    ];
    for (name, bytes, want) in cases {
        let got = decode_all(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(summary(&got), want, "{name}");
    }
}

#[test]
fn close_frames_report_code_and_reason() {
    let cases: &[(&[u8], (u16, &str))] = &[
        (b"", (1005, "")),
        (&[0x03, 0xE8], (1000, "")),
        (&[0x03, 0xF3, b'b', b'y', b'e'], (1011, "bye")),
        (&[0x03, 0xE8, 0xFF, 0xFE], (1000, "\u{FFFD}\u{FFFD}")),
    ];
    for (payload, (code, reason)) in cases {
        let frame = Frame {
            opcode: OpCode::Close,
            fin: true,
            payload: Bytes::copy_from_slice(payload),
        };
        assert_eq!(frame.close_code(), (*code, (*reason).to_owned()));
    }
}

#[derive(Debug, PartialEq)]
enum Refusal {
    Protocol,
    TooBig,
    Eof,
}

fn refusal(err: &FrameError) -> Refusal {
    match err {
        FrameError::Protocol(_) => Refusal::Protocol,
        FrameError::TooBig { .. } => Refusal::TooBig,
        FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => Refusal::Eof,
        FrameError::Io(e) => panic!("unexpected I/O error {e}"),
    }
}

#[test]
fn bad_frames_are_refused_with_the_right_close_code() {
    let mut cases: Vec<(String, Vec<u8>, Refusal)> = vec![
        (
            "rsv1 set".into(),
            wire(0xC2, b"x", Some(KEY)),
            Refusal::Protocol,
        ),
        (
            "rsv2 set".into(),
            wire(0xA2, b"x", Some(KEY)),
            Refusal::Protocol,
        ),
        (
            "rsv3 set".into(),
            wire(0x92, b"x", Some(KEY)),
            Refusal::Protocol,
        ),
        (
            "fragmented ping".into(),
            wire(0x09, b"x", Some(KEY)),
            Refusal::Protocol,
        ),
        (
            "fragmented close".into(),
            wire(0x08, b"", Some(KEY)),
            Refusal::Protocol,
        ),
        (
            "ping over 125 bytes".into(),
            wire(0x89, &[0; 126], Some(KEY)),
            Refusal::Protocol,
        ),
        (
            "pong over 125 bytes".into(),
            wire(0x8A, &[0; 200], None),
            Refusal::Protocol,
        ),
        (
            "close of one byte".into(),
            wire(0x88, &[3], Some(KEY)),
            Refusal::Protocol,
        ),
        (
            "continuation without a message".into(),
            wire(0x80, b"x", Some(KEY)),
            Refusal::Protocol,
        ),
        (
            "new message inside a fragmented one".into(),
            [wire(0x01, b"a", Some(KEY)), wire(0x82, b"b", Some(KEY))].concat(),
            Refusal::Protocol,
        ),
        (
            "length with the top bit set (2^63)".into(),
            long_header(0x82, 1 << 63),
            Refusal::Protocol,
        ),
        (
            "length u64::MAX".into(),
            long_header(0x82, u64::MAX),
            Refusal::Protocol,
        ),
        (
            "one byte over the frame limit".into(),
            long_header(0x82, MAX_FRAME_LEN as u64 + 1),
            Refusal::TooBig,
        ),
        (
            "2^62 bytes".into(),
            long_header(0x82, 1 << 62),
            Refusal::TooBig,
        ),
        ("ends mid-header".into(), vec![0x82], Refusal::Eof),
        ("ends mid-payload".into(), vec![0x82, 5, 1, 2], Refusal::Eof),
        ("ends mid-key".into(), vec![0x82, 0x85, 1, 2], Refusal::Eof),
    ];
    for bits in (0x3..=0x7).chain(0xB..=0xF) {
        cases.push((
            format!("opcode {bits:#x}"),
            wire(0x80 | bits, b"x", Some(KEY)),
            Refusal::Protocol,
        ));
    }
    for (name, bytes, want) in cases {
        let err = decode_all(&bytes).expect_err(&name);
        assert_eq!(refusal(&err), want, "{name}: {err}");
        let code = err.close_code();
        let want_code = match want {
            Refusal::Protocol => Some(close_code::PROTOCOL_ERROR),
            Refusal::TooBig => Some(close_code::TOO_BIG),
            Refusal::Eof => None,
        };
        assert_eq!(code, want_code, "{name}");
    }
}

#[test]
fn a_declared_length_is_never_allocated_up_front() {
    for declared in [MAX_FRAME_LEN as u64, 16 * 1024 * 1024 - 1, 1 << 20] {
        let mut codec = Codec::new(false);
        let mut buf = BytesMut::from(long_header(0x82, declared).as_slice());
        assert_eq!(codec.decode(&mut buf).expect("a valid header"), None);
        assert!(
            buf.capacity() <= 2 * PIECE_LEN,
            "declared {declared}: buffer grew to {}",
            buf.capacity()
        );
        // Bytes arriving a little at a time come out in bounded pieces.
        let mut handed_on = 0usize;
        for _ in 0..40 {
            buf.extend_from_slice(&[0u8; 4096]);
            while let Some(piece) = codec.decode(&mut buf).expect("valid payload") {
                handed_on += piece.payload.len();
            }
            assert!(buf.capacity() <= 2 * PIECE_LEN + 4096);
        }
        assert_eq!(handed_on, 2 * PIECE_LEN, "declared {declared}");
    }
}

#[test]
fn truncation_at_every_byte_is_an_error_never_a_panic() {
    let frames = [
        wire(0x82, b"hello", Some(KEY)),
        wire(0x82, &pattern(300), Some(KEY)),
        wire(0x82, &pattern(70_000), None),
        wire(0x89, b"ping", Some(KEY)),
        wire(0x88, &close_payload(1000, "bye"), Some(KEY)),
        [wire(0x01, b"ab", Some(KEY)), wire(0x80, b"cd", Some(KEY))].concat(),
    ];
    for bytes in &frames {
        let complete = decode_all(bytes).expect("complete frames decode");
        for cut in 0..bytes.len() {
            let prefix = bytes.get(..cut).expect("cut within the frame");
            // Fed as it arrives: nothing complete is invented from a prefix...
            let mut codec = Codec::new(false);
            let mut buf = BytesMut::from(prefix);
            let mut pieces = 0;
            while let Some(frame) = codec.decode(&mut buf).expect("a prefix is not an error") {
                assert!(frame.payload.len() <= PIECE_LEN);
                pieces += 1;
            }
            assert!(pieces <= complete.len());
            // ...and a transport ending there is an unexpected EOF (or clean at 0).
            match decode_all(prefix) {
                Ok(got) => assert!(cut == 0 || got.len() < complete.len(), "cut {cut}"),
                Err(e) => assert_eq!(refusal(&e), Refusal::Eof, "cut {cut}"),
            }
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A fixed pseudo-random walk over byte strings biased towards frame-like headers.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(first) = bytes.first_mut() {
            *first &= 0x8F;
        }
        let _ = decode_all(&bytes);
    }
}

#[test]
fn word_masking_matches_byte_masking_at_every_offset_length_and_alignment() {
    let keys = [KEY, [0xff; 4], [0x01, 0x00, 0x00, 0x80]];
    let source = pattern(200);
    for key in keys {
        // Every start within a word (the slice's alignment), every length through a few
        // words and their tails, every key phase, and phases past the first turn.
        for align in 0..8 {
            for len in 0..(source.len() - align) {
                for offset in [0, 1, 2, 3, 4, 5, 6, 7, 1001, usize::MAX] {
                    let mut fast = source.clone();
                    let mut slow = source.clone();
                    let range = align..align + len;
                    apply_mask(fast.get_mut(range.clone()).expect("in range"), key, offset);
                    naive_mask(slow.get_mut(range).expect("in range"), key, offset);
                    assert_eq!(fast, slow, "align {align} len {len} offset {offset}");
                }
            }
        }
    }
}

#[test]
fn close_reasons_are_cut_on_character_boundaries() {
    let cases: &[(&str, usize)] = &[
        ("", 2),
        ("bye", 5),
        (&"a".repeat(123), 125),
        (&"a".repeat(200), 125),
        (&"é".repeat(100), 124),
        (&"🦀".repeat(40), 2 + 120),
        (&format!("{}é", "a".repeat(122)), 124),
    ];
    for (reason, want_len) in cases {
        let p = close_payload(1011, reason);
        assert_eq!(p.len(), *want_len, "{reason:?}");
        assert_eq!(p.get(..2), Some(&1011u16.to_be_bytes()[..]));
        let text = std::str::from_utf8(p.get(2..).unwrap_or_default()).expect("whole chars");
        assert!(reason.starts_with(text));
    }
}

#[test]
fn oversized_or_fragmented_control_frames_are_not_sent() {
    let cases = [(OpCode::Ping, 126, true), (OpCode::Close, 10, false)];
    for (opcode, len, fin) in cases {
        let payload = vec![0u8; len];
        let mut buf = BytesMut::new();
        let err = Codec::new(true)
            .encode(
                OutFrame {
                    opcode,
                    fin,
                    payload: &payload,
                },
                &mut buf,
            )
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

#[tokio::test]
async fn reader_and_writer_carry_frames_and_leftover_bytes() {
    let mut wire_bytes = Vec::new();
    {
        let mut w = FrameWriter::new(&mut wire_bytes, true);
        w.write_frame(OpCode::Text, b"hello").await.expect("write");
        w.write_close(1000, "bye").await.expect("write");
    }
    // The first 3 bytes came with the handshake response.
    let (head, tail) = wire_bytes.split_at(3);
    let mut reader = FrameReader::new(tail, head.to_vec());
    let first = reader.read_frame().await.expect("valid").expect("frame");
    assert_eq!(
        (first.opcode, first.payload.as_ref()),
        (OpCode::Text, &b"hello"[..])
    );
    let close = reader.read_frame().await.expect("valid").expect("frame");
    assert_eq!(close.close_code(), (1000, "bye".to_owned()));
    assert_eq!(reader.read_frame().await.expect("clean end"), None);
}

#[tokio::test]
async fn a_reader_is_cancel_safe_mid_frame() {
    let (mut peer, ours) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(ours, Vec::new());
    let bytes = wire(0x82, b"patience", Some(KEY));
    let (a, b) = bytes.split_at(5);
    tokio::io::AsyncWriteExt::write_all(&mut peer, a)
        .await
        .expect("write");
    let pending =
        tokio::time::timeout(std::time::Duration::from_millis(50), reader.read_frame()).await;
    assert!(pending.is_err(), "half a frame is not a frame");
    tokio::io::AsyncWriteExt::write_all(&mut peer, b)
        .await
        .expect("write");
    let frame = reader.read_frame().await.expect("valid").expect("frame");
    assert_eq!(frame.payload.as_ref(), b"patience");
}

#[tokio::test]
async fn bytes_read_with_the_handshake_are_decoded_without_waiting_for_more() {
    // The peer sent one frame right behind its 101 and now waits for our answer: the
    // transport has nothing more to give, but the frame must come out.
    let (_peer, ours) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(ours, wire(0x82, b"preamble", None));
    let frame = tokio::time::timeout(std::time::Duration::from_secs(5), reader.read_frame())
        .await
        .expect("decoded from the leftover bytes alone")
        .expect("valid")
        .expect("frame");
    assert_eq!(frame.payload.as_ref(), b"preamble");
}

/// A transport that records each write call, so tests can count system calls.
#[derive(Debug, Default)]
struct CountingWriter {
    bytes: Vec<u8>,
    writes: usize,
}

impl tokio::io::AsyncWrite for CountingWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.writes += 1;
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        self.writes += 1;
        let mut n = 0;
        for buf in bufs {
            self.bytes.extend_from_slice(buf);
            n += buf.len();
        }
        std::task::Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_frame_leaves_in_one_write_masked_in_place_or_copied() {
    for len in [0usize, 5, 125, 126, 70_000] {
        let payload = pattern(len);
        for mask in [false, true] {
            let mut out = CountingWriter::default();
            let mut writer = FrameWriter::new(&mut out, mask);
            writer
                .write_frame(OpCode::Binary, &payload)
                .await
                .expect("write");
            let mut lent = payload.clone();
            writer
                .send_in_place(OpCode::Binary, true, &mut lent)
                .await
                .expect("write");
            assert_eq!(out.writes, 2, "len {len} mask {mask}: one write per frame");
            let frames = decode_all(&out.bytes).expect("valid frames");
            let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload.to_vec()).collect();
            assert_eq!(joined, [payload.clone(), payload.clone()].concat());
            // A server's lent payload goes out as it is; a client's is left masked.
            assert_eq!(lent == payload, !mask || len == 0, "len {len} mask {mask}");
        }
    }
}

#[tokio::test]
async fn a_writer_refuses_control_frames_rfc_6455_forbids() {
    let mut out = CountingWriter::default();
    let mut writer = FrameWriter::new(&mut out, true);
    let err = writer
        .write_frame(OpCode::Ping, &[0; 126])
        .await
        .expect_err("too long");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(out.writes, 0);
}

/// A transport holding `bytes` that hands out as much as each read asks for, counting reads.
#[derive(Debug)]
struct CountingReader {
    bytes: io::Cursor<Vec<u8>>,
    reads: usize,
}

impl tokio::io::AsyncRead for CountingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.reads += 1;
        std::pin::Pin::new(&mut self.bytes).poll_read(cx, buf)
    }
}

#[tokio::test]
async fn a_bulk_stream_takes_one_read_per_piece() {
    let frames = 16;
    // Full pieces, then a long frame that comes in pieces, then short frames.
    let mut bytes = encode_all(
        false,
        &vec![
            OutFrame {
                opcode: OpCode::Binary,
                fin: true,
                payload: &pattern(PIECE_LEN),
            };
            frames
        ],
    )
    .to_vec();
    bytes.extend_from_slice(&wire(0x82, &pattern(4 * PIECE_LEN), None));
    let mut reader = FrameReader::new(
        CountingReader {
            bytes: io::Cursor::new(bytes),
            reads: 0,
        },
        Vec::new(),
    );
    let (mut pieces, mut got) = (0, Vec::new());
    while let Some(frame) = reader.read_frame().await.expect("valid") {
        assert_eq!(frame.payload.len(), PIECE_LEN);
        got.extend_from_slice(&frame.payload);
        pieces += 1;
    }
    assert_eq!(pieces, frames + 4);
    let want = [
        vec![pattern(PIECE_LEN); frames].concat(),
        pattern(4 * PIECE_LEN),
    ]
    .concat();
    assert!(got == want, "the stream arrives intact");
    // One read per piece, and one that finds the end.
    assert_eq!(reader.inner.reads, pieces + 1);
}

#[tokio::test]
async fn an_idle_reader_holds_no_memory() {
    let (mut peer, ours) = tokio::io::duplex(4 * PIECE_LEN);
    let mut reader = FrameReader::new(ours, Vec::new());
    assert_eq!(reader.buffered_capacity(), 0, "a new reader holds nothing");
    let frames = 8;
    let sender = tokio::spawn(async move {
        let mut w = FrameWriter::new(&mut peer, true);
        for _ in 0..frames {
            w.write_frame(OpCode::Binary, &pattern(PIECE_LEN))
                .await
                .expect("write");
        }
        peer
    });
    for _ in 0..frames {
        let frame = reader.read_frame().await.expect("valid").expect("frame");
        assert_eq!(frame.payload.len(), PIECE_LEN);
        assert_eq!(frame.payload.as_ref(), pattern(PIECE_LEN).as_slice());
    }
    let _peer = sender.await.expect("sender");
    // Nothing more is coming: the reader gives its buffer back while it waits.
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), reader.read_frame());
    assert!(waiting.await.is_err(), "no frame is there");
    assert_eq!(
        reader.buffered_capacity(),
        0,
        "an idle reader holds nothing"
    );
}

#[test]
fn a_server_reading_clients_refuses_every_unmasked_frame_and_nothing_else() {
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("masked binary", wire(0x82, b"hi", Some(KEY)), true),
        ("masked ping", wire(0x89, b"", Some(KEY)), true),
        (
            "masked close",
            wire(0x88, &1000u16.to_be_bytes(), Some(KEY)),
            true,
        ),
        ("unmasked binary", wire(0x82, b"hi", None), false),
        ("unmasked empty text", wire(0x81, b"", None), false),
        ("unmasked ping", wire(0x89, b"", None), false),
        (
            "unmasked close",
            wire(0x88, &1000u16.to_be_bytes(), None),
            false,
        ),
        (
            "masked, then unmasked continuation",
            [wire(0x02, b"a", Some(KEY)), wire(0x80, b"b", None)].concat(),
            false,
        ),
    ];
    for (name, bytes, accepted) in cases {
        let mut codec = Codec::from_clients();
        let mut buf = BytesMut::from(bytes.as_slice());
        let mut result = Ok(());
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        match (accepted, result) {
            (true, Ok(())) => {}
            (false, Err(err)) => {
                assert_eq!(err.close_code(), Some(close_code::PROTOCOL_ERROR), "{name}");
                assert!(err.to_string().contains("not masked"), "{name}: {err}");
            }
            (want, got) => panic!("{name}: accepted {want}, got {got:?}"),
        }
        // The same bytes from a server are fine for a client (which tolerates either).
        if name.starts_with("unmasked binary") {
            assert!(decode_all(&bytes).is_ok(), "{name}");
        }
    }
}

#[test]
fn close_payloads_are_checked_as_rfc_6455_says() {
    let close = |code: u16, reason: &[u8]| {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        wire(0x88, &payload, None)
    };
    // (the frame, accepted)
    let cases = [
        (wire(0x88, b"", None), true),
        (wire(0x88, b"x", None), false),
        (close(1000, b"bye"), true),
        (close(1001, "é".as_bytes()), true),
        (close(1003, b""), true),
        (close(1004, b""), false),
        (close(1005, b""), false),
        (close(1006, b""), false),
        (close(1007, b""), true),
        (close(1011, b""), true),
        (close(1014, b""), true),
        (close(1015, b""), false),
        (close(2999, b""), false),
        (close(3000, b""), true),
        (close(4999, b""), true),
        (close(5000, b""), false),
        (close(999, b""), false),
        (close(0, b""), false),
        (close(1000, b"\xff"), false),
        (close(1000, b"\xe2\x82"), false),
    ];
    for (frame, accepted) in cases {
        let result = decode_all(&frame);
        assert_eq!(result.is_ok(), accepted, "{frame:?}: {result:?}");
        if let Err(err) = result {
            assert_eq!(err.close_code(), Some(close_code::PROTOCOL_ERROR), "{err}");
        }
    }
}
