//! Huge JSON answers (`body_bytes`, `gzip_bytes`): the provider's success body with its
//! content text padded by filler to a given size, produced chunk by chunk as the client reads,
//! so a gigabyte costs no memory and a slow reader slows the mock down instead of filling it.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::providers::{json_parts, Kind, Req};

/// Filler chunk size: one body frame.
const CHUNK: usize = 64 << 10;

/// Highly compressible, JSON-safe text that follows the real answer inside the content string.
fn filler() -> Bytes {
    static FILLER: OnceLock<Bytes> = OnceLock::new();
    FILLER
        .get_or_init(|| {
            // One repeated letter: gzip squeezes it about 1000:1, a real bomb's ratio.
            Bytes::from(vec![b'x'; CHUNK])
        })
        .clone()
}

pub struct Huge {
    head: Option<Bytes>,
    /// Filler bytes still to send.
    left: u64,
    tail: Option<Bytes>,
    len: u64,
}

impl Huge {
    /// The `kind` JSON answer for `r`, `total` bytes long (or just the answer if that is longer).
    pub fn new(kind: Kind, r: &Req, total: u64) -> Huge {
        let (head, tail) = json_parts(kind, r);
        let fixed = (head.len() + tail.len()) as u64;
        let left = total.saturating_sub(fixed);
        Huge {
            head: Some(Bytes::from(head)),
            left,
            tail: Some(Bytes::from(tail)),
            len: fixed.saturating_add(left),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// The next piece of the body; `None` at its end.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(h) = self.head.take() {
            return Some(h);
        }
        if self.left > 0 {
            let n = usize::try_from(self.left).map_or(CHUNK, |l| l.min(CHUNK));
            self.left -= n as u64;
            return Some(filler().slice(..n));
        }
        self.tail.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Usage;
    use crate::script::{UsageRaw, Words};
    use serde_json::Value;

    fn req() -> Req {
        Req {
            id: 3,
            created: 1_700_000_000,
            model: "m".into(),
            include_usage: false,
            n: 5,
            capped: false,
            usage: Usage {
                input: 123,
                output: 45,
                ..Usage::default()
            },
            raw: UsageRaw::none(),
            words: Words::default_answer(),
        }
    }

    fn all(mut h: Huge) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunks = 0;
        while let Some(c) = h.next_chunk() {
            assert!(c.len() <= CHUNK.max(4096), "one chunk per frame");
            out.extend_from_slice(&c);
            chunks += 1;
        }
        assert!(chunks >= 2);
        out
    }

    #[test]
    fn huge_body_has_the_asked_size_valid_json_and_usage_after_the_filler() {
        let kinds: &[(Kind, &str, &str, &str)] = &[
            (
                Kind::Messages,
                "/content/0/text",
                "/usage/output_tokens",
                "\"usage\"",
            ),
            (
                Kind::Chat,
                "/choices/0/message/content",
                "/usage/completion_tokens",
                "\"usage\"",
            ),
            (
                Kind::Completions,
                "/choices/0/text",
                "/usage/completion_tokens",
                "\"usage\"",
            ),
            (
                Kind::Responses,
                "/output/0/content/0/text",
                "/usage/output_tokens",
                "\"usage\"",
            ),
            (
                Kind::Gemini { array: false },
                "/candidates/0/content/parts/0/text",
                "/usageMetadata/candidatesTokenCount",
                "\"usageMetadata\"",
            ),
        ];
        for size in [0u64, 1000, 200_000, 3 * CHUNK as u64 + 17] {
            for (kind, text_at, usage_at, usage_key) in kinds {
                let h = Huge::new(*kind, &req(), size);
                let len = h.len();
                let body = all(h);
                assert_eq!(body.len() as u64, len, "{kind:?} {size}");
                if size > 2000 {
                    assert_eq!(len, size, "{kind:?}");
                }
                let v: Value = serde_json::from_slice(&body).unwrap();
                let text = v.pointer(text_at).and_then(Value::as_str).unwrap();
                assert!(text.starts_with("Hello from the mock upstream"), "{kind:?}");
                assert_eq!(v.pointer(usage_at).and_then(Value::as_u64), Some(45));
                // The usage comes after all the filler: within the last 2 KB of the body.
                let at = body
                    .windows(usage_key.len())
                    .rposition(|w| w == usage_key.as_bytes())
                    .unwrap();
                assert!(
                    body.len() - at < 2048,
                    "{kind:?}: usage {} from the end",
                    body.len() - at
                );
                assert!(at > text.len(), "{kind:?}");
            }
        }
    }
}
