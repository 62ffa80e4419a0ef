//! The forms a secret's value takes in text, found in one pass: the value itself, base64 and
//! base64url at each of the three alignments, hex in lower and upper case, percent-encoding
//! (either case) and JSON string escaping.
//!
//! One automaton holds every form of every secret of a plugin. The sandbox uses it three
//! ways: to scrub responses before the plugin reads them ([`Scrub`]), to refuse a request
//! that carries a value out, and to redact what a call writes or returns.

use aho_corasick::{AhoCorasick, MatchKind, packed};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use bytes::Bytes;

/// An encoded form shorter than this is not matched: it could not be told from other text.
/// (The raw value is always matched, however short.)
const MIN_FORM: usize = 8;

/// Every form of a set of secrets, and which secret each belongs to.
pub(crate) struct Forms {
    /// The SIMD searcher (Teddy), when the patterns fit it: tens of GB/s on any data.
    packed: Option<packed::Searcher>,
    /// The general automaton otherwise (more patterns than Teddy takes, no SIMD).
    automaton: Option<AhoCorasick>,
    /// The secret (index into `names`) of each pattern.
    owner: Vec<usize>,
    names: Vec<String>,
    longest: usize,
}

impl std::fmt::Debug for Forms {
    /// Never the patterns: they are the values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forms")
            .field("secrets", &self.names)
            .field("patterns", &self.owner.len())
            .finish()
    }
}

/// One occurrence of a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    /// Where it starts, in bytes.
    pub(crate) start: usize,
    /// Where it ends (exclusive).
    pub(crate) end: usize,
    /// Whose form it is: an index for [`Forms::name`].
    pub(crate) secret: usize,
}

impl Forms {
    /// The forms of each `(name, value)`.
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Forms {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut owner = Vec::new();
        let mut names = Vec::new();
        for (i, (name, value)) in secrets.into_iter().enumerate() {
            names.push(name.to_string());
            for form in forms(value) {
                if !patterns.contains(&form) {
                    patterns.push(form);
                    owner.push(i);
                }
            }
        }
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        // Leftmost-longest: where one form is a prefix of another, the whole one goes.
        // Measured on random bytes with the S3 tests' key: the automaton alone ran at
        // 390 MiB/s (its prefilter keys on single bytes), Teddy at 16 GiB/s.
        let packed = (!patterns.is_empty())
            .then(|| {
                packed::Config::new()
                    .match_kind(packed::MatchKind::LeftmostLongest)
                    .builder()
                    .extend(&patterns)
                    .build()
            })
            .flatten();
        let automaton = if patterns.is_empty() || packed.is_some() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Forms {
            packed,
            automaton,
            owner,
            names,
            longest,
        }
    }

    /// The longest form, in bytes: how much of a stream to hold back so that no form hides
    /// across a chunk boundary.
    pub(crate) fn longest(&self) -> usize {
        self.longest
    }

    /// The name of secret `index`.
    pub(crate) fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// Every non-overlapping occurrence in `hay`, left to right.
    pub(crate) fn hits<'h>(&'h self, hay: &'h [u8]) -> impl Iterator<Item = Hit> + 'h {
        let packed = self.packed.iter().flat_map(move |p| p.find_iter(hay));
        let general = self.automaton.iter().flat_map(move |a| a.find_iter(hay));
        packed.chain(general).map(|m| Hit {
            start: m.start(),
            end: m.end(),
            secret: self.owner[m.pattern().as_usize()],
        })
    }

    /// The first occurrence in `hay`.
    pub(crate) fn first(&self, hay: &[u8]) -> Option<Hit> {
        self.hits(hay).next()
    }

    /// `hay` with every occurrence replaced by `with(secret)`; `None` if there is none.
    pub(crate) fn replace(&self, hay: &[u8], with: &dyn Fn(usize) -> Vec<u8>) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        for hit in self.hits(hay) {
            out.extend_from_slice(&hay[at..hit.start]);
            out.extend_from_slice(&with(hit.secret));
            at = hit.end;
        }
        if at == 0 && out.is_empty() {
            return None;
        }
        out.extend_from_slice(&hay[at..]);
        Some(out)
    }
}

