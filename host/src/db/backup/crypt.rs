//! Authenticated encryption of a backup stream: XChaCha20-Poly1305 in the STREAM
//! construction (as `age` uses), 1 MiB chunks, each authenticated, the last one flagged so a
//! truncated file fails to decrypt rather than yielding a shorter plausible dump.
//!
//! Layout: `DAGBAK2\n`, the key id (8 bytes: sha256 of the key, truncated), a 19-byte random
//! nonce prefix, then frames of (u32 big-endian ciphertext length, 1 flag byte, ciphertext).
//!
//! Every chunk is bound to the backup's identity (its id and environment) as associated data,
//! so a file moved under another backup's name fails authentication even when its manifest
//! is edited to match. `DAGBAK1` files (written before that binding) still decrypt.

use std::io::{self, Read, Write};

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, OsRng, Payload};
use sha2::{Digest, Sha256};

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const MAGIC: &[u8; 8] = b"DAGBAK2\n";
const MAGIC_UNBOUND: &[u8; 8] = b"DAGBAK1\n";

/// What an encrypted stream is bound to: the backup it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The backup's id.
    pub id: String,
    /// Its environment.
    pub environment: String,
}

impl Identity {
    fn aad(&self) -> Vec<u8> {
        format!("deploy-agent backup\0{}\0{}", self.id, self.environment).into_bytes()
    }
}

/// A 256-bit backup key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

