//! AWS Signature Version 4 for S3 requests. The plugin builds the canonical request and the
//! string to sign; the host computes the signature from the secret access key
//! (`secrets.sigv4-signature`), so no key, secret or derived, is ever in the sandbox.

use std::time::{SystemTime, UNIX_EPOCH};

use deploy_agent_sdk::{PluginError, SecretRef};
use sha2::{Digest, Sha256};

/// Who signs: the access key id (public), the secret by reference, the region.
pub struct Signer {
    pub access_key_id: String,
    pub secret: SecretRef,
    pub region: String,
}

/// URI-encodes like SigV4 wants: unreserved characters as is, everything else `%XX`;
/// `/` kept when `keep_slash` (object keys in a path).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The payload hash for `x-amz-content-sha256`, computed by the host: SHA-256 in
/// WebAssembly was most of an upload's time (42.7 MiB/s against 154 MiB/s without it).
pub fn payload_hash(body: &[u8]) -> String {
    hex::encode(deploy_agent_sdk::digest::sha256(body))
}

/// `yyyymmddThhmmssZ` for a Unix time.
pub fn amz_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 for a civil date (Howard Hinnant's days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch for S3's `2026-11-21T10:00:00.000Z`.
pub fn parse_iso8601_ms(t: &str) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    let secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let millis = t
        .get(19..)
        .and_then(|f| f.strip_prefix('.'))
        .and_then(|f| f.get(..3))
        .and_then(|f| f.parse::<i64>().ok())
        .unwrap_or(0);
    u64::try_from(secs * 1000 + millis).ok()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Signer {
    /// Signs a request: adds `x-amz-date`, `x-amz-content-sha256` and `authorization` to
    /// `headers`. `path` is the canonical URI (already encoded); `query` is raw pairs.
    pub fn sign(
        &self,
        method: &str,
        host: &str,
        path: &str,
        query: &[(String, String)],
        headers: &mut Vec<(String, String)>,
        payload_hash: &str,
    ) -> Result<(), PluginError> {
        let stamp = amz_date(now());
        let date = &stamp[..8];
        headers.push(("x-amz-date".into(), stamp.clone()));
        headers.push(("x-amz-content-sha256".into(), payload_hash.into()));
        let (string_to_sign, signed) = string_to_sign(
            method,
            host,
            path,
            query,
            headers,
            payload_hash,
            &stamp,
            &self.region,
        );
        let signature = self
            .secret
            .sigv4_signature(date, &self.region, "s3", &string_to_sign)?;
        headers.push((
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{date}/{}/s3/aws4_request, SignedHeaders={signed}, Signature={signature}",
                self.access_key_id, self.region
            ),
        ));
        Ok(())
    }
}

/// The string to sign and the signed-headers list: `host` and every `x-amz-*` header.
#[allow(clippy::too_many_arguments)]
fn string_to_sign(
    method: &str,
    host: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    payload_hash: &str,
    stamp: &str,
    region: &str,
) -> (String, String) {
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    q.sort();
    let canonical_query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-amz-"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    signed.push(("host".into(), host.into()));
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_names = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_names}\n{payload_hash}"
    );
    let scope = format!("{}/{region}/s3/aws4_request", &stamp[..8]);
    (
        format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        ),
        signed_names,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_encoding() {
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(uri_encode("a b/c~d.e", true), "a%20b/c~d.e");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(
            parse_iso8601_ms("2015-08-30T12:36:00.250Z"),
            Some(1_440_938_160_250)
        );
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_iso8601_ms("garbage"), None);
    }
}
