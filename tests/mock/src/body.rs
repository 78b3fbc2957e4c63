//! The response body: one buffer, a few frames with pauses between them, a huge generated
//! answer, or a stream plan played frame by frame with optional delays, per-event flushed
//! compression, and a deliberate abort (the body errors, so hyper drops the connection
//! without a proper end: no last chunk on HTTP/1.1, RST_STREAM on HTTP/2).

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::encode::{Encoder, Encoding};
use crate::huge::Huge;
use crate::providers::{Part, Plan};
use crate::record::{End, Record};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
struct MockReset;

impl std::fmt::Display for MockReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tollgate-mock: scripted reset")
    }
}

impl std::error::Error for MockReset {}

enum Source {
    /// A whole body; with `truncate`, only its first half is sent, then the connection aborts.
    Once {
        data: Option<Bytes>,
        len: u64,
        truncate: bool,
    },
    /// Frames sent one by one with a pause between them, so each arrives in its own read.
    Frames {
        frames: VecDeque<Bytes>,
        len: u64,
        gap: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
        started: bool,
    },
    /// A generated answer, compressed as it goes when `enc` is set.
    Huge {
        gen: Box<Huge>,
        enc: Option<Box<Encoder>>,
    },
    Stream(Box<StreamState>),
}

struct StreamState {
    plan: Plan,
    pos: usize,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Abort before the delta with this index (after that many deltas were sent).
    reset_after: Option<usize>,
    enc: Option<Encoder>,
    deltas_sent: usize,
    end: End,
}

pub struct MockBody {
    src: Source,
    rec: Option<Arc<Record>>,
    done: bool,
    /// Armed at the abort point: hyper only flushes what it buffered when the body is pending,
    /// and an error drops the buffer, so the abort waits a moment for the bytes to go out.
    reset_wait: Option<Pin<Box<Sleep>>>,
}

/// Long enough for hyper to flush the frames already produced before the abort.
const RESET_FLUSH: Duration = Duration::from_millis(5);

impl MockBody {
    fn new(src: Source, rec: Option<Arc<Record>>) -> MockBody {
        MockBody {
            src,
            rec,
            done: false,
            reset_wait: None,
        }
    }

    /// `frames` in order, pausing `gap` before each one after the first.
    pub fn frames(frames: Vec<Bytes>, gap: Duration, rec: Option<Arc<Record>>) -> MockBody {
        let len = frames.iter().map(|f| f.len() as u64).sum();
        MockBody::new(
            Source::Frames {
                frames: frames.into(),
                len,
                gap,
                sleep: None,
                started: false,
            },
            rec,
        )
    }

    pub fn huge(gen: Huge, enc: Encoding, rec: Option<Arc<Record>>) -> MockBody {
        MockBody::new(
            Source::Huge {
                gen: Box::new(gen),
                enc: Encoder::new(enc).map(Box::new),
            },
            rec,
        )
    }

    pub fn full(data: Bytes, rec: Option<Arc<Record>>) -> MockBody {
        MockBody::once(data, false, rec)
    }

    pub fn truncated(data: Bytes, rec: Option<Arc<Record>>) -> MockBody {
        MockBody::once(data, true, rec)
    }

    fn once(data: Bytes, truncate: bool, rec: Option<Arc<Record>>) -> MockBody {
        MockBody::new(
            Source::Once {
                len: data.len() as u64,
                data: Some(data),
                truncate,
            },
            rec,
        )
    }

    pub fn stream(
        plan: Plan,
        delay_ms: u64,
        reset_after: Option<usize>,
        enc: Encoding,
        sse_error: bool,
        rec: Option<Arc<Record>>,
    ) -> MockBody {
        MockBody::new(
            Source::Stream(Box::new(StreamState {
                plan,
                pos: 0,
                delay: Duration::from_millis(delay_ms),
                sleep: None,
                reset_after,
                enc: Encoder::new(enc),
                deltas_sent: 0,
                end: if sse_error {
                    End::SseError
                } else {
                    End::Complete
                },
            })),
            rec,
        )
    }

    /// Waits for the flush, then fails the body so hyper aborts the connection/stream.
    fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let wait = self
            .reset_wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(RESET_FLUSH)));
        if wait.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.finish(End::Reset);
        Poll::Ready(Some(Err(Box::new(MockReset))))
    }

    fn finish(&mut self, end: End) {
        self.done = true;
        if let Some(r) = &self.rec {
            r.set_end(end);
        }
    }
}