impl Key {
    /// Parses 64 hex characters or standard base64 of 32 bytes (surrounding space ignored).
    pub fn parse(text: &str) -> Result<Key, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            base64_decode(text).ok_or("the backup key is neither 64 hex characters nor base64")?
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("the backup key must be 32 bytes, not {}", b.len()))?;
        Ok(Key(key))
    }

    /// A public identifier: the first 8 bytes of its sha256, hex.
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn crypto_err(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Encrypts everything written to it into `inner`. Call [`EncryptWriter::finish`].
pub struct EncryptWriter<W: Write> {
    inner: W,
    enc: Option<EncryptorBE32<XChaCha20Poly1305>>,
    buf: Vec<u8>,
    aad: Vec<u8>,
}

impl<W: Write> EncryptWriter<W> {
    /// Writes the header and starts a stream bound to `identity`.
    pub fn new(mut inner: W, key: &Key, identity: &Identity) -> io::Result<Self> {
        let mut prefix = [0u8; 19];
        OsRng.fill_bytes(&mut prefix);
        inner.write_all(MAGIC)?;
        inner.write_all(&Sha256::digest(key.0)[..8])?;
        inner.write_all(&prefix)?;
        let aead = XChaCha20Poly1305::new((&key.0).into());
        Ok(EncryptWriter {
            inner,
            enc: Some(EncryptorBE32::from_aead(aead, (&prefix).into())),
            buf: Vec::with_capacity(CHUNK),
            aad: identity.aad(),
        })
    }

    fn frame(&mut self, last: bool) -> io::Result<()> {
        let payload = Payload {
            msg: self.buf.as_slice(),
            aad: &self.aad,
        };
        let ciphertext = if last {
            let enc = self
                .enc
                .take()
                .ok_or_else(|| crypto_err("stream already finished"))?;
            enc.encrypt_last(payload)
                .map_err(|_| crypto_err("encryption failed"))?
        } else {
            let enc = self
                .enc
                .as_mut()
                .ok_or_else(|| crypto_err("stream already finished"))?;
            enc.encrypt_next(payload)
                .map_err(|_| crypto_err("encryption failed"))?
        };
        self.inner
            .write_all(&(ciphertext.len() as u32).to_be_bytes())?;
        self.inner.write_all(&[u8::from(last)])?;
        self.inner.write_all(&ciphertext)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes the last chunk and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.frame(true)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == CHUNK {
            self.frame(false)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts a stream written by [`EncryptWriter`]; any tampering, truncation or wrong key is
/// an `InvalidData` error, never wrong bytes.
pub struct DecryptReader<R: Read> {
    inner: R,
    dec: Option<DecryptorBE32<XChaCha20Poly1305>>,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
    aad: Vec<u8>,
    identity: Identity,
}

impl<R: Read> DecryptReader<R> {
    /// Reads and checks the header of a stream that must belong to `identity`.
    pub fn new(mut inner: R, key: &Key, identity: &Identity) -> io::Result<Self> {
        let mut header = [0u8; 8 + 8 + 19];
        inner
            .read_exact(&mut header)
            .map_err(|_| crypto_err("not an encrypted backup (header too short)"))?;
        let aad = match &header[..8] {
            m if m == MAGIC => identity.aad(),
            m if m == MAGIC_UNBOUND => Vec::new(),
            _ => return Err(crypto_err("not an encrypted backup (bad magic)")),
        };
        if header[8..16] != Sha256::digest(key.0)[..8] {
            return Err(crypto_err(&format!(
                "wrong backup key: the file was encrypted with key {}, the configured key is {}",
                hex::encode(&header[8..16]),
                key.id()
            )));
        }
        let prefix: [u8; 19] = header[16..]
            .try_into()
            .map_err(|_| crypto_err("bad header"))?;
        let aead = XChaCha20Poly1305::new((&key.0).into());
        Ok(DecryptReader {
            inner,
            dec: Some(DecryptorBE32::from_aead(aead, (&prefix).into())),
            plain: Vec::new(),
            pos: 0,
            done: false,
            aad,
            identity: identity.clone(),
        })
    }

    fn next_frame(&mut self) -> io::Result<()> {
        let mut head = [0u8; 5];
        self.inner
            .read_exact(&mut head)
            .map_err(|_| crypto_err("the backup is truncated (its final chunk is missing)"))?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > CHUNK + 16 {
            return Err(crypto_err("the backup is corrupt (chunk too large)"));
        }
        let mut ciphertext = vec![0u8; len];
        self.inner
            .read_exact(&mut ciphertext)
            .map_err(|_| crypto_err("the backup is truncated mid-chunk"))?;
        let who = &self.identity;
        let tampered = || {
            crypto_err(&format!(
                "the backup failed authentication: it was modified, truncated, encrypted with another key, or it is not backup {} of `{}` (a file moved under its name)",
                who.id, who.environment
            ))
        };
        let payload = Payload {
            msg: ciphertext.as_slice(),
            aad: &self.aad,
        };
        self.plain = if head[4] == 1 {
            self.done = true;
            let dec = self.dec.take().ok_or_else(tampered)?;
            dec.decrypt_last(payload).map_err(|_| tampered())?
        } else {
            let dec = self.dec.as_mut().ok_or_else(tampered)?;
            dec.decrypt_next(payload).map_err(|_| tampered())?
        };
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_frame()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: &str) -> Identity {
        Identity {
            id: id.into(),
            environment: "production".into(),
        }
    }

    fn roundtrip(data: &[u8], key: &Key) -> Vec<u8> {
        let mut w = EncryptWriter::new(Vec::new(), key, &who("a")).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_and_detects_tampering_truncation_and_wrong_keys() {
        let key = Key::parse(&"11".repeat(32)).unwrap();
        let data: Vec<u8> = (0..(CHUNK * 2 + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let sealed = roundtrip(&data, &key);
        let mut out = Vec::new();
        DecryptReader::new(sealed.as_slice(), &key, &who("a"))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);

        let mut tampered = sealed.clone();
        let i = tampered.len() / 2;
        tampered[i] ^= 1;
        let mut sink = Vec::new();
        let e = DecryptReader::new(tampered.as_slice(), &key, &who("a"))
            .unwrap()
            .read_to_end(&mut sink)
            .unwrap_err();
        assert!(e.to_string().contains("failed authentication"), "{e}");

        // Cut after the first full frame: a valid-looking prefix, but not the last chunk.
        let first_frame_end = 35 + 5 + CHUNK + 16;
        let mut sink = Vec::new();
        let e = DecryptReader::new(&sealed[..first_frame_end], &key, &who("a"))
            .unwrap()
            .read_to_end(&mut sink)
            .unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");

        let other = Key::parse(&"22".repeat(32)).unwrap();
        let e = DecryptReader::new(sealed.as_slice(), &other, &who("a"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("wrong backup key"), "{e}");
    }

    #[test]
    fn a_stream_read_as_another_backup_fails_authentication() {
        let key = Key::parse(&"11".repeat(32)).unwrap();
        let sealed = roundtrip(b"backup a's dump", &key);
        let mut sink = Vec::new();
        let e = DecryptReader::new(sealed.as_slice(), &key, &who("b"))
            .unwrap()
            .read_to_end(&mut sink)
            .unwrap_err();
        assert!(
            e.to_string().contains("not backup b of `production`"),
            "{e}"
        );
        let other_env = Identity {
            id: "a".into(),
            environment: "staging".into(),
        };
        let e = DecryptReader::new(sealed.as_slice(), &key, &other_env)
            .unwrap()
            .read_to_end(&mut sink)
            .unwrap_err();
        assert!(e.to_string().contains("failed authentication"), "{e}");
        assert!(sink.is_empty(), "no plaintext before authentication");
    }

    #[test]
    fn keys_parse_from_hex_or_base64_and_never_print() {
        let hex_key = Key::parse(&"ab".repeat(32)).unwrap();
        let b64 = Key::parse("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=").unwrap();
        assert_eq!(hex_key.id(), b64.id());
        assert!(!format!("{hex_key:?}").contains("abab"));
        assert!(Key::parse("short").is_err());
    }
}
