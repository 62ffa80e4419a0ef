//! Signatures made with a secret on a plugin's behalf. Each operation is bound to a purpose:
//! the host builds or checks the signed message itself and returns only the final signature,
//! never a value usable as a key.
//!
//! - SigV4: the secret must be granted for the service and region, and the string to sign
//!   must be one (its request time within 15 minutes of the host clock, its scope matching).
//!   The plugin gets the signature of one request, valid for that request's scope and time.
//! - Webhooks: the host builds the scheme's message from the payload (`v0:{ts}:{body}` for
//!   Slack), so the output is that scheme's signature header value.
//! - The generic `hmac-sha256` import is withdrawn: with a caller-chosen key prefix it
//!   computed SigV4's `kDate`, a key that signs for every service and region for a day.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::policy::PolicyViolation;
use super::secrets::Secret;

/// How far a SigV4 request time may be from the host clock (AWS itself allows 15 minutes).
const SIGV4_SKEW_SECS: i64 = 15 * 60;
/// How far a Slack signature's timestamp may be (Slack rejects older than five minutes).
const SLACK_SKEW_SECS: i64 = 5 * 60;

/// A webhook signature scheme (the WIT's `webhook-scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WebhookScheme {
    /// `sha256=` + hex HMAC of the payload.
    HubSha256,
    /// `v0=` + hex HMAC of `v0:{timestamp}:{payload}`.
    SlackV0,
}

/// The refusal for a call of the withdrawn `hmac-sha256` import.
pub(crate) fn hmac_withdrawn(secret: &str) -> PolicyViolation {
    refused(
        secret,
        "`hmac-sha256` is withdrawn: its result could be a derived key (SigV4's kDate); use `webhook-signature` or `sigv4-signature`",
    )
}

/// A webhook signature of `payload` with `secret`, as `scheme` defines it.
pub(crate) fn webhook_signature(
    name: &str,
    secret: &Secret,
    scheme: WebhookScheme,
    timestamp: u64,
    payload: &[u8],
    now: SystemTime,
) -> Result<String, PolicyViolation> {
    if secret.sigv4.is_some() {
        return Err(refused(
            name,
            "it is granted for SigV4 signing only (`sigv4` in agent.toml)",
        ));
    }
    let key = secret.value.expose().as_bytes();
    Ok(match scheme {
        WebhookScheme::HubSha256 => format!("sha256={}", hex::encode(hmac(key, &[payload]))),
        WebhookScheme::SlackV0 => {
            let skew = i64::try_from(timestamp).unwrap_or(i64::MAX) - unix(now);
            if skew.abs() > SLACK_SKEW_SECS {
                return Err(refused(
                    name,
                    format!(
                        "the Slack timestamp {timestamp} is {skew} s from the host's clock (at most {SLACK_SKEW_SECS} s)"
                    ),
                ));
            }
            let base = format!("v0:{timestamp}:");
            format!("v0={}", hex::encode(hmac(key, &[base.as_bytes(), payload])))
        }
    })
}

/// An AWS SigV4 signature (lowercase hex) of `string_to_sign`, if `secret` is granted for
/// `service` in `region` and `string_to_sign` is a SigV4 string to sign for that scope and
/// for a time within 15 minutes of `now`.
pub(crate) fn sigv4_signature(
    name: &str,
    secret: &Secret,
    date: &str,
    region: &str,
    service: &str,
    string_to_sign: &str,
    now: SystemTime,
) -> Result<String, PolicyViolation> {
    let Some(scope) = &secret.sigv4 else {
        return Err(refused(
            name,
            "it is not granted for SigV4; add `sigv4 = { services = [\"SERVICE\"], regions = [\"REGION\"] }` to the secret in agent.toml",
        ));
    };
    granted(name, "service", service, &scope.services)?;
    granted(name, "region", region, &scope.regions)?;
    check_string_to_sign(string_to_sign, date, region, service, now)
        .map_err(|r| refused(name, r))?;
    let key = secret.value.expose();
    let k_date = hmac(format!("AWS4{key}").as_bytes(), &[date.as_bytes()]);
    let k_region = hmac(&k_date, &[region.as_bytes()]);
    let k_service = hmac(&k_region, &[service.as_bytes()]);
    let k_signing = hmac(&k_service, &[b"aws4_request"]);
    Ok(hex::encode(hmac(&k_signing, &[string_to_sign.as_bytes()])))
}

/// A refusal unless `value` (a `what`: service, region) is one of `allowed`.
fn granted(name: &str, what: &str, value: &str, allowed: &[String]) -> Result<(), PolicyViolation> {
    if allowed.iter().any(|a| a == value) {
        return Ok(());
    }
    Err(refused(
        name,
        format!(
            "{what} `{value}` is not one it is granted for ({})",
            allowed.join(", ")
        ),
    ))
}

