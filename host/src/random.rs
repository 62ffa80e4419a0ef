//! Random identifiers from the OS's generator.

/// `bytes` random bytes, hex-encoded (ids, nonces in names, API tokens).
pub(crate) fn hex(bytes: usize) -> String {
    let mut r = vec![0u8; bytes];
    chacha20poly1305::aead::rand_core::RngCore::fill_bytes(
        &mut chacha20poly1305::aead::OsRng,
        &mut r,
    );
    hex::encode(r)
}
