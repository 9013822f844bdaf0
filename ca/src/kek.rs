//! Encryption of private keys at rest with a key-encryption key (KEK).
//!
//! AES-256-GCM from aws-lc-rs (the workspace's one crypto provider). A sealed blob is
//! `"MKEK" | version(1) | nonce(12) | ciphertext | tag(16)`; the caller's `purpose` string is the
//! additional authenticated data, so a blob sealed as one thing cannot be opened as another.
//! Neither the KEK nor any plaintext implements `Debug` or `Display` that shows its bytes.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

const MAGIC: &[u8; 4] = b"MKEK";
const VERSION: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    #[error(
        "key-encryption key must be 32 bytes written as 64 hex characters \
         (got {0} characters); generate one with `openssl rand -hex 32`"
    )]
    BadEncoding(usize),
    #[error("sealed key is not in the meshd format (bad header or too short)")]
    NotSealed,
    #[error("sealed key has format version {0}, this build reads version 1")]
    UnknownVersion(u8),
    #[error(
        "sealed key could not be opened: the key-encryption key is not the one it was sealed \
         with, or the data was altered"
    )]
    OpenFailed,
    #[error("the system random number generator failed")]
    Random,
}

/// A 256-bit key-encryption key. Zeroed on drop; its `Debug` shows only a fingerprint.
#[derive(Clone)]
pub struct KeyEncryptionKey {
    bytes: Zeroizing<[u8; 32]>,
}

// === impl KeyEncryptionKey ===

impl KeyEncryptionKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, KekError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| KekError::Random)?;
        Ok(Self { bytes })
    }

    /// Parses the text form: 64 hex characters, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self, KekError> {
        let text = text.trim();
        let mut bytes = Zeroizing::new([0u8; 32]);
        if text.len() != 64 || !text.is_ascii() {
            return Err(KekError::BadEncoding(text.chars().count()));
        }
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(KekError::BadEncoding(text.len()))?;
            let lo = hex_val(pair[1]).ok_or(KekError::BadEncoding(text.len()))?;
            bytes[i] = (hi << 4) | lo;
        }
        Ok(Self { bytes })
    }

    /// The text form, for writing a newly generated key to its file. Handle with care.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(crate::hex(self.bytes.as_ref()))
    }

    /// A short public fingerprint of the key, to tell keys apart in logs without showing them.
    pub fn fingerprint(&self) -> String {
        let mut input = b"meshd-kek-fingerprint:".to_vec();
        input.extend_from_slice(self.bytes.as_ref());
        let digest = crate::sha256(&input);
        input.zeroize();
        crate::hex(&digest[..8])
    }

    fn aead(&self) -> LessSafeKey {
        // A 32-byte key is always accepted by AES-256-GCM.
        let unbound = UnboundKey::new(&AES_256_GCM, self.bytes.as_ref())
            .unwrap_or_else(|_| unreachable!("32-byte AES-256 key"));
        LessSafeKey::new(unbound)
    }

    /// Encrypts `plaintext`, bound to `purpose` (e.g. `"meshd/ca-signing-key"`).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, KekError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KekError::Random)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        let sealed = self.aead().seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.as_bytes()),
            &mut body,
        );
        if sealed.is_err() {
            body.zeroize();
            return Err(KekError::Random);
        }
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts a blob made by [`seal`](Self::seal) with the same key and purpose.
    pub fn open(&self, purpose: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        if blob.len() < HEADER_LEN + TAG_LEN || &blob[..MAGIC.len()] != MAGIC {
            return Err(KekError::NotSealed);
        }
        let version = blob[MAGIC.len()];
        if version != VERSION {
            return Err(KekError::UnknownVersion(version));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blob[MAGIC.len() + 1..HEADER_LEN]);
        let mut body = Zeroizing::new(blob[HEADER_LEN..].to_vec());
        let len = self
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                body.as_mut_slice(),
            )
            .map_err(|_| KekError::OpenFailed)?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

impl fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyEncryptionKey(fingerprint {})", self.fingerprint())
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_hides_the_plaintext() {
        let kek = KeyEncryptionKey::generate().unwrap();
        let secret = b"-----BEGIN PRIVATE KEY----- not really";
        let blob = kek.seal("test/purpose", secret).unwrap();
        assert!(!blob.windows(secret.len()).any(|w| w == secret));
        assert!(!blob.windows(11).any(|w| w == b"PRIVATE KEY"));
        assert_eq!(kek.open("test/purpose", &blob).unwrap().as_slice(), secret);
        // Two seals of the same plaintext differ (fresh nonce).
        assert_ne!(blob, kek.seal("test/purpose", secret).unwrap());
    }

    #[test]
    fn wrong_key_wrong_purpose_or_tampering_is_refused() {
        let kek = KeyEncryptionKey::generate().unwrap();
        let other = KeyEncryptionKey::generate().unwrap();
        let blob = kek.seal("a", b"secret").unwrap();
        assert_eq!(other.open("a", &blob).unwrap_err(), KekError::OpenFailed);
        assert_eq!(kek.open("b", &blob).unwrap_err(), KekError::OpenFailed);
        let mut flipped = blob.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(kek.open("a", &flipped).unwrap_err(), KekError::OpenFailed);
        assert_eq!(kek.open("a", b"short").unwrap_err(), KekError::NotSealed);
        let mut v2 = blob;
        v2[4] = 2;
        assert_eq!(kek.open("a", &v2).unwrap_err(), KekError::UnknownVersion(2));
    }

    #[test]
    fn hex_form_round_trips_and_bad_text_is_named() {
        let kek = KeyEncryptionKey::generate().unwrap();
        let again = KeyEncryptionKey::from_hex(&format!("  {}\n", kek.to_hex().as_str())).unwrap();
        assert_eq!(kek.fingerprint(), again.fingerprint());
        let blob = kek.seal("p", b"x").unwrap();
        assert_eq!(again.open("p", &blob).unwrap().as_slice(), b"x");
        assert_eq!(
            KeyEncryptionKey::from_hex("abcd").unwrap_err(),
            KekError::BadEncoding(4)
        );
        assert!(KeyEncryptionKey::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let kek = KeyEncryptionKey::from_hex(&"ab".repeat(32)).unwrap();
        let shown = format!("{kek:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains(&kek.fingerprint()));
    }
}