/// `AWS4-HMAC-SHA256`, the request time, the scope, the canonical request's hash.
fn check_string_to_sign(
    sts: &str,
    date: &str,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), String> {
    let lines: Vec<&str> = sts.split('\n').collect();
    let [algorithm, stamp, scope, hash] = lines[..] else {
        return Err("not a SigV4 string to sign (four lines)".into());
    };
    if algorithm != "AWS4-HMAC-SHA256" {
        return Err(format!("unknown algorithm `{algorithm}`"));
    }
    let time =
        crate::time::parse_compact(stamp).ok_or_else(|| format!("bad request time `{stamp}`"))?;
    let skew = time - unix(now);
    if skew.abs() > SIGV4_SKEW_SECS {
        return Err(format!(
            "the request time {stamp} is {skew} s from the host's clock (at most {SIGV4_SKEW_SECS} s)"
        ));
    }
    if !stamp.starts_with(date) || date.len() != 8 {
        return Err(format!("the date `{date}` is not the request time's"));
    }
    let expected = format!("{date}/{region}/{service}/aws4_request");
    if scope != expected {
        return Err(format!("the scope `{scope}` is not `{expected}`"));
    }
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("the canonical request hash is not 64 lowercase hex digits".into());
    }
    Ok(())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

// HMAC takes a key of any length: `new_from_slice` cannot fail for it.
#[allow(clippy::expect_used)]
fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn refused(secret: &str, reason: impl Into<String>) -> PolicyViolation {
    PolicyViolation::SigningRefused {
        secret: secret.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::secrets::{SecretValue, Sigv4Scope};

    fn aws() -> Secret {
        let mut s = Secret::new(
            SecretValue::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            vec![],
        );
        s.sigv4 = Some(Sigv4Scope {
            services: vec!["service".into()],
            regions: vec!["us-east-1".into()],
        });
        s
    }

    const STS: &str = "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63";

    fn at(stamp: &str) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(crate::time::parse_compact(stamp).unwrap() as u64)
    }

    /// The AWS SigV4 test suite's `get-vanilla` case (secret, scope and string to sign from
    /// the suite; the signature is the suite's expected one).
    #[test]
    fn sigv4_matches_the_aws_test_suite() {
        let now = at("20150830T124000Z");
        assert_eq!(
            sigv4_signature("aws", &aws(), "20150830", "us-east-1", "service", STS, now).unwrap(),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn sigv4_refuses_other_scopes_times_and_messages() {
        let now = at("20150830T123600Z");
        let sign = |secret: &Secret, date: &str, region: &str, service: &str, sts: &str, now| {
            sigv4_signature("aws", secret, date, region, service, sts, now)
                .unwrap_err()
                .to_string()
        };
        let other_service = STS.replace("/service/", "/iam/");
        assert!(
            sign(&aws(), "20150830", "us-east-1", "iam", &other_service, now)
                .contains("service `iam`")
        );
        let other_region = STS.replace("us-east-1", "eu-west-1");
        assert!(
            sign(
                &aws(),
                "20150830",
                "eu-west-1",
                "service",
                &other_region,
                now
            )
            .contains("region `eu-west-1`")
        );
        // A day's key, asked for as the string to sign of a signature: refused.
        assert!(
            sign(&aws(), "20150830", "us-east-1", "service", "20150830", now)
                .contains("four lines")
        );
        // 16 minutes off the clock, either way.
        for later in ["20150830T125200Z", "20150830T122000Z"] {
            let sts = STS.replace("20150830T123600Z", later);
            assert!(
                sign(&aws(), "20150830", "us-east-1", "service", &sts, now)
                    .contains("from the host's clock")
            );
        }
        // A scope that does not match the arguments.
        assert!(
            sign(
                &aws(),
                "20150830",
                "us-east-1",
                "service",
                &STS.replace("/service/", "/servicf/"),
                now
            )
            .contains("scope")
        );
        let mut plain = aws();
        plain.sigv4 = None;
        assert!(
            sign(&plain, "20150830", "us-east-1", "service", STS, now)
                .contains("not granted for SigV4")
        );
    }

    #[test]
    fn webhook_signatures_follow_their_schemes() {
        let secret = Secret::new(
            SecretValue::new("8f742231b10e8888abcd99yyyzzz85a5".into()),
            vec![],
        );
        // Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let now = UNIX_EPOCH + Duration::from_secs(1_531_420_618);
        assert_eq!(
            webhook_signature(
                "s",
                &secret,
                WebhookScheme::SlackV0,
                1_531_420_618,
                body,
                now
            )
            .unwrap(),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
        let stale = webhook_signature(
            "s",
            &secret,
            WebhookScheme::SlackV0,
            1_531_420_000,
            body,
            now,
        );
        assert!(stale.unwrap_err().to_string().contains("host's clock"));
        // GitHub's documented example (docs.github.com, validating webhook deliveries).
        let gh = Secret::new(
            SecretValue::new("It's a Secret to Everybody".into()),
            vec![],
        );
        assert_eq!(
            webhook_signature("s", &gh, WebhookScheme::HubSha256, 0, b"Hello, World!", now)
                .unwrap(),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        // A SigV4 secret signs nothing else.
        assert!(webhook_signature("aws", &aws(), WebhookScheme::HubSha256, 0, b"x", now).is_err());
    }
}
