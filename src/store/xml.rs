//! Just enough XML reading for S3's replies: the text of a tag, and repeated blocks.
//! S3 replies are flat and machine-written; values are unescaped for the five entities.

/// Text inside the first `<tag>...</tag>`.
pub fn tag<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&close)? + start;
    Some(&body[start..end])
}

/// Every `<name>...</name>` block, in order.
pub fn blocks<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

pub fn unescape(s: &str) -> String {
    let s = s.trim();
    if let Some(inner) = s
        .strip_prefix("<![CDATA[")
        .and_then(|r| r.strip_suffix("]]>"))
    {
        return inner.to_string();
    }
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_blocks() {
        let b = "<R><UploadId>abc</UploadId><Upload><Key>a&amp;b</Key></Upload><Upload><Key>c</Key></Upload><IsTruncated>false</IsTruncated></R>";
        assert_eq!(tag(b, "UploadId"), Some("abc"));
        assert_eq!(tag(b, "Nope"), None);
        let ups = blocks(b, "Upload");
        assert_eq!(ups.len(), 2);
        assert_eq!(unescape(tag(ups[0], "Key").unwrap()), "a&b");
        assert_eq!(unescape("<![CDATA[a <b>]]>"), "a <b>");
        assert_eq!(escape("\"x\"&<"), "&quot;x&quot;&amp;&lt;");
        assert!(blocks("<Upload>unclosed", "Upload").is_empty());
    }
}
