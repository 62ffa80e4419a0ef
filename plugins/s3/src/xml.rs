//! Just enough XML for S3's answers: the text of named elements, entities decoded.

/// The text of every `<tag>…</tag>`, in order, entities decoded.
pub fn all(xml: &str, tag: &str) -> Vec<String> {
    blocks(xml, tag).into_iter().map(decode).collect()
}

/// The raw inside of every `<tag>…</tag>` (for elements holding elements).
pub fn blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

/// The text of the first `<tag>…</tag>`.
pub fn first(xml: &str, tag: &str) -> Option<String> {
    all(xml, tag).into_iter().next()
}

fn decode(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listing() {
        let x = "<ListBucketResult><Contents><Key>a&amp;b.html</Key></Contents><Contents><Key>c</Key></Contents><IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken></ListBucketResult>";
        assert_eq!(all(x, "Key"), ["a&b.html", "c"]);
        assert_eq!(first(x, "NextContinuationToken").as_deref(), Some("t1"));
        assert_eq!(first(x, "Code"), None);
    }
}
