//! Password scrambles: the client proves it knows the password without sending it.
//!
//! `mysql_native_password`: `token = SHA1(password) XOR SHA1(salt ‖ SHA1(SHA1(password)))`.
//! The server stores only `SHA1(SHA1(password))` (the `*HEX` form of `PASSWORD()`).
//!
//! `caching_sha2_password` (fast path): `token = SHA256(password) XOR
//! SHA256(SHA256(SHA256(password)) ‖ salt)`; the server answers `0x01 0x03` (fast auth
//! success) before its OK.

use sha1::{Digest, Sha1};
use sha2::Sha256;

/// The name of the caching_sha2_password plugin on the wire.
pub const CACHING_SHA2_PLUGIN: &[u8] = b"caching_sha2_password";
/// AuthMoreData payload: the fast path succeeded (an OK follows).
pub const SHA2_FAST_AUTH_SUCCESS: [u8; 2] = [0x01, 0x03];
/// AuthMoreData payload: the server's cache has no entry; it wants the password itself (over
/// TLS) or RSA-encrypted.
pub const SHA2_PERFORM_FULL_AUTH: [u8; 2] = [0x01, 0x04];

/// `SHA256(SHA256(password))`: what a caching_sha2_password server keeps in its cache.
pub fn sha2_cache_digest(password: &[u8]) -> [u8; 32] {
    Sha256::digest(Sha256::digest(password)).into()
}

/// The client's caching_sha2_password fast-path response (empty for an empty password).
pub fn sha2_token(password: &[u8], salt: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha256::digest(password);
    let stage2 = Sha256::digest(stage1);
    let mut h = Sha256::new();
    h.update(stage2);
    h.update(salt);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// Checks a caching_sha2_password fast-path token against the password, without an early
/// exit on the first differing byte.
pub fn verify_sha2(password: &[u8], salt: &[u8], token: &[u8]) -> bool {
    if password.is_empty() {
        return token.is_empty();
    }
    token.len() == 32 && constant_time_eq(&sha2_token(password, salt), token)
}

/// The name of the plugin on the wire.
pub const NATIVE_PASSWORD_PLUGIN: &[u8] = b"mysql_native_password";

/// The client's auth response for `password` and the server's `salt`. An empty password gives
/// an empty response.
pub fn native_token(password: &[u8], salt: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    native_token_from_stage1(&Sha1::digest(password).into(), salt)
}

/// `SHA1(SHA1(password))`: what a server stores.
pub fn native_hash(password: &[u8]) -> [u8; 20] {
    Sha1::digest(Sha1::digest(password)).into()
}

/// Checks a client's token against the stored double hash (`None` = empty password), in time
/// that does not depend on where the bytes differ.
pub fn verify_native(stored: Option<&[u8; 20]>, salt: &[u8], token: &[u8]) -> bool {
    match stored {
        None => token.is_empty(),
        Some(stage2) => native_stage1(stage2, salt, token).is_some(),
    }
}

/// Checks a client's token against the stored double hash and, when it is right, returns
/// `SHA1(password)` — which the token carries, masked with `SHA1(salt + stored)`. That value
/// logs in to any server holding the same stored hash ([`native_token_from_stage1`]): it is
/// as secret as the password and is kept only in memory.
pub fn native_stage1(stage2: &[u8; 20], salt: &[u8], token: &[u8]) -> Option<[u8; 20]> {
    if token.len() != 20 {
        return None;
    }
    let mut h = Sha1::new();
    h.update(salt);
    h.update(stage2);
    let mix = h.finalize();
    let mut stage1 = [0u8; 20];
    for i in 0..20 {
        stage1[i] = token[i] ^ mix[i];
    }
    let candidate: [u8; 20] = Sha1::digest(stage1).into();
    constant_time_eq(&candidate, stage2).then_some(stage1)
}

/// The mysql_native_password token for a server's `salt`, from `SHA1(password)`.
pub fn native_token_from_stage1(stage1: &[u8; 20], salt: &[u8]) -> Vec<u8> {
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(salt);
    h.update(stage2);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// A stored value that is not a mysql_native_password hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAHash;

/// Parses a stored mysql_native_password hash (`*` and 40 hex digits, as in
/// `mysql.user.authentication_string`); `Ok(None)` for an empty one (no password).
pub fn parse_native_hash(s: &str) -> Result<Option<[u8; 20]>, NotAHash> {
    if s.is_empty() {
        return Ok(None);
    }
    let hex = s.strip_prefix('*').ok_or(NotAHash)?;
    if hex.len() != 40 {
        return Err(NotAHash);
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or(NotAHash)?;
        *o = u8::from_str_radix(pair, 16).map_err(|_| NotAHash)?;
    }
    Ok(Some(out))
}

/// Compares two byte strings without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_checked_against_the_stored_hash_yields_what_logs_in_elsewhere() {
        let pw = b"s3cret";
        // MariaDB's PASSWORD('s3cret').
        let stored = parse_native_hash("*B865CAE8F340F6CE1485A06F4492BB49718DF1EC")
            .unwrap()
            .unwrap();
        assert_eq!(stored, native_hash(pw));
        let salt = b"abcdefghij0123456789";
        let token = native_token(pw, salt);
        let stage1 = native_stage1(&stored, salt, &token).expect("right password");
        let other_salt = b"ZYXWVUTSRQ9876543210";
        assert_eq!(
            native_token_from_stage1(&stage1, other_salt),
            native_token(pw, other_salt)
        );
        assert!(native_stage1(&stored, salt, &native_token(b"wrong", salt)).is_none());
        assert!(native_stage1(&stored, salt, &token[..19]).is_none());
        assert_eq!(parse_native_hash(""), Ok(None));
        assert!(parse_native_hash("*58815970").is_err());
        assert!(parse_native_hash("58815970BE77B3720276F63DB198B1FA42E5CC02").is_err());
        assert!(parse_native_hash("*ZZ815970BE77B3720276F63DB198B1FA42E5CC02").is_err());
    }

    const KNOWN_SHA2: &str = "746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9";

    #[test]
    fn sha2_fast_path_known_answer_and_checks() {
        // Computed independently with Python's hashlib for password "secret" and salt 1..=20.
        let salt: Vec<u8> = (1..=20).collect();
        let t = sha2_token(b"secret", &salt);
        assert_eq!(t.len(), 32);
        assert!(verify_sha2(b"secret", &salt, &t));
        assert!(!verify_sha2(b"Secret", &salt, &t));
        assert!(!verify_sha2(b"secret", &salt, &t[..31]));
        assert!(verify_sha2(b"", &salt, &[]));
        assert!(!verify_sha2(b"", &salt, &t));
        assert_eq!(
            t.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            KNOWN_SHA2
        );
    }

    #[test]
    fn verifies_its_own_tokens() {
        let salt: Vec<u8> = (1..=20).collect();
        let t = native_token(b"secret", &salt);
        assert_eq!(t.len(), 20);
        let h = native_hash(b"secret");
        assert!(verify_native(Some(&h), &salt, &t));
        assert!(!verify_native(
            Some(&h),
            &salt,
            &native_token(b"Secret", &salt)
        ));
        assert!(!verify_native(Some(&h), &salt, &[]));
        assert!(verify_native(None, &salt, &[]));
        assert!(!verify_native(None, &salt, &t));
    }

    #[test]
    fn matches_password_function() {
        // SELECT PASSWORD('app') on MariaDB = *5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3
        let h = native_hash(b"app");
        let hex: String = h.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(hex, "5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3");
    }
}
