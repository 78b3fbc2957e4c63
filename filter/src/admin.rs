//! The filter's own endpoints under `admin.path`: health, the usage API and the dashboard.

/// The password of an HTTP Basic `Authorization` header (the browser's prompt puts the admin
/// key there; the user name is ignored).
pub fn basic_password(authorization: &str) -> Option<String> {
    let (scheme, rest) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(rest.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// Standard base64 with optional padding; `None` on any other byte.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in s.as_bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_password_of_basic_auth() {
        // "admin:s3cret"
        assert_eq!(
            basic_password("Basic YWRtaW46czNjcmV0"),
            Some("s3cret".into())
        );
        assert_eq!(basic_password("Bearer YWRtaW46czNjcmV0"), None);
        assert_eq!(basic_password("Basic !!"), None);
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
    }
}
