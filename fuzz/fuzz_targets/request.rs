//! `RequestScanner` on every endpoint, with the body cut into random windows: never a panic,
//! the same answer whatever the windows (the same error kind aside), and a usage splice that keeps the body valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::request::{RequestError, RequestInfo, RequestScanner};
use tollgate_fuzz::{endpoint, path_model, windows, Input};

fn scan(
    ep: tollgate_fuzz::provider::Endpoint,
    body: &[u8],
    cuts: &[usize],
) -> Result<RequestInfo, RequestError> {
    let mut s = RequestScanner::new(ep, path_model(ep));
    for w in windows(body, cuts) {
        s.feed(w)?;
    }
    s.finish()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Input::new(data);
    let ep = endpoint(u.u8());
    let raw_cuts: Vec<u16> = (0..u.u8() % 8).map(|_| u.u16()).collect();
    let body = u.rest();
    let mut cuts: Vec<usize> = raw_cuts
        .iter()
        .map(|&c| (c as usize) % (body.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = scan(ep, body, &[]);
    let split = scan(ep, body, &cuts);
    // Bytes are consumed as they come: where the windows fall must not change the answer.
    // (Which of two faults a bad body is refused for may: `"a" x` is "not an object" when
    // the string ends a window, "data after the JSON value" otherwise; both are 400.)
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "windows {cuts:?} changed the answer"),
        (Err(_), Err(_)) => {}
        _ => panic!("windows {cuts:?} changed the answer: {whole:?} vs {split:?}"),
    }

    if let Ok(info) = &whole {
        if let Some(splice) = info.usage_splice {
            if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
                let out = splice.apply(body).expect("splice within the body");
                assert_eq!(out.len() as isize, body.len() as isize + splice.growth());
                let v: serde_json::Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("spliced body is not JSON: {e}"));
                assert_eq!(
                    v.pointer("/stream_options/include_usage"),
                    Some(&serde_json::Value::Bool(true)),
                    "splice did not set include_usage"
                );
            }
        }
    }
});
