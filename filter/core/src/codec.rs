//! The one binary codec: LEB128 varints (protobuf's base-128 varints), length-prefixed bytes
//! and a bounds-checked reader. Every stored value (quota state, account health) and the
//! rate-limit service's protobuf messages are written and read with it.

/// Why bytes do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    /// The input ends inside a value.
    Truncated,
    /// A varint longer than 10 bytes, or whose 10th byte carries bits beyond 64.
    VarintTooLong,
}

/// Appends `v` as a varint: 7 bits a byte, least significant first, the high bit set on every
/// byte but the last (1 to 10 bytes).
/// The value of one base64 character, standard or URL-safe alphabet; `None` for any other
/// byte (padding included).
#[inline]
pub fn base64_sextet(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `b` with its length as a varint before it.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends an optional number: `None` as 0, `Some(v)` as `v + 1` (saturating: `u64::MAX`
/// reads back as `u64::MAX - 1`).
pub fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    put_varint(out, v.map_or(0, |v| v.saturating_add(1)));
}

/// Reads values from a byte slice front to back; every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Nothing left to read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let b = self.buf.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(b)
    }

    /// The next `N` bytes as an array (fixed-width fields).
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        self.take(N)?.try_into().map_err(|_| CodecError::Truncated)
    }

    pub fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            // The 10th byte holds bit 63 only: anything more would not fit 64 bits.
            if i == 9 && bits > 1 {
                return Err(CodecError::VarintTooLong);
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::VarintTooLong)
    }

    /// Bytes written by [`put_bytes`].
    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| CodecError::Truncated)?)
    }

    /// A number written by [`put_opt`].
    pub fn opt(&mut self) -> Result<Option<u64>, CodecError> {
        Ok(self.varint()?.checked_sub(1))
    }
}

#[cfg(test)]
mod tests;
