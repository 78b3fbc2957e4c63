#![cfg(test)]
use super::*;

fn amounts(tokens: u64, cost_micros: u64) -> Amounts {
    Amounts {
        tokens,
        requests: 1,
        cost_micros,
        ..Amounts::ZERO
    }
}

fn entries(d: &Descriptor) -> Vec<(&str, &str)> {
    d.entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A test-side decoder of what `encode_request` wrote: (domain, [(entries, hits)]).
#[allow(clippy::type_complexity)]
fn decode_request(buf: &[u8]) -> (String, Vec<(Vec<(String, String)>, Option<u64>)>) {
    let mut domain = String::new();
    let mut descs = Vec::new();
    let mut r = wire::Reader::new(buf);
    while let Some((f, v)) = r.next().unwrap() {
        match (f, v) {
            (1, wire::Value::Bytes(b)) => domain = String::from_utf8(b.to_vec()).unwrap(),
            (2, wire::Value::Bytes(b)) => {
                let mut es = Vec::new();
                let mut hits = None;
                let mut dr = wire::Reader::new(b);
                while let Some((f, v)) = dr.next().unwrap() {
                    match (f, v) {
                        (1, wire::Value::Bytes(e)) => {
                            let (mut k, mut val) = (String::new(), String::new());
                            let mut er = wire::Reader::new(e);
                            while let Some((f, v)) = er.next().unwrap() {
                                match (f, v) {
                                    (1, wire::Value::Bytes(x)) => {
                                        k = String::from_utf8(x.to_vec()).unwrap()
                                    }
                                    (2, wire::Value::Bytes(x)) => {
                                        val = String::from_utf8(x.to_vec()).unwrap()
                                    }
                                    other => panic!("entry field {other:?}"),
                                }
                            }
                            es.push((k, val));
                        }
                        (3, wire::Value::Bytes(h)) => {
                            let mut hv = 0;
                            let mut hr = wire::Reader::new(h);
                            while let Some((f, v)) = hr.next().unwrap() {
                                match (f, v) {
                                    (1, wire::Value::Varint(x)) => hv = x,
                                    other => panic!("hits field {other:?}"),
                                }
                            }
                            hits = Some(hv);
                        }
                        other => panic!("descriptor field {other:?}"),
                    }
                }
                descs.push((es, hits));
            }
            other => panic!("request field {other:?}"),
        }
    }
    (domain, descs)
}

/// The charge call of one request's usage alone (a book that holds only it).
fn charge(domain: &str, descriptors: Vec<Descriptor>, actual: &Amounts) -> Option<Vec<u8>> {
    let mut book = ChargeBook::new(usize::MAX, 1);
    book.add(&descriptors, actual);
    book.take(domain).map(|c| c.body)
}

/// `charge` for a consumer's descriptors (`descriptors_for`).
fn charge_request(
    domain: &str,
    consumer: &str,
    model: Option<&str>,
    units: &[Unit],
    actual: &Amounts,
) -> Option<Vec<u8>> {
    charge(domain, descriptors_for(consumer, model, units), actual)
}

/// A test-side encoder of responses.
#[derive(Clone, Debug)]
struct St {
    code: u64,
    limit: Option<(u64, u64)>,
    remaining: u64,
    reset: Option<(i64, i32)>,
}

fn st(code: u64, limit: Option<(u64, u64)>, remaining: u64, reset: i64) -> St {
    St {
        code,
        limit,
        remaining,
        reset: limit.map(|_| (reset, 0)),
    }
}

fn encode_response(overall: u64, statuses: &[St]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_varint_field(&mut out, 1, overall);
    for s in statuses {
        let mut b = Vec::new();
        wire::put_varint_field(&mut b, 1, s.code);
        if let Some((rpu, unit)) = s.limit {
            let mut l = Vec::new();
            wire::put_varint_field(&mut l, 1, rpu);
            wire::put_varint_field(&mut l, 2, unit);
            wire::put_bytes(&mut l, 3, b"name");
            wire::put_bytes(&mut b, 2, &l);
        }
        wire::put_varint_field(&mut b, 3, s.remaining);
        if let Some((secs, nanos)) = s.reset {
            let mut d = Vec::new();
            wire::put_varint_field(&mut d, 1, secs as u64);
            wire::put_varint_field(&mut d, 2, nanos as i64 as u64);
            wire::put_bytes(&mut b, 4, &d);
        }
        wire::put_bytes(&mut out, 2, &b);
    }
    out
}

const MINUTE: u64 = 2;
const OK: u64 = 1;
const OVER: u64 = 2;

#[test]
fn consumer_descriptors_follow_the_spec_order() {
    let d = descriptors_for("team-a", Some("claude-*"), &[Unit::Tokens, Unit::Requests]);
    let got: Vec<_> = d.iter().map(entries).collect();
    assert_eq!(
        got,
        vec![
            vec![("consumer", "team-a"), ("unit", "tokens")],
            vec![("consumer", "team-a"), ("unit", "requests")],
            vec![
                ("consumer", "team-a"),
                ("model", "claude-*"),
                ("unit", "tokens")
            ],
            vec![
                ("consumer", "team-a"),
                ("model", "claude-*"),
                ("unit", "requests")
            ],
        ]
    );
    assert_eq!(
        descriptors_for("team-a", Some(""), &[Unit::Tokens]).len(),
        1
    );
    assert_eq!(
        descriptors_for("team-a", None, &[Unit::CostMicros]).len(),
        1
    );
    let a = account_descriptors("org-1", &[Unit::CostMicros]);
    assert_eq!(
        entries(&a[0]),
        vec![("account", "org-1"), ("unit", "cost_micros")]
    );
}

#[test]
fn units_come_from_rate_limits_with_a_global_unit() {
    let limits = vec![
        Limit::Concurrent(3),
        Limit::Rate {
            kind: LimitKind::CostUsd,
            amount: 5,
            per: Per::Day,
            window: Default::default(),
        },
        Limit::Rate {
            kind: LimitKind::InputTokens,
            amount: 5,
            per: Per::Day,
            window: Default::default(),
        },
        Limit::Rate {
            kind: LimitKind::Tokens,
            amount: 5,
            per: Per::Minute,
            window: Default::default(),
        },
        Limit::Rate {
            kind: LimitKind::Tokens,
            amount: 50,
            per: Per::Day,
            window: Default::default(),
        },
    ];
    assert_eq!(units_for(&limits), vec![Unit::Tokens, Unit::CostMicros]);
    assert!(units_for(&[Limit::Concurrent(1)]).is_empty());
}

#[test]
fn admission_checks_tokens_and_counts_the_request() {
    let a = admission_request(
        "tollgate",
        "team-a",
        None,
        &[Unit::Tokens, Unit::Requests, Unit::CostMicros],
        &amounts(1500, 70),
    );
    let (domain, descs) = decode_request(&a.body);
    assert_eq!(domain, "tollgate");
    let hits: Vec<_> = descs.iter().map(|(_, h)| *h).collect();
    assert_eq!(hits, vec![Some(0), Some(1), Some(0)]);
    assert_eq!(
        a.checks,
        vec![
            Check {
                unit: Unit::Tokens,
                need: 1500
            },
            Check {
                unit: Unit::Requests,
                need: 1
            },
            Check {
                unit: Unit::CostMicros,
                need: 70
            },
        ]
    );
}

fn rate(kind: LimitKind, amount: u64) -> Limit {
    Limit::Rate {
        kind,
        amount,
        per: Per::Minute,
        window: Default::default(),
    }
}

/// SPEC: `[("account", name), ("unit", u)]` for account limits. The account serving a
/// request is checked at admission and charged after the response, with the same
/// descriptors, and a refusal on it says which descriptor bound.
#[test]
fn a_request_sends_its_accounts_descriptors_checked_then_charged() {
    let consumer = [rate(LimitKind::Tokens, 100)];
    let account = [rate(LimitKind::Tokens, 400), rate(LimitKind::CostUsd, 9)];
    type Case<'a> = (Option<(&'a str, &'a [Limit])>, Vec<Vec<(&'a str, &'a str)>>);
    let cases: [Case; 3] = [
        (
            Some(("anthropic-1", &account)),
            vec![
                vec![("consumer", "team-a"), ("unit", "tokens")],
                vec![("consumer", "team-a"), ("model", "m"), ("unit", "tokens")],
                vec![("account", "anthropic-1"), ("unit", "tokens")],
                vec![("account", "anthropic-1"), ("unit", "cost_micros")],
            ],
        ),
        // An account without limits (or with concurrency only) sends nothing of its own.
        (
            Some(("openai-1", &[Limit::Concurrent(4)])),
            vec![
                vec![("consumer", "team-a"), ("unit", "tokens")],
                vec![("consumer", "team-a"), ("model", "m"), ("unit", "tokens")],
            ],
        ),
        (
            None,
            vec![
                vec![("consumer", "team-a"), ("unit", "tokens")],
                vec![("consumer", "team-a"), ("model", "m"), ("unit", "tokens")],
            ],
        ),
    ];
    for (acct, want) in cases {
        let d = request_descriptors("team-a", &consumer, Some("m"), acct);
        assert_eq!(d.iter().map(entries).collect::<Vec<_>>(), want, "{acct:?}");
    }

    // A consumer with no global unit still sends its account's descriptors.
    let d = request_descriptors("team-a", &[], Some("m"), Some(("anthropic-1", &account)));
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].account(), Some("anthropic-1"));

    let d = request_descriptors(
        "team-a",
        &consumer,
        Some("m"),
        Some(("anthropic-1", &account)),
    );
    assert_eq!(d[0].account(), None);
    let a = admission("tollgate", &mut d.clone(), &amounts(120, 700));
    let hits: Vec<_> = decode_request(&a.body).1.iter().map(|(_, h)| *h).collect();
    assert_eq!(hits, vec![Some(0), Some(0), Some(0), Some(0)]);
    assert_eq!(
        a.checks[2],
        Check {
            unit: Unit::Tokens,
            need: 120
        }
    );
    assert_eq!(
        a.checks[3],
        Check {
            unit: Unit::CostMicros,
            need: 700
        }
    );

    // Only the account's token descriptor is short: the refusal points at it.
    let resp = encode_response(
        OK,
        &[
            st(OK, None, 0, 0),
            st(OK, None, 0, 0),
            st(OK, Some((400, MINUTE)), 100, 20),
            st(OK, Some((9_000_000, 4)), 9_000_000, 600),
        ],
    );
    match decide(&resp, &a.checks) {
        Decision::Reject(r) => {
            assert_eq!(
                (r.index, r.unit, r.limit),
                (Some(2), Some(Unit::Tokens), Some(400))
            );
            assert_eq!(
                r.index.and_then(|i| d.get(i)).and_then(|x| x.account()),
                Some("anthropic-1")
            );
            assert_eq!(r.retry_after_s, 20);
        }
        other => panic!("{other:?}"),
    }

    // The charge after the response counts real usage on the account too.
    let body = charge("tollgate", d, &amounts(200, 2839)).unwrap();
    let charged: Vec<_> = decode_request(&body)
        .1
        .into_iter()
        .map(|(es, h)| (es[0].0.clone(), es.last().unwrap().1.clone(), h))
        .collect();
    let s = |x: &str| x.to_string();
    assert_eq!(
        charged,
        vec![
            (s("consumer"), s("tokens"), Some(200)),
            (s("consumer"), s("tokens"), Some(200)),
            (s("account"), s("tokens"), Some(200)),
            (s("account"), s("cost_micros"), Some(2839)),
        ]
    );
}