/// The forms of one value.
fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    if value.is_empty() {
        return Vec::new();
    }
    let mut all = vec![value.to_vec()];
    all.push(hex::encode(value).into_bytes());
    all.push(hex::encode_upper(value).into_bytes());
    for shift in 0..3 {
        all.push(base64_core(value, shift, false));
        all.push(base64_core(value, shift, true));
    }
    for digits in [b"0123456789ABCDEF", b"0123456789abcdef"] {
        all.push(percent(value, digits, false));
        all.push(percent(value, digits, true));
    }
    if let Ok(text) = std::str::from_utf8(value) {
        let json = serde_json::to_string(text).unwrap_or_default();
        let json = json[1..json.len() - 1].to_string();
        all.push(json.replace('/', "\\/").into_bytes());
        all.push(json.into_bytes());
    }
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for (i, form) in all.into_iter().enumerate() {
        if (i == 0 || form.len() >= MIN_FORM) && !kept.contains(&form) {
            kept.push(form);
        }
    }
    kept
}

/// The base64 characters that depend on `value`'s bits alone when `value` starts `shift`
/// bytes into a 3-byte group: whatever comes before or after it in the encoded data, these
/// characters appear.
fn base64_core(value: &[u8], shift: usize, url: bool) -> Vec<u8> {
    let mut data = vec![0u8; shift];
    data.extend_from_slice(value);
    let encoded = if url {
        URL_SAFE_NO_PAD.encode(&data)
    } else {
        STANDARD_NO_PAD.encode(&data)
    };
    // Character i covers bits [6i, 6i + 6); the value covers [8 shift, 8 (shift + len)).
    let first = (8 * shift).div_ceil(6);
    let end = (8 * (shift + value.len())) / 6;
    if end <= first {
        return Vec::new();
    }
    encoded.as_bytes()[first..end].to_vec()
}

/// Percent-encoding with `digits`: of every byte outside RFC 3986's unreserved set, or of
/// every byte (`all`), as some encoders do.
fn percent(value: &[u8], digits: &[u8; 16], all: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if !all && (b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]);
        }
    }
    out
}

/// A stream with every form replaced as it passes: the last `longest - 1` bytes are held
/// back until the next chunk shows whether a form continues there. Nothing else is buffered.
pub(crate) struct Scrub {
    forms: std::sync::Arc<Forms>,
    /// What each secret's forms become, by secret index.
    replacement: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Scrub {
    /// Scrubs with `forms`, replacing secret `i`'s forms by `replacement[i]`.
    pub(crate) fn new(forms: std::sync::Arc<Forms>, replacement: Vec<Vec<u8>>) -> Scrub {
        Scrub {
            forms,
            replacement,
            held: Vec::new(),
        }
    }

    /// Takes a chunk; returns what may be passed on now.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Bytes {
        let hold = self.forms.longest().saturating_sub(1);
        let mut work = std::mem::take(&mut self.held);
        work.extend_from_slice(chunk);
        if work.len() <= hold {
            self.held = work;
            return Bytes::new();
        }
        // A form that starts before `safe` ends within `work`: it is whole here.
        let safe = work.len() - hold;
        let mut out = Vec::with_capacity(work.len());
        let mut at = 0;
        for hit in self.forms.hits(&work) {
            if hit.start >= safe {
                break;
            }
            out.extend_from_slice(&work[at..hit.start]);
            out.extend_from_slice(&self.replacement[hit.secret]);
            at = hit.end;
        }
        let upto = at.max(safe);
        out.extend_from_slice(&work[at..upto]);
        self.held = work[upto..].to_vec();
        Bytes::from(out)
    }

    /// The end of the stream: the held bytes, scrubbed.
    pub(crate) fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        let with = |i: usize| self.replacement[i].clone();
        match self.forms.replace(&held, &with) {
            Some(out) => Bytes::from(out),
            None => Bytes::from(held),
        }
    }
}

