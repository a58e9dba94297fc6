//! Unit tests for the frame codec.

use super::*;

async fn round_trip(mask: bool, frames: &[(OpCode, Vec<u8>)]) -> Vec<Frame> {
    let mut wire = Vec::new();
    {
        let mut writer = FrameWriter::new(&mut wire, mask);
        for (op, payload) in frames {
            writer
                .write_frame(*op, payload)
                .await
                .expect("write to a Vec");
        }
    }
    let mut reader = FrameReader::new(wire.as_slice(), Vec::new());
    let mut out = Vec::new();
    while let Some(frame) = reader.read_frame().await.expect("valid frames") {
        out.push(frame);
    }
    out
}

#[tokio::test]
async fn lengths_at_every_encoding_boundary_round_trip() {
    for mask in [false, true] {
        let frames: Vec<(OpCode, Vec<u8>)> = [0usize, 1, 125, 126, 65_535, 65_536, 1 << 20]
            .iter()
            .map(|n| (OpCode::Binary, (0..*n).map(|i| (i % 251) as u8).collect()))
            .collect();
        let got = round_trip(mask, &frames).await;
        assert_eq!(got.len(), frames.len());
        for (frame, (op, payload)) in got.iter().zip(&frames) {
            assert_eq!(
                (&frame.opcode, &frame.payload, frame.fin),
                (op, payload, true)
            );
        }
    }
}

#[tokio::test]
async fn bytes_read_past_the_handshake_are_decoded_first() {
    let mut wire = Vec::new();
    FrameWriter::new(&mut wire, false)
        .write_frame(OpCode::Text, b"hello")
        .await
        .expect("write");
    let (head, tail) = wire.split_at(3);
    let mut reader = FrameReader::new(tail, head.to_vec());
    let frame = reader
        .read_frame()
        .await
        .expect("valid")
        .expect("one frame");
    assert_eq!(frame.payload, b"hello");
    assert_eq!(reader.read_frame().await.expect("clean end"), None);
}

#[tokio::test]
async fn close_frames_carry_code_and_reason() {
    let mut wire = Vec::new();
    let long_reason = "é".repeat(100);
    {
        let mut w = FrameWriter::new(&mut wire, true);
        w.write_close(1000, "bye").await.expect("write");
        w.write_close(1011, &long_reason).await.expect("write");
    }
    let mut reader = FrameReader::new(wire.as_slice(), Vec::new());
    let first = reader.read_frame().await.expect("valid").expect("frame");
    assert_eq!(first.close_code(), (1000, "bye".to_owned()));
    let second = reader.read_frame().await.expect("valid").expect("frame");
    assert_eq!(second.close_code().0, 1011);
    assert!(second.payload.len() <= MAX_CONTROL_LEN);
}

#[tokio::test]
async fn bad_frames_are_refused() {
    let too_long = {
        let mut v = vec![0x82, 127];
        v.extend_from_slice(&((MAX_FRAME_LEN as u64) + 1).to_be_bytes());
        v
    };
    let cases: &[(&[u8], &str)] = &[
        (&[0xC2, 0x00], "reserved bit (compression) set"),
        (&[0x83, 0x00], "unknown opcode"),
        (&[0x09, 0x00], "fragmented ping"),
        (&[0x89, 126, 0, 126], "ping over 125 bytes"),
        (&too_long, "frame over the limit"),
        (&[0x82, 0x05, 1, 2], "transport ends mid-frame"),
    ];
    for (wire, why) in cases {
        let mut reader = FrameReader::new(*wire, Vec::new());
        assert!(reader.read_frame().await.is_err(), "{why}");
    }
}
