//! The charge book: usage summed per descriptor, each descriptor once per call, bounded in
//! descriptors and calls, and every lost descriptor counted.
#![cfg(test)]

use super::*;

fn team(model: Option<&str>) -> Vec<Descriptor> {
    descriptors_for(
        "team-a",
        model,
        &[Unit::Tokens, Unit::Requests, Unit::CostMicros],
    )
}

/// (unit, model entry if any, hits) of each descriptor of a charge call.
fn sent(body: &[u8]) -> Vec<(String, Option<String>, Option<u64>)> {
    let (domain, descs) = decode_request(body);
    assert_eq!(domain, "tollgate");
    descs
        .into_iter()
        .map(|(es, hits)| {
            let unit = es.last().unwrap().1.clone();
            let model = es
                .iter()
                .find(|(k, _)| k == "model")
                .map(|(_, v)| v.clone());
            (unit, model, hits)
        })
        .collect()
}

#[test]
fn usage_of_many_requests_is_summed_into_one_descriptor_each() {
    let mut book = ChargeBook::new(16, 4);
    for (tokens, cost) in [(100, 7), (250, 0), (1, 1)] {
        assert_eq!(book.add(&team(Some("m")), &amounts(tokens, cost)), 0);
    }
    // Requests are counted at admission, never here: tokens and cost, with and without model.
    assert_eq!(book.len(), 4);
    let call = book.take("tollgate").unwrap();
    assert_eq!(call.descriptors, 4);
    let s = |x: &str| x.to_string();
    assert_eq!(
        sent(&call.body),
        vec![
            (s("tokens"), None, Some(351)),
            (s("cost_micros"), None, Some(8)),
            (s("tokens"), Some(s("m")), Some(351)),
            (s("cost_micros"), Some(s("m")), Some(8)),
        ]
    );
    assert!(book.is_empty());
    assert_eq!(book.take("tollgate"), None, "nothing is sent twice");
}

#[test]
fn descriptors_differing_in_one_entry_are_charged_apart() {
    let mut book = ChargeBook::new(16, 4);
    book.add(&team(Some("m1")), &amounts(10, 0));
    book.add(&team(Some("m2")), &amounts(20, 0));
    book.add(
        &account_descriptors("acct", &[Unit::Tokens]),
        &amounts(5, 0),
    );
    book.add(
        &account_descriptors("acct", &[Unit::Tokens]),
        &amounts(6, 0),
    );
    let call = book.take("tollgate").unwrap();
    let got = sent(&call.body);
    // team-a's own tokens (10 + 20), m1, m2, the account (5 + 6).
    let hits: Vec<_> = got.iter().map(|(_, m, h)| (m.clone(), *h)).collect();
    assert_eq!(
        hits,
        vec![
            (None, Some(30)),
            (Some("m1".into()), Some(10)),
            (Some("m2".into()), Some(20)),
            (None, Some(11)),
        ]
    );
}

#[test]
fn a_sum_saturates_and_is_sent_clamped_never_wrapped() {
    let mut book = ChargeBook::new(4, 1);
    let d = descriptors_for("team-a", None, &[Unit::Tokens]);
    book.add(&d, &amounts(u64::MAX - 1, 0));
    book.add(&d, &amounts(u64::MAX - 1, 0));
    book.add(&d, &amounts(3, 0));
    let call = book.take("tollgate").unwrap();
    assert_eq!(sent(&call.body)[0].2, Some(u64::from(u32::MAX)));
    // A sum that reaches the clamp exactly goes as it is.
    let mut book = ChargeBook::new(4, 1);
    book.add(&d, &amounts(u64::from(u32::MAX) - 1, 0));
    book.add(&d, &amounts(1, 0));
    assert_eq!(
        sent(&book.take("tollgate").unwrap().body)[0].2,
        Some(u64::from(u32::MAX))
    );
}