/// SPEC "HTTP behaviour": the headers carry the binding limit, global limits included. A
/// global limit of 3 requests with 2 left binds over a local 1000 with 999 left.
#[test]
fn the_binding_headers_take_in_the_global_limits() {
    let local = |kind, limit, remaining| LimitStatus {
        index: 0,
        kind: Some(kind),
        limit,
        remaining,
        reset_s: 60,
    };
    let room = |unit, limit, remaining, need| Headroom {
        unit,
        limit,
        remaining,
        need,
        reset_s: 3000,
        window_s: 3600,
    };
    let both = RateHeaders {
        tokens: Some(local(LimitKind::Tokens, 10_000, 9_000)),
        requests: Some(local(LimitKind::Requests, 1000, 999)),
    };
    // (local, global headroom, want (limit, remaining, reset) for tokens and requests)
    type Want = Option<(u64, u64, u64)>;
    let cases: Vec<(RateHeaders, Vec<Headroom>, Want, Want)> = vec![
        (
            both,
            vec![],
            Some((10_000, 9_000, 60)),
            Some((1000, 999, 60)),
        ),
        (
            both,
            vec![room(Unit::Requests, 3, 2, 1)],
            Some((10_000, 9_000, 60)),
            Some((3, 2, 3000)),
        ),
        // Tokens: net of this request's reservation (500 of 1000 left → 0.5 < 0.9).
        (
            both,
            vec![room(Unit::Tokens, 1000, 600, 100)],
            Some((1000, 500, 3000)),
            Some((1000, 999, 60)),
        ),
        // A roomier global limit does not bind; cost has no header.
        (
            both,
            vec![
                room(Unit::Tokens, 1_000_000, 1_000_000, 10),
                room(Unit::CostMicros, 5, 0, 0),
            ],
            Some((10_000, 9_000, 60)),
            Some((1000, 999, 60)),
        ),
        // No local limit of a kind: the global one is the header.
        (
            RateHeaders::default(),
            vec![room(Unit::Requests, 3, 0, 1)],
            None,
            Some((3, 0, 3000)),
        ),
    ];
    for (local, headroom, tokens, requests) in cases {
        let h = binding_with(local, &headroom);
        let f = |s: Option<LimitStatus>| s.map(|s| (s.limit, s.remaining, s.reset_s));
        assert_eq!(
            (f(h.tokens), f(h.requests)),
            (tokens, requests),
            "{headroom:?}"
        );
    }
}