impl Drop for MockBody {
    fn drop(&mut self) {
        if !self.done {
            if let Some(r) = &self.rec {
                // Hyper dropped the body before its end: the client went away.
                r.set_end(End::ClientGone);
            }
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match &mut this.src {
            Source::Once {
                data,
                truncate,
                len: _,
            } => match data.take() {
                Some(mut d) => {
                    if *truncate {
                        // Leave a half body behind and then fail on the next poll.
                        Poll::Ready(Some(Ok(Frame::data(d.split_to(d.len() / 2)))))
                    } else {
                        this.finish(End::Complete);
                        Poll::Ready(Some(Ok(Frame::data(d))))
                    }
                }
                None => this.poll_reset(cx),
            },
            Source::Frames {
                frames,
                gap,
                sleep,
                started,
                len: _,
            } => {
                if frames.is_empty() {
                    this.finish(End::Complete);
                    return Poll::Ready(None);
                }
                if *started && !gap.is_zero() {
                    // Wait, so hyper flushes what came before: this frame arrives on its own.
                    let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*gap)));
                    if s.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *sleep = None;
                }
                *started = true;
                let Some(next) = frames.pop_front() else {
                    return Poll::Ready(None);
                };
                if frames.is_empty() {
                    this.finish(End::Complete);
                }
                Poll::Ready(Some(Ok(Frame::data(next))))
            }
            Source::Huge { gen, enc } => loop {
                match (gen.next_chunk(), enc.as_mut()) {
                    (Some(c), None) => return Poll::Ready(Some(Ok(Frame::data(c)))),
                    (Some(c), Some(e)) => {
                        let out = e.push(&c, false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    (None, _) => {
                        let trailer = enc.take().map(|e| e.finish());
                        this.finish(End::Complete);
                        return match trailer {
                            Some(t) if !t.is_empty() => Poll::Ready(Some(Ok(Frame::data(t)))),
                            _ => Poll::Ready(None),
                        };
                    }
                }
            },
            Source::Stream(st) => {
                let part = st.plan.part(st.pos);
                // The abort point is before delta N, or before the tail when N is all of them.
                let at_boundary = part == Some(Part::Delta)
                    || (part == Some(Part::Tail) && st.deltas_sent == st.plan.n);
                if at_boundary && st.reset_after == Some(st.deltas_sent) {
                    return this.poll_reset(cx);
                }
                if part == Some(Part::Delta) && !st.delay.is_zero() {
                    let sleep = st
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(st.delay)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    st.sleep = None;
                }
                let Some(frame) = st.plan.frame(st.pos) else {
                    // Past the end: flush the encoder's trailer if any, then stop.
                    let trailer = st.enc.take().map(Encoder::finish);
                    let end = st.end;
                    if let Some(r) = &this.rec {
                        r.events_sent.store(st.deltas_sent, Ordering::Relaxed);
                    }
                    this.finish(end);
                    return match trailer {
                        Some(t) if !t.is_empty() => Poll::Ready(Some(Ok(Frame::data(t)))),
                        _ => Poll::Ready(None),
                    };
                };
                st.pos += 1;
                if part == Some(Part::Delta) {
                    st.deltas_sent += 1;
                    // Cheap enough per delta, and lets tests see how far an aborted stream got.
                    if let Some(r) = &this.rec {
                        r.events_sent.store(st.deltas_sent, Ordering::Relaxed);
                    }
                }
                let out = match st.enc.as_mut() {
                    Some(e) => e.push(&frame, true),
                    None => frame,
                };
                Poll::Ready(Some(Ok(Frame::data(out))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match &self.src {
            Source::Once { len, .. } => SizeHint::with_exact(*len),
            Source::Frames { len, .. } => SizeHint::with_exact(*len),
            Source::Huge { gen, enc: None } => SizeHint::with_exact(gen.len()),
            Source::Huge { .. } | Source::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{stream_plan, Kind, Req, Usage};
    use crate::script::Words;
    use http_body_util::BodyExt;
    use std::io::Read as _;

    fn req(n: usize, output: u64) -> Req {
        Req {
            id: 1,
            created: 0,
            model: "m".into(),
            include_usage: false,
            n,
            capped: false,
            usage: Usage {
                input: 1,
                output,
                ..Usage::default()
            },
            raw: crate::script::UsageRaw::none(),
            words: Words::default_answer(),
        }
    }

    fn plan(n: usize) -> Plan {
        stream_plan(Kind::Messages, &req(n, n as u64), None)
    }

    async fn frames(mut b: MockBody) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            match b.frame().await {
                None => return (out, false),
                Some(Err(_)) => return (out, true),
                Some(Ok(f)) => out.extend_from_slice(f.data_ref().unwrap()),
            }
        }
    }

    #[tokio::test]
    async fn gzip_stream_decodes_to_the_plain_stream() {
        let plain = plan(50).concat();
        let (gz, failed) = frames(MockBody::stream(
            plan(50),
            0,
            None,
            Encoding::Gzip,
            false,
            None,
        ))
        .await;
        assert!(!failed);
        let mut dec = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut dec)
            .unwrap();
        assert_eq!(dec, plain);
    }

    #[tokio::test]
    async fn every_encoding_of_a_stream_decodes_to_the_plain_stream() {
        use crate::encode::decode;
        for e in [
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::DeflateRaw,
            Encoding::Br,
            Encoding::Zstd,
        ] {
            let (wire, failed) = frames(MockBody::stream(plan(30), 0, None, e, false, None)).await;
            assert!(!failed);
            assert_eq!(decode(e, &wire), plan(30).concat(), "{e:?}");
        }
    }

    fn huge(size: u64) -> Huge {
        Huge::new(Kind::Chat, &req(3, 22), size)
    }

    #[tokio::test]
    async fn huge_body_is_sent_plain_with_its_length_or_compressed_in_many_frames() {
        use crate::encode::decode;
        let size = 1_000_000;
        let plain = MockBody::huge(huge(size), Encoding::Identity, None);
        assert_eq!(plain.size_hint().exact(), Some(size));
        let (want, failed) = frames(plain).await;
        assert!(!failed);
        assert_eq!(want.len() as u64, size);
        for e in [
            Encoding::Gzip,
            Encoding::Br,
            Encoding::Zstd,
            Encoding::Deflate,
        ] {
            let mut b = MockBody::huge(huge(size), e, None);
            assert_eq!(b.size_hint().exact(), None, "{e:?}: sent chunked");
            let mut wire = Vec::new();
            while let Some(f) = b.frame().await {
                wire.extend_from_slice(f.unwrap().data_ref().unwrap());
            }
            assert!(
                wire.len() < want.len() / 20,
                "{e:?}: filler compresses ({})",
                wire.len()
            );
            let got = decode(e, &wire);
            assert_eq!(got, want, "{e:?}");
            let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 22);
        }
    }

    #[tokio::test]
    async fn frames_arrive_one_by_one_after_the_gap() {
        let parts = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")];
        let mut b = MockBody::frames(parts, Duration::from_millis(30), None);
        assert_eq!(b.size_hint().exact(), Some(6));
        let t = std::time::Instant::now();
        let first = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(t.elapsed() < Duration::from_millis(25));
        let second = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!((&first[..], &second[..]), (&b"abc"[..], &b"def"[..]));
        assert!(b.frame().await.is_none());
        assert!(b.is_end_stream());
    }

    #[tokio::test]
    async fn reset_stops_after_n_deltas_with_an_error() {
        let rec = Arc::new(Record::for_test());
        let (out, failed) = frames(MockBody::stream(
            plan(10),
            0,
            Some(4),
            Encoding::Identity,
            false,
            Some(rec.clone()),
        ))
        .await;
        assert!(failed);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("content_block_delta").count(), 4 * 2);
        assert!(!text.contains("message_delta"));
        assert_eq!(rec.end(), End::Reset);
        assert_eq!(rec.events_sent.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn reset_at_n_drops_only_the_tail() {
        let (out, failed) = frames(MockBody::stream(
            plan(3),
            0,
            Some(3),
            Encoding::Identity,
            false,
            None,
        ))
        .await;
        assert!(failed);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("text_delta").count(), 3);
        assert!(!text.contains("message_stop"));
    }

    #[tokio::test]
    async fn truncated_json_sends_half_then_fails() {
        let (out, failed) =
            frames(MockBody::truncated(Bytes::from_static(b"0123456789"), None)).await;
        assert!(failed);
        assert_eq!(out, b"01234");
    }

    #[tokio::test]
    async fn delays_between_deltas() {
        let t = std::time::Instant::now();
        let (_, failed) = frames(MockBody::stream(
            plan(5),
            10,
            None,
            Encoding::Identity,
            false,
            None,
        ))
        .await;
        assert!(!failed);
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn dropped_body_records_client_gone() {
        let rec = Arc::new(Record::for_test());
        let mut b = MockBody::stream(
            plan(5),
            0,
            None,
            Encoding::Identity,
            false,
            Some(rec.clone()),
        );
        let _ = b.frame().await;
        drop(b);
        assert_eq!(rec.end(), End::ClientGone);
    }
}
