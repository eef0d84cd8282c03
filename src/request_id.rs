//! Request ids (`X-Request-Id`): the client's own when it sends a well-formed one (so a
//! request can be followed through several proxies), else a new random one. Passed upstream,
//! returned to the client, written in the access log and kept with failed canary requests.

use http::HeaderName;

/// The header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id taken from a client.
pub const MAX_LEN: usize = 128;

/// Whether a client's id can be kept: 1 to [`MAX_LEN`] bytes of letters, digits and
/// `-_.:+/=@` (what UUIDs, ULIDs, base64 and trace ids use; nothing that could break a log
/// line or a header).
pub fn well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b))
}

/// A new id: 32 lowercase hex digits (128 random bits).
pub fn generate() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The id of a request whose header says `given`.
pub fn of(given: Option<&[u8]>) -> String {
    match given {
        Some(id) if well_formed(id) => String::from_utf8_lossy(id).into_owned(),
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_ids_are_kept_and_others_replaced() {
        assert_eq!(of(Some(b"abc-123")), "abc-123");
        for bad in [&b""[..], b"a b", b"a\"b", b"\xff", &[b'a'; 129]] {
            let id = of(Some(bad));
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(well_formed(id.as_bytes()));
        }
        assert_ne!(generate(), generate());
    }
}
