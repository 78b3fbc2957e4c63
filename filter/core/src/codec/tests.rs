#![cfg(test)]
use super::*;

/// (value, its varint bytes): the protobuf encoding, computed by hand.
const VARINTS: [(u64, &[u8]); 9] = [
    (0, &[0x00]),
    (1, &[0x01]),
    (127, &[0x7f]),
    (128, &[0x80, 0x01]),
    (300, &[0xac, 0x02]),
    (16_384, &[0x80, 0x80, 0x01]),
    (0xdead_beef, &[0xef, 0xfd, 0xb6, 0xf5, 0x0d]),
    (
        1 << 63,
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
    ),
    (
        u64::MAX,
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    ),
];

#[test]
fn varints_encode_to_the_protobuf_bytes_and_read_back() {
    for (value, golden) in VARINTS {
        let mut out = Vec::new();
        put_varint(&mut out, value);
        assert_eq!(out, golden, "{value}");
        let mut r = Reader::new(golden);
        assert_eq!(r.varint(), Ok(value), "{value}");
        assert!(r.is_empty(), "{value}");
    }
}

#[test]
fn every_cut_of_a_varint_is_truncated() {
    for (value, golden) in VARINTS {
        for cut in 0..golden.len() {
            let mut r = Reader::new(&golden[..cut]);
            assert_eq!(
                r.varint(),
                Err(CodecError::Truncated),
                "{value} cut at {cut}"
            );
        }
    }
}

#[test]
fn a_varint_beyond_64_bits_is_too_long() {
    for bytes in [
        // An 11th byte.
        &[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x01,
        ][..],
        // A 10th byte with bits above bit 63.
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f],
        &[0xff; 11],
    ] {
        assert_eq!(
            Reader::new(bytes).varint(),
            Err(CodecError::VarintTooLong),
            "{bytes:?}"
        );
    }
}

#[test]
fn optional_numbers_store_none_as_zero_and_saturate_at_the_top() {
    // (written, its bytes, read back)
    for (written, golden, read) in [
        (None, &[0x00][..], None),
        (Some(0), &[0x01], Some(0)),
        (Some(127), &[0x80, 0x01], Some(127)),
        (
            Some(u64::MAX),
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            Some(u64::MAX - 1),
        ),
    ] {
        let mut out = Vec::new();
        put_opt(&mut out, written);
        assert_eq!(out, golden, "{written:?}");
        assert_eq!(Reader::new(golden).opt(), Ok(read), "{written:?}");
    }
}

#[test]
fn length_prefixed_bytes_round_trip_and_a_short_body_is_truncated() {
    for body in [&b""[..], b"x", &[7u8; 200]] {
        let mut out = Vec::new();
        put_bytes(&mut out, body);
        let mut golden = Vec::new();
        put_varint(&mut golden, body.len() as u64);
        golden.extend_from_slice(body);
        assert_eq!(out, golden);
        let mut r = Reader::new(&out);
        assert_eq!(r.bytes(), Ok(body));
        assert!(r.is_empty());
        if !body.is_empty() {
            let short = &out[..out.len() - 1];
            assert_eq!(Reader::new(short).bytes(), Err(CodecError::Truncated));
        }
    }
    // A length no slice can have.
    let mut huge = Vec::new();
    put_varint(&mut huge, u64::MAX);
    assert_eq!(Reader::new(&huge).bytes(), Err(CodecError::Truncated));
}

#[test]
fn fixed_width_reads_take_exactly_their_bytes() {
    let bytes = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    let mut r = Reader::new(&bytes);
    assert_eq!(
        r.array::<8>().map(u64::from_le_bytes),
        Ok(0x0807_0605_0403_0201)
    );
    assert_eq!(r.byte(), Ok(9));
    assert!(r.is_empty());
    assert_eq!(r.byte(), Err(CodecError::Truncated));
    assert_eq!(
        Reader::new(&bytes[..3]).array::<4>(),
        Err(CodecError::Truncated)
    );
    assert_eq!(
        Reader::new(&bytes).take(usize::MAX),
        Err(CodecError::Truncated)
    );
}
