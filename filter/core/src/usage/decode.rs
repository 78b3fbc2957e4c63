//! Content decoding for counting only (the bytes sent on are never changed): gzip header
//! walking and a bounded inflate window over deflate streams.

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

use super::*;

pub(super) enum Decoder {
    Identity,
    Inflate(Box<Inflater>),
    Unsupported,
}

impl Decoder {
    /// `identity` entries (and empty ones) are no coding; one gzip, x-gzip or deflate is
    /// decoded; anything else, stacked codings included (`gzip, gzip`, `gzip, br`), is not.
    pub(super) fn new(content_encoding: &str) -> Decoder {
        let mut codings = content_encoding
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        match (codings.next(), codings.next()) {
            (None, _) => Decoder::Identity,
            (Some(c), None)
                if c.eq_ignore_ascii_case("gzip") || c.eq_ignore_ascii_case("x-gzip") =>
            {
                Decoder::Inflate(Box::new(Inflater::new(Gz::Fixed { got: 0, flags: 0 })))
            }
            (Some(c), None) if c.eq_ignore_ascii_case("deflate") => {
                Decoder::Inflate(Box::new(Inflater::new(Gz::Sniff)))
            }
            _ => Decoder::Unsupported,
        }
    }

    /// The compressed bytes turned out not to be gzip/deflate, or corrupt: the rest of the
    /// body was not decoded.
    pub(super) fn broken(&self) -> bool {
        matches!(self, Decoder::Inflate(i) if i.gz == Gz::Broken)
    }

    pub(super) fn decode<F: FnMut(&[u8])>(&mut self, input: &[u8], mut sink: F) {
        match self {
            Decoder::Identity => sink(input),
            Decoder::Inflate(i) => i.decode(input, &mut sink),
            Decoder::Unsupported => {}
        }
    }
}

/// Where the gzip/deflate decoder is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gz {
    /// deflate: the first byte tells zlib from raw deflate (both are sent as "deflate").
    Sniff,
    /// The 10 fixed gzip header bytes.
    Fixed {
        got: u8,
        flags: u8,
    },
    ExtraLen {
        flags: u8,
        got: u8,
        len: u16,
    },
    Extra {
        flags: u8,
        left: u16,
    },
    Name {
        flags: u8,
    },
    Comment {
        flags: u8,
    },
    HeaderCrc {
        left: u8,
    },
    Body {
        gzip: bool,
    },
    /// CRC32 and size: not checked, counting does not need them.
    Trailer {
        left: u8,
    },
    /// Finished: the rest is ignored.
    Stop,
    /// Not gzip/deflate, or corrupt: the rest is ignored.
    Broken,
}

pub(super) const FHCRC: u8 = 2;
pub(super) const FEXTRA: u8 = 4;
pub(super) const FNAME: u8 = 8;
pub(super) const FCOMMENT: u8 = 16;

/// The header part that follows once the parts in `done` (flag bits) are read.
fn after_header(flags: u8, done: u8) -> Gz {
    let todo = flags & !done;
    if todo & FEXTRA != 0 {
        Gz::ExtraLen {
            flags,
            got: 0,
            len: 0,
        }
    } else if todo & FNAME != 0 {
        Gz::Name { flags }
    } else if todo & FCOMMENT != 0 {
        Gz::Comment { flags }
    } else if todo & FHCRC != 0 {
        Gz::HeaderCrc { left: 2 }
    } else {
        Gz::Body { gzip: true }
    }
}

pub(super) struct Inflater {
    state: Box<InflateState>,
    out: Vec<u8>,
    gz: Gz,
    /// A whole gzip member was read: bytes after it that start no member are ignored.
    member_done: bool,
}

impl Inflater {
    fn new(gz: Gz) -> Self {
        Inflater {
            state: InflateState::new_boxed(DataFormat::Raw),
            out: vec![0; INFLATE_OUT],
            gz,
            member_done: false,
        }
    }

