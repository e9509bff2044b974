//! Tokens and pairing codes: generated here, shown once, stored only as SHA-256 hashes.
//!
//! Backends share these rules so a token or code means the same thing whatever the store.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

/// Every token starts with this, so a leaked one is easy to recognise (and to scan for).
pub const TOKEN_PREFIX: &str = "fy_";

/// Pairing-code letters: upper-case letters and digits without the look-alikes 0/O, 1/I/L.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Characters in a pairing code (about 40 bits of entropy; codes also expire and are one-time).
const CODE_LEN: usize = 8;

/// A new random token: `fy_` and base64url of 32 random bytes.
pub fn new_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A new human-typable pairing code, grouped for reading: `ABCD-EFGH`.
pub fn new_pairing_code() -> String {
    let mut rng = rand::rng();
    let mut code = String::with_capacity(CODE_LEN + 1);
    for i in 0..CODE_LEN {
        if i == CODE_LEN / 2 {
            code.push('-');
        }
        code.push(char::from(
            CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())],
        ));
    }
    code
}

/// The form a pairing code is hashed in: people type codes in lower case, with or without the
/// dash or spaces, and all of those must match.
pub fn normalize_pairing_code(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Lower-case hex SHA-256, the only form in which tokens and codes are stored.
pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        use std::fmt::Write;
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A new device id: `dev_` and 16 random hex digits.
pub fn new_device_id() -> String {
    let mut bytes = [0_u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let mut id = String::from("dev_");
    for byte in bytes {
        use std::fmt::Write;
        let _ = write!(id, "{byte:02x}");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_url_safe() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 3 + 43, "{a}");
        assert!(
            a[3..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn pairing_codes_are_grouped_unambiguous_and_normalize_when_typed_loosely() {
        let code = new_pairing_code();
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert!(!code.contains(['0', 'O', '1', 'I', 'L']));
        let typed = format!(" {} ", code.to_lowercase().replace('-', " "));
        assert_eq!(normalize_pairing_code(&typed), code.replace('-', ""));
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn device_ids_are_prefixed_hex() {
        let id = new_device_id();
        assert!(id.starts_with("dev_") && id.len() == 20);
        assert!(id[4..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
