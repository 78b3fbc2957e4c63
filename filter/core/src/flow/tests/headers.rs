//! The host's serialised header map: what the flow reads of it, malformed maps included.
#![cfg(test)]

use crate::flow::Headers;

#[test]
fn a_map_reads_back_in_order_with_the_first_value_of_a_repeated_name() {
    let h = Headers::from_pairs(&[(":status", "200"), ("x-a", "1"), ("x-a", "2"), ("", "")]);
    assert_eq!(h.get(":status"), Some("200"));
    assert_eq!(h.get("x-a"), Some("1"));
    assert!(h.has(""));
    assert_eq!(h.get("x-b"), None);
    let names: Vec<&str> = h.iter().map(|(k, _)| k).collect();
    assert_eq!(names, [":status", "x-a", "x-a", ""]);
}

#[test]
fn a_value_that_is_not_utf8_reads_as_absent_but_the_header_is_there() {
    let mut buf = Headers::encode(&[("x-bin", "ab")]);
    // The value's bytes sit after the count, the two lengths and "x-bin\0".
    let at = 4 + 8 + 6;
    buf[at] = 0xff;
    let h = Headers::decode(buf);
    assert_eq!(h.get("x-bin"), None);
    assert!(h.has("x-bin"));
    assert_eq!(
        h.iter().next().map(|(_, v)| v.to_vec()),
        Some(vec![0xff, b'b'])
    );
}

#[test]
fn a_malformed_map_reads_as_empty() {
    let good = Headers::encode(&[("x-a", "1"), ("x-b", "22")]);
    let mut lying = good.clone();
    lying[0] = 200;
    let mut long = good.clone();
    long[8] = 255;
    for bad in [
        Vec::new(),
        vec![1, 0, 0],
        good[..good.len() - 2].to_vec(),
        lying,
        long,
        vec![0xff; 4],
    ] {
        let h = Headers::decode(bad.clone());
        assert_eq!(h.iter().count(), 0, "{bad:?}");
        assert_eq!(h.get("x-a"), None);
    }
    assert_eq!(Headers::decode(good).get("x-b"), Some("22"));
}

#[test]
fn an_empty_map_encodes_as_a_zero_count() {
    assert_eq!(Headers::encode(&[]), [0, 0, 0, 0]);
    assert_eq!(Headers::decode(vec![0, 0, 0, 0]).iter().count(), 0);
}