/// Redacts `fragments` (one call's log lines, output and returned texts, in order) as one
/// text: a value split across two fragments is found too. Each fragment's share of a hit
/// becomes `[redacted:NAME]`.
pub(crate) fn redact_joined(forms: &Forms, fragments: &mut [&mut String]) {
    let joined: Vec<u8> = fragments
        .iter()
        .flat_map(|f| f.as_bytes().iter().copied())
        .collect();
    let hits: Vec<Hit> = forms.hits(&joined).collect();
    if hits.is_empty() {
        return;
    }
    let mut offset = 0;
    for fragment in fragments.iter_mut() {
        let (start, end) = (offset, offset + fragment.len());
        offset = end;
        let mine: Vec<&Hit> = hits
            .iter()
            .filter(|h| h.start < end && h.end > start)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let bytes = fragment.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        for hit in mine {
            let (s, e) = (hit.start.max(start) - start, hit.end.min(end) - start);
            out.extend_from_slice(&bytes[at..s]);
            out.extend_from_slice(format!("[redacted:{}]", forms.name(hit.secret)).as_bytes());
            at = e;
        }
        out.extend_from_slice(&bytes[at..]);
        **fragment = String::from_utf8_lossy(&out).into_owned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "s3cr3t/Value+with\"quote\\and ü";

    fn forms_of(value: &str) -> Forms {
        Forms::new([("token", value.as_bytes())])
    }

    /// Every way a plugin might encode the value, at every offset, is found.
    #[test]
    fn finds_every_encoding_at_every_alignment() {
        let f = forms_of(VALUE);
        for pad in ["", "x", "xy", "xyz"] {
            let data = format!("{pad}{VALUE}");
            let mut encodings = vec![
                data.clone(),
                hex::encode(&data),
                hex::encode_upper(&data),
                base64::engine::general_purpose::STANDARD.encode(&data),
                base64::engine::general_purpose::URL_SAFE.encode(&data),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&data),
                serde_json::to_string(&data).unwrap(),
                String::from_utf8(percent(data.as_bytes(), b"0123456789abcdef", false)).unwrap(),
                String::from_utf8(percent(data.as_bytes(), b"0123456789ABCDEF", true)).unwrap(),
            ];
            encodings.push(encodings[6].replace('/', "\\/"));
            for e in encodings {
                assert!(f.first(e.as_bytes()).is_some(), "not found in {e}");
            }
        }
        assert!(f.first(b"an ordinary response body").is_none());
    }

    /// More forms than the SIMD searcher takes: the general automaton finds them all.
    #[test]
    fn many_secrets_are_all_found() {
        let values: Vec<String> = (0..12).map(|i| format!("value-{i}/of+many")).collect();
        let f = Forms::new(values.iter().enumerate().map(|(i, v)| {
            (
                ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"][i],
                v.as_bytes(),
            )
        }));
        assert!(
            f.owner.len() > 64 && f.packed.is_none(),
            "{} patterns",
            f.owner.len()
        );
        for (i, v) in values.iter().enumerate() {
            let hit = f
                .first(format!("x {} y", hex::encode_upper(v)).as_bytes())
                .expect("found");
            assert_eq!(
                f.name(hit.secret),
                ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"][i]
            );
        }
    }

    #[test]
    fn short_encodings_are_not_matched_but_the_raw_value_is() {
        let f = forms_of("abc");
        assert!(f.first(b"xabcx").is_some());
        // hex "616263" is six characters: too short to tell from other text.
        assert!(f.first(b"616263").is_none());
    }

    /// However a stream is cut, what comes out equals scrubbing it whole.
    #[test]
    fn a_stream_is_scrubbed_across_any_chunk_boundary() {
        let forms = std::sync::Arc::new(forms_of(VALUE));
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("ab{VALUE}"));
        let text = format!("head {VALUE} mid {b64} {} tail", hex::encode(VALUE));
        let whole = {
            let mut s = Scrub::new(forms.clone(), vec![b"<P>".to_vec()]);
            let mut out = s.push(text.as_bytes()).to_vec();
            out.extend_from_slice(&s.finish());
            out
        };
        let whole = String::from_utf8(whole).unwrap();
        assert_eq!(whole.matches("<P>").count(), 3, "{whole}");
        assert!(!whole.contains("s3cr3t"));
        for size in [1, 2, 3, 7, 16, 61] {
            let mut s = Scrub::new(forms.clone(), vec![b"<P>".to_vec()]);
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                out.extend_from_slice(&s.push(chunk));
            }
            out.extend_from_slice(&s.finish());
            assert_eq!(String::from_utf8(out).unwrap(), whole, "chunks of {size}");
        }
    }

    #[test]
    fn a_value_split_over_two_log_lines_is_redacted_in_both() {
        let f = forms_of("s3cr3t-value");
        let (mut a, mut b, mut c) = (
            "key: s3cr".to_string(),
            "3t-value!".to_string(),
            "ok".to_string(),
        );
        redact_joined(&f, &mut [&mut a, &mut b, &mut c]);
        assert_eq!(a, "key: [redacted:token]");
        assert_eq!(b, "[redacted:token]!");
        assert_eq!(c, "ok");
        let mut d = hex::encode("s3cr3t-value");
        redact_joined(&f, &mut [&mut d]);
        assert_eq!(d, "[redacted:token]");
    }
}