#[test]
fn a_full_book_still_sums_known_descriptors_and_counts_new_ones_dropped() {
    let mut book = ChargeBook::new(2, 1);
    let d = descriptors_for("team-a", Some("m"), &[Unit::Tokens]);
    assert_eq!(book.add(&d, &amounts(10, 0)), 0);
    // A client minting model names cannot push out what is already pending.
    let other = descriptors_for("team-a", Some("minted"), &[Unit::Tokens]);
    assert_eq!(
        book.add(&other, &amounts(99, 0)),
        1,
        "the minted model's descriptor"
    );
    assert_eq!(book.add(&d, &amounts(5, 0)), 0);
    assert_eq!(book.dropped(), 1);
    let call = book.take("tollgate").unwrap();
    let hits: Vec<_> = sent(&call.body).into_iter().map(|x| x.2).collect();
    // team-a's own descriptor took the minted request's usage too (10 + 99 + 5).
    assert_eq!(hits, vec![Some(114), Some(15)]);
}

#[test]
fn calls_in_flight_are_bounded_and_pending_usage_waits_and_grows() {
    let mut book = ChargeBook::new(16, 1);
    let d = descriptors_for("team-a", None, &[Unit::Tokens]);
    book.add(&d, &amounts(10, 0));
    let call = book.take("tollgate").unwrap();
    book.dispatched(7, call.descriptors);
    book.add(&d, &amounts(4, 0));
    book.add(&d, &amounts(6, 0));
    assert_eq!(book.take("tollgate"), None, "one call in flight at most");
    assert_eq!(book.len(), 1, "still pending, still one descriptor");
    assert_eq!(book.finished(7, true), 1);
    assert_eq!(book.in_flight(), 0);
    let call = book.take("tollgate").unwrap();
    assert_eq!(sent(&call.body)[0].2, Some(10));
    assert_eq!(book.dropped(), 0);
}

#[test]
fn a_failed_call_loses_every_descriptor_it_carried_and_counts_them() {
    let mut book = ChargeBook::new(16, 4);
    book.add(&team(Some("m")), &amounts(10, 3));
    let call = book.take("tollgate").unwrap();
    book.dispatched(1, call.descriptors);
    assert_eq!(book.finished(1, false), 4);
    assert_eq!(book.dropped(), 4);
    book.add(&team(None), &amounts(10, 3));
    let call = book.take("tollgate").unwrap();
    book.dispatch_failed(call.descriptors);
    assert_eq!(book.dropped(), 6);
    // A reply to a call this book never sent changes nothing.
    assert_eq!(book.finished(99, false), 0);
    assert_eq!(book.dropped(), 6);
    assert_eq!(book.in_flight(), 0);
}

#[test]
fn more_descriptors_than_one_call_carries_go_in_several_calls_oldest_first() {
    let mut book = ChargeBook::new(1000, 16);
    for i in 0..(CHARGE_BATCH + 5) {
        let d = descriptors_for(&format!("c{i}"), None, &[Unit::Tokens]);
        book.add(&d, &amounts(i as u64 + 1, 0));
    }
    let first = book.take("tollgate").unwrap();
    assert_eq!(first.descriptors, CHARGE_BATCH);
    assert_eq!(sent(&first.body)[0].2, Some(1));
    // The rest still merge into their own entries after the first call left.
    let d = descriptors_for(&format!("c{}", CHARGE_BATCH + 4), None, &[Unit::Tokens]);
    book.add(&d, &amounts(1000, 0));
    assert_eq!(book.len(), 5);
    let second = book.take("tollgate").unwrap();
    assert_eq!(second.descriptors, 5);
    let last = sent(&second.body).pop().unwrap();
    assert_eq!(last.2, Some(CHARGE_BATCH as u64 + 5 + 1000));
    assert!(book.is_empty());
}

#[test]
fn zero_usage_and_requests_only_charge_nothing() {
    let mut book = ChargeBook::new(16, 4);
    book.add(&team(Some("m")), &amounts(0, 0));
    book.add(
        &descriptors_for("team-a", None, &[Unit::Requests]),
        &amounts(9, 9),
    );
    assert!(book.is_empty());
    assert_eq!(book.take("tollgate"), None);
}