    fn decode(&mut self, mut input: &[u8], sink: &mut dyn FnMut(&[u8])) {
        while !input.is_empty() {
            let Some((&b, rest)) = input.split_first() else {
                return;
            };
            match self.gz {
                Gz::Stop | Gz::Broken => return,
                Gz::Body { gzip } => {
                    input = self.inflate(input, gzip, sink);
                    continue;
                }
                Gz::Sniff => {
                    // zlib: CM = 8 and a window of at most 32 KiB; anything else is raw.
                    let zlib = b & 0x0f == 8 && b >> 4 <= 7;
                    let format = if zlib {
                        DataFormat::Zlib
                    } else {
                        DataFormat::Raw
                    };
                    self.state.reset(format);
                    self.gz = Gz::Body { gzip: false };
                    continue;
                }
                Gz::Fixed { got, flags } => {
                    let ok = match got {
                        0 => b == 0x1f,
                        1 => b == 0x8b,
                        2 => b == 8,
                        _ => true,
                    };
                    let flags = if got == 3 { b } else { flags };
                    self.gz = if !ok && self.member_done {
                        // Padding or garbage after the body, not a next member.
                        Gz::Stop
                    } else if !ok {
                        Gz::Broken
                    } else if got == 9 {
                        self.state.reset(DataFormat::Raw);
                        after_header(flags, 0)
                    } else {
                        Gz::Fixed {
                            got: got.saturating_add(1),
                            flags,
                        }
                    };
                }
                Gz::ExtraLen { flags, got, len } => {
                    let len = if got == 0 {
                        u16::from(b)
                    } else {
                        len | u16::from(b) << 8
                    };
                    self.gz = match (got, len) {
                        (0, _) => Gz::ExtraLen { flags, got: 1, len },
                        (_, 0) => after_header(flags, FEXTRA),
                        _ => Gz::Extra { flags, left: len },
                    };
                }
                Gz::Extra { flags, left } => {
                    let left = left.saturating_sub(1);
                    self.gz = if left == 0 {
                        after_header(flags, FEXTRA)
                    } else {
                        Gz::Extra { flags, left }
                    };
                }
                Gz::Name { flags } => {
                    if b == 0 {
                        self.gz = after_header(flags, FEXTRA | FNAME);
                    }
                }
                Gz::Comment { flags } => {
                    if b == 0 {
                        self.gz = after_header(flags, FEXTRA | FNAME | FCOMMENT);
                    }
                }
                Gz::HeaderCrc { left } => {
                    self.gz = if left <= 1 {
                        Gz::Body { gzip: true }
                    } else {
                        Gz::HeaderCrc {
                            left: left.saturating_sub(1),
                        }
                    };
                }
                Gz::Trailer { left } => {
                    // A next gzip member may follow (concatenated gzip is legal).
                    self.gz = if left <= 1 {
                        Gz::Fixed { got: 0, flags: 0 }
                    } else {
                        Gz::Trailer {
                            left: left.saturating_sub(1),
                        }
                    };
                }
            }
            input = rest;
        }
    }

    /// Inflates as much of `input` as possible; returns what is left after the stream end.
    fn inflate<'a>(
        &mut self,
        mut input: &'a [u8],
        gzip: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> &'a [u8] {
        loop {
            let r = inflate(&mut self.state, input, &mut self.out, MZFlush::None);
            input = input.get(r.bytes_consumed..).unwrap_or_default();
            if r.bytes_written > 0 {
                sink(self.out.get(..r.bytes_written).unwrap_or_default());
            }
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    self.member_done = true;
                    self.gz = if gzip {
                        Gz::Trailer { left: 8 }
                    } else {
                        Gz::Stop
                    };
                    return input;
                }
                Ok(_) => {
                    let full = r.bytes_written == self.out.len();
                    if (input.is_empty() && !full)
                        || (r.bytes_consumed == 0 && r.bytes_written == 0)
                    {
                        return input;
                    }
                }
                Err(MZError::Buf) => return input,
                Err(_) => {
                    self.gz = Gz::Broken;
                    return &[];
                }
            }
        }
    }
}
