//! `SseParser`: any bytes, any chunking, any cap: never a panic, the same events whatever
//! the chunks, offsets inside the chunk, data within the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::sse::SseParser;
use tollgate_fuzz::{windows, Input};

type Ev = (Vec<u8>, Vec<u8>, bool);

fn run(body: &[u8], cuts: &[usize], cap: usize) -> (Vec<Option<Ev>>, Vec<usize>) {
    let mut p = SseParser::new(cap);
    let mut events = Vec::new();
    let mut offsets = Vec::new();
    let mut base = 0usize;
    for w in windows(body, cuts) {
        p.feed(w, |off, ev| {
            assert!(off <= w.len(), "offset {off} past a chunk of {}", w.len());
            offsets.push(base + off);
            if let Some(e) = ev {
                assert!(
                    e.data.len() <= cap.max(16) + 4,
                    "data {} over cap {cap}",
                    e.data.len()
                );
                events.push(Some((e.name.to_vec(), e.data.to_vec(), e.truncated)));
            } else {
                events.push(None);
            }
        });
        base += w.len();
    }
    p.finish(|ev| events.push(ev.map(|e| (e.name.to_vec(), e.data.to_vec(), e.truncated))));
    (events, offsets)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Input::new(data);
    let cap = 16 + (u.u16() as usize % 512);
    let raw: Vec<u16> = (0..u.u8() % 8).map(|_| u.u16()).collect();
    let body = u.rest();
    let mut cuts: Vec<usize> = raw.iter().map(|&c| c as usize % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let whole = run(body, &[], cap);
    let split = run(body, &cuts, cap);
    // Truncated (over-cap) events keep a tail whose exact start may depend on chunking;
    // everything else must match exactly.
    if !whole.0.iter().flatten().any(|e| e.2) {
        assert_eq!(whole.0, split.0, "chunks {cuts:?} changed the events");
    } else {
        assert_eq!(
            whole.0.len(),
            split.0.len(),
            "chunks {cuts:?} changed the event count"
        );
    }
    // A chunk ending between the `\r` and `\n` of a line end reports the cut after the `\r`
    // (the `\n` is skipped at the start of the next chunk): the same place, for a cut.
    let norm = |v: &[usize]| -> Vec<usize> {
        v.iter()
            .map(
                |&o| match (o.checked_sub(1).and_then(|i| body.get(i)), body.get(o)) {
                    (Some(b'\r'), Some(b'\n')) => o + 1,
                    _ => o,
                },
            )
            .collect()
    };
    assert_eq!(
        norm(&whole.1),
        norm(&split.1),
        "chunks {cuts:?} changed the cut offsets"
    );
});