#[test]
fn request_encoding_matches_hand_computed_bytes() {
    let d = vec![Descriptor {
        entries: vec![("k".into(), "v".into())],
        unit: Unit::Tokens,
        hits_addend: 0,
    }];
    // domain "d"; descriptor { entries { key "k" value "v" } hits_addend {} }
    assert_eq!(
        encode_request("d", &d),
        vec![0x0a, 1, b'd', 0x12, 10, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', 0x1a, 0]
    );
    let d = vec![Descriptor {
        entries: vec![],
        unit: Unit::Tokens,
        hits_addend: 300,
    }];
    assert_eq!(
        encode_request("", &d),
        vec![0x0a, 0, 0x12, 5, 0x1a, 3, 0x08, 0xac, 0x02]
    );
}

#[test]
fn charge_sends_real_usage_and_leaves_out_requests_and_zeros() {
    let body = charge_request(
        "tollgate",
        "team-a",
        Some("gpt-4o-mini"),
        &[Unit::Tokens, Unit::Requests, Unit::CostMicros],
        &amounts(4321, 0),
    )
    .unwrap();
    let (_, descs) = decode_request(&body);
    assert_eq!(descs.len(), 2);
    for (es, hits) in &descs {
        assert_eq!(
            es.last().unwrap(),
            &("unit".to_string(), "tokens".to_string())
        );
        assert_eq!(*hits, Some(4321));
    }
    assert_eq!(
        charge_request("t", "c", None, &[Unit::Requests], &amounts(9, 9)),
        None
    );
    assert_eq!(
        charge_request("t", "c", None, &[Unit::Tokens], &amounts(0, 9)),
        None
    );
}

#[test]
fn admits_when_every_limited_descriptor_has_room() {
    let checks = [
        Check {
            unit: Unit::Tokens,
            need: 1000,
        },
        Check {
            unit: Unit::Requests,
            need: 1,
        },
        Check {
            unit: Unit::Tokens,
            need: 1000,
        },
    ];
    let resp = encode_response(
        OK,
        &[
            st(OK, Some((5000, MINUTE)), 1000, 30),
            st(OK, Some((60, MINUTE)), 59, 30),
            // No limit configured for the model descriptor: no constraint.
            st(OK, None, 0, 0),
        ],
    );
    match decide(&resp, &checks) {
        Decision::Admit(h) => {
            assert_eq!(h.len(), 2);
            assert_eq!(h[0].limit, 5000);
            assert_eq!(h[0].remaining, 1000);
            assert_eq!(h[0].reset_s, 30);
            assert_eq!(h[0].window_s, 60);
            assert_eq!(h[1].unit, Unit::Requests);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rejects_when_remaining_is_below_the_reservation() {
    let checks = [Check {
        unit: Unit::Tokens,
        need: 1001,
    }];
    let resp = encode_response(OK, &[st(OK, Some((5000, MINUTE)), 1000, 42)]);
    assert_eq!(
        decide(&resp, &checks),
        Decision::Reject(Rejection {
            unit: Some(Unit::Tokens),
            retry_after_s: 42,
            index: Some(0),
            limit: Some(5000),
            per: Some(Per::Minute),
            remaining: 1000,
            need: 1001,
            should_retry: true,
        })
    );
}

#[test]
fn rejects_over_limit_requests_and_waits_for_the_longest_window() {
    let checks = [
        Check {
            unit: Unit::Tokens,
            need: 10,
        },
        Check {
            unit: Unit::Requests,
            need: 1,
        },
    ];
    let resp = encode_response(
        OVER,
        &[
            st(OK, Some((100, 4)), 5, 7200),
            st(OVER, Some((60, MINUTE)), 0, 12),
        ],
    );
    match decide(&resp, &checks) {
        Decision::Reject(r) => {
            assert_eq!(r.unit, Some(Unit::Tokens));
            assert_eq!(r.per, Some(Per::Day));
            assert_eq!(r.retry_after_s, 7200);
            assert!(r.should_retry);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reservation_above_the_limit_itself_cannot_be_retried() {
    let checks = [
        Check {
            unit: Unit::Requests,
            need: 1,
        },
        Check {
            unit: Unit::Tokens,
            need: 6000,
        },
    ];
    let resp = encode_response(
        OVER,
        &[
            st(OVER, Some((1, 3)), 0, 3000),
            st(OK, Some((5000, MINUTE)), 5000, 9),
        ],
    );
    match decide(&resp, &checks) {
        Decision::Reject(r) => {
            assert_eq!(r.unit, Some(Unit::Tokens));
            assert!(!r.should_retry);
            assert_eq!(r.retry_after_s, 3000);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unusable_responses_are_errors() {
    let checks = [Check {
        unit: Unit::Tokens,
        need: 1,
    }];
    assert_eq!(
        decide(&encode_response(0, &[st(OK, None, 0, 0)]), &checks),
        Decision::Error(RlsError::UnknownCode)
    );
    assert_eq!(
        decide(&encode_response(OK, &[]), &checks),
        Decision::Error(RlsError::StatusCount { sent: 1, got: 0 })
    );
    assert!(matches!(
        decide(&encode_response(OVER, &[]), &checks),
        Decision::Reject(Rejection {
            unit: None,
            retry_after_s: 1,
            ..
        })
    ));
    assert_eq!(
        decide(&[0x08], &checks),
        Decision::Error(RlsError::Decode(DecodeError::Truncated))
    );
    assert_eq!(
        decide(&[0x0b], &checks),
        Decision::Error(RlsError::Decode(DecodeError::WireType))
    );
    assert_eq!(
        decide(&[0x12, 0x05, 0x08], &checks),
        Decision::Error(RlsError::Decode(DecodeError::Truncated))
    );
    assert_eq!(
        decode_response(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        Err(DecodeError::VarintTooLong)
    );
    assert_eq!(decode_response(&[0x00]), Err(DecodeError::BadField));
}

#[test]
fn unknown_fields_are_skipped() {
    let mut resp = encode_response(OK, &[st(OK, Some((10, MINUTE)), 10, 5)]);
    // response_headers_to_add, raw_body, a fixed64 and a fixed32 field, dynamic_metadata
    resp.extend_from_slice(&[0x1a, 2, 0x0a, 0]);
    resp.extend_from_slice(&[0x2a, 3, b'a', b'b', b'c']);
    resp.extend_from_slice(&[0x41, 1, 2, 3, 4, 5, 6, 7, 8]);
    resp.extend_from_slice(&[0x4d, 1, 2, 3, 4]);
    resp.extend_from_slice(&[0x32, 0]);
    let r = decode_response(&resp).unwrap();
    assert_eq!(r.overall, Code::Ok);
    assert_eq!(r.statuses.len(), 1);
    assert_eq!(r.statuses[0].limit_remaining, 10);
}

#[test]
fn reset_rounds_up_and_is_at_least_one_second() {
    let mk = |r| DescriptorStatus {
        code: Code::Ok,
        current_limit: None,
        limit_remaining: 0,
        until_reset: r,
    };
    assert_eq!(mk(Some((4, 1))).reset_s(), 5);
    assert_eq!(mk(Some((4, 0))).reset_s(), 4);
    assert_eq!(mk(Some((0, 0))).reset_s(), 1);
    assert_eq!(mk(Some((-3, 0))).reset_s(), 1);
    assert_eq!(mk(None).reset_s(), 1);
}

/// A real answer of envoyproxy/ratelimit (the pinned build, envoy/ratelimit/config.yaml)
/// to `admission_request("tollgate", "team-a", Some("claude-haiku-4-5"), [tokens,
/// requests, cost_micros], 1500 tokens / 70 micros)`, sent over gRPC with curl and
/// captured off the wire (gRPC frame removed).
#[test]
fn decodes_a_captured_reference_service_response() {
    let r = decode_response(CAPTURED).unwrap();
    assert_eq!(r.overall, Code::Ok);
    assert_eq!(r.statuses.len(), 6);
    let limits: Vec<_> = r
        .statuses
        .iter()
        .map(|s| s.current_limit.map(|l| (l.requests_per_unit, l.unit.per())))
        .collect();
    assert_eq!(
        limits,
        vec![
            Some((200_000, Some(Per::Minute))),
            Some((120, Some(Per::Minute))),
            Some((25_000_000, Some(Per::Day))),
            Some((150_000, Some(Per::Minute))),
            None,
            None,
        ]
    );
    let remaining: Vec<_> = r.statuses.iter().map(|s| s.limit_remaining).collect();
    assert_eq!(remaining, vec![200_000, 119, 25_000_000, 150_000, 0, 0]);
    assert_eq!(r.statuses[0].until_reset, Some((39, 0)));
    assert_eq!(r.statuses[2].reset_s(), 48_819);
    assert_eq!(r.statuses[4].until_reset, None);

    let units = [Unit::Tokens, Unit::Requests, Unit::CostMicros];
    let a = admission_request(
        "tollgate",
        "team-a",
        Some("claude-haiku-4-5"),
        &units,
        &amounts(1500, 70),
    );
    match decide(CAPTURED, &a.checks) {
        Decision::Admit(h) => assert_eq!(h.len(), 4),
        other => panic!("{other:?}"),
    }
    // The model's 150000 is the binding one for a reservation it cannot hold.
    let a = admission_request(
        "tollgate",
        "team-a",
        Some("claude-haiku-4-5"),
        &units,
        &amounts(160_000, 70),
    );
    match decide(CAPTURED, &a.checks) {
        Decision::Reject(r) => {
            assert_eq!(r.limit, Some(150_000));
            assert!(!r.should_retry);
            assert_eq!(r.retry_after_s, 39);
        }
        other => panic!("{other:?}"),
    }
}

#[rustfmt::skip]
    const CAPTURED: &[u8] = &[
        0x08, 0x01, 0x12, 0x12, 0x08, 0x01, 0x12, 0x06, 0x08, 0xc0, 0x9a, 0x0c, 0x10, 0x02, 0x18, 0xc0,
        0x9a, 0x0c, 0x22, 0x02, 0x08, 0x27, 0x12, 0x0e, 0x08, 0x01, 0x12, 0x04, 0x08, 0x78, 0x10, 0x02,
        0x18, 0x77, 0x22, 0x02, 0x08, 0x27, 0x12, 0x16, 0x08, 0x01, 0x12, 0x07, 0x08, 0xc0, 0xf0, 0xf5,
        0x0b, 0x10, 0x04, 0x18, 0xc0, 0xf0, 0xf5, 0x0b, 0x22, 0x04, 0x08, 0xb3, 0xfd, 0x02, 0x12, 0x12,
        0x08, 0x01, 0x12, 0x06, 0x08, 0xf0, 0x93, 0x09, 0x10, 0x02, 0x18, 0xf0, 0x93, 0x09, 0x22, 0x02,
        0x08, 0x27, 0x12, 0x02, 0x08, 0x01, 0x12, 0x02, 0x08, 0x01,
    ];

mod props {
    use super::*;
    use proptest::prelude::*;

    fn status() -> impl Strategy<Value = St> {
        (
            0u64..4,
            proptest::option::of((0u64..=u32::MAX as u64, 0u64..9)),
            0u64..=u32::MAX as u64,
            proptest::option::of((-5i64..100_000, -1i32..1_000_000_000)),
        )
            .prop_map(|(code, limit, remaining, reset)| St {
                code,
                limit,
                remaining,
                reset,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_response(&bytes);
            let checks = [Check { unit: Unit::Tokens, need: 5 }, Check { unit: Unit::Requests, need: 1 }];
            let _ = decide(&bytes, &checks);
        }

        #[test]
        fn mutated_responses_never_panic(
            statuses in proptest::collection::vec(status(), 0..4),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
        ) {
            let mut b = encode_response(1, &statuses);
            for (i, x) in flips {
                if !b.is_empty() {
                    let n = b.len();
                    b[i % n] ^= x;
                }
            }
            let n = b.len();
            b.truncate(cut % (n + 1));
            let _ = decide(&b, &[Check { unit: Unit::CostMicros, need: 7 }]);
        }

        #[test]
        fn responses_round_trip(overall in 0u64..3, statuses in proptest::collection::vec(status(), 0..6)) {
            let r = decode_response(&encode_response(overall, &statuses)).unwrap();
            prop_assert_eq!(r.overall, Code::from_wire(overall));
            prop_assert_eq!(r.statuses.len(), statuses.len());
            for (got, want) in r.statuses.iter().zip(&statuses) {
                prop_assert_eq!(got.code, Code::from_wire(want.code));
                prop_assert_eq!(got.limit_remaining, want.remaining);
                prop_assert_eq!(got.current_limit.map(|l| (l.requests_per_unit, l.unit.0)), want.limit);
                prop_assert_eq!(got.until_reset, want.reset.map(|(s, n)| (s, i64::from(n))));
            }
        }

        #[test]
        fn requests_round_trip(
            consumer in "[A-Za-z0-9_.-]{1,16}",
            model in proptest::option::of("[ -~]{0,20}"),
            tokens in any::<u64>(),
            cost in any::<u64>(),
        ) {
            let units = [Unit::Tokens, Unit::Requests, Unit::CostMicros];
            let a = admission_request("tollgate", &consumer, model.as_deref(), &units, &amounts(tokens, cost));
            let (domain, descs) = decode_request(&a.body);
            prop_assert_eq!(domain, "tollgate");
            prop_assert_eq!(descs.len(), a.checks.len());
            let want = descriptors_for(&consumer, model.as_deref(), &units);
            for ((es, hits), d) in descs.iter().zip(&want) {
                prop_assert_eq!(es, &d.entries);
                prop_assert_eq!(*hits, Some(u64::from(d.unit == Unit::Requests)));
            }
            if let Some(body) = charge_request("tollgate", &consumer, model.as_deref(), &units, &amounts(tokens, cost)) {
                for (es, hits) in decode_request(&body).1 {
                    let unit = es.last().map(|(_, v)| v.clone()).unwrap_or_default();
                    let expect = if unit == "tokens" { tokens } else { cost };
                    // Sums are sent clamped to what a uint32 limit can hold.
                    prop_assert_eq!(hits, Some(expect.min(MAX_ADDEND)));
                    prop_assert!(expect > 0);
                }
            }
        }
    }
}

mod charges;
mod refusals;
