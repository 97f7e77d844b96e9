//! caching_sha2_password's RSA exchange, for a full authentication on a link without TLS.
//!
//! MySQL's client obfuscates `password + NUL` with the login's scramble (XOR, the scramble
//! repeated) and encrypts it with the server's RSA public key (OAEP padding with SHA-1,
//! `RSA_PKCS1_OAEP_PADDING`); the server decrypts it with its private key. A client without the
//! key asks for it by sending one byte, 2, and gets it as `0x01` followed by the PEM text.
//!
//! Sluice does both halves: towards a server that asks for a full authentication on a
//! plaintext link (it requests the server's key, as `get_server_public_key` does), and towards
//! clients when `[proxy] rsa_private_key` is set (it then behaves as MySQL does for a user not
//! yet in its cache).
//!
//! Asking the server for its key over plaintext trusts the link (a man in the middle could
//! answer with its own key); that is MySQL's own caveat, and the reason `[backend_tls]` is the
//! better answer.

use std::path::Path;

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};

/// The byte a client sends to ask for the server's public key.
pub const REQUEST_PUBLIC_KEY: u8 = 0x02;

/// XOR with the scramble repeated (its own inverse).
fn xor_scramble(buf: &mut [u8], scramble: &[u8]) {
    if !scramble.is_empty() {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= scramble[i % scramble.len()];
        }
    }
}

/// `password + NUL`, XOR the scramble repeated.
fn obfuscate(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    let mut buf = password.to_vec();
    buf.push(0);
    xor_scramble(&mut buf, scramble);
    buf
}

/// Encrypts `password` for a server whose public key (PEM: `PUBLIC KEY` or `RSA PUBLIC KEY`)
/// it sent, with the login's scramble.
pub fn encrypt_password(
    public_pem: &[u8],
    password: &[u8],
    scramble: &[u8],
) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(public_pem)
        .map_err(|_| "the server's public key is not PEM text".to_string())?;
    let text = text.trim_end_matches('\0').trim();
    let key = RsaPublicKey::from_public_key_pem(text)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(text))
        .map_err(|e| format!("the server's public key cannot be read: {e}"))?;
    key.encrypt(
        &mut rand::rngs::OsRng,
        Oaep::new::<sha1::Sha1>(),
        &obfuscate(password, scramble),
    )
    .map_err(|e| format!("RSA encryption failed (password too long for the key?): {e}"))
}

/// Sluice's own key pair for clients (`[proxy] rsa_private_key`).
pub struct ServerKey {
    private: RsaPrivateKey,
    /// The public key as sent to clients (`-----BEGIN PUBLIC KEY-----`, as MySQL sends it).
    pub public_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl ServerKey {
    /// Reads a PEM private key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
    pub fn load(path: &Path) -> Result<ServerKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let private = RsaPrivateKey::from_pkcs8_pem(&text)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&text))
            .map_err(|e| format!("{} is not a PEM RSA private key: {e}", path.display()))?;
        let public_pem = RsaPublicKey::from(&private)
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .into_bytes();
        Ok(ServerKey {
            private,
            public_pem,
        })
    }

    /// The password a client encrypted with this key and the login's scramble; `None` when the
    /// blob does not decrypt.
    pub fn decrypt_password(&self, blob: &[u8], scramble: &[u8]) -> Option<Vec<u8>> {
        let plain = self.private.decrypt(Oaep::new::<sha1::Sha1>(), blob).ok()?;
        let mut clear = plain;
        xor_scramble(&mut clear, scramble);
        if clear.last() != Some(&0) {
            return None;
        }
        clear.pop();
        Some(clear)
    }

    /// The key's size in bytes (an encrypted password has exactly this length).
    pub fn size(&self) -> usize {
        use rsa::traits::PublicKeyParts;
        self.private.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (tempfile::TempDir, ServerKey) {
        // A 1024-bit key keeps the debug-build test fast; Sluice accepts any size.
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        use rsa::pkcs8::EncodePrivateKey;
        std::fs::write(
            &path,
            private.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        let k = ServerKey::load(&path).unwrap();
        (dir, k)
    }

    #[test]
    fn a_password_encrypted_with_the_public_key_comes_back() {
        let (_dir, k) = key();
        let scramble = b"0123456789abcdefghij";
        let blob = encrypt_password(&k.public_pem, b"s3cret-password", scramble).unwrap();
        assert_eq!(blob.len(), k.size());
        assert_eq!(
            k.decrypt_password(&blob, scramble).as_deref(),
            Some(&b"s3cret-password"[..])
        );
        // Another login's scramble does not give the password back.
        assert_ne!(
            k.decrypt_password(&blob, b"jihgfedcba9876543210")
                .as_deref(),
            Some(&b"s3cret-password"[..])
        );
        // Garbage does not decrypt.
        assert_eq!(k.decrypt_password(&[7u8; 128], scramble), None);
        assert_eq!(k.decrypt_password(b"short", scramble), None);
    }

    #[test]
    fn keys_are_read_in_both_pem_forms() {
        let (_dir, k) = key();
        let text = std::str::from_utf8(&k.public_pem).unwrap();
        assert!(text.starts_with("-----BEGIN PUBLIC KEY-----"));
        let pk = RsaPublicKey::from_public_key_pem(text).unwrap();
        use rsa::pkcs1::EncodeRsaPublicKey;
        let pkcs1 = pk.to_pkcs1_pem(LineEnding::LF).unwrap();
        let blob = encrypt_password(pkcs1.as_bytes(), b"pw", b"salt").unwrap();
        assert_eq!(
            k.decrypt_password(&blob, b"salt").as_deref(),
            Some(&b"pw"[..])
        );
        // A NUL-terminated PEM (as some servers send it) is read too.
        let mut nul = k.public_pem.clone();
        nul.push(0);
        assert!(encrypt_password(&nul, b"pw", b"salt").is_ok());
        assert!(encrypt_password(b"not a key", b"pw", b"salt").is_err());
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "garbage").unwrap();
        assert!(ServerKey::load(&bad).unwrap_err().contains("bad.pem"));
    }
}
