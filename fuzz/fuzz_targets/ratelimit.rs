//! The gRPC `RateLimitResponse` decoder and `decide`: arbitrary replies (truncated varints,
//! wrong wire types, huge lengths, any number of statuses) against random checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::ratelimit::{decide, decode_response, Check, Decision, Unit};
use tollgate_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut u = Input::new(data);
    let n = u.u8() % 5;
    let checks: Vec<Check> = (0..n)
        .map(|_| Check {
            unit: Unit::ALL[u.u8() as usize % Unit::ALL.len()],
            need: u.u64() >> (u.u8() % 64),
        })
        .collect();
    let reply = u.rest();
    let decoded = decode_response(reply);
    if let Ok(r) = &decoded {
        for s in &r.statuses {
            assert!(s.reset_s() >= 1);
        }
    }
    match decide(reply, &checks) {
        Decision::Admit(h) => {
            assert!(decoded.is_ok());
            assert!(h.len() <= checks.len());
            for x in h {
                assert!(x.reset_s >= 1);
            }
        }
        Decision::Reject(r) => {
            assert!(decoded.is_ok());
            assert!(r.retry_after_s >= 1, "retry-after below 1 s: {r:?}");
        }
        Decision::Error(e) => {
            let _ = e.to_string();
        }
    }
});
