//! S3's XML replies read with a real parser (quick-xml, already in the tree through
//! rust-s3) into a small element tree: names without namespace prefixes, text with every
//! entity resolved (`&quot;`, and numeric ones such as `&#34;`, which some servers
//! send), CDATA kept as is, surrounding white space trimmed. Attributes are not needed
//! and not kept. Also [`escape`] for the one XML body we write.
//!
//! A reply is input: the tree is built without recursion, and a document nested deeper
//! than [`MAX_DEPTH`] or with more than [`MAX_ELEMENTS`] elements is refused before it is
//! built, so no reply can exhaust the stack (the derived `Drop`, `Clone` and `find` walk
//! the tree recursively, at most `MAX_DEPTH` deep) or grow the tree without bound.

use quick_xml::events::Event;
use quick_xml::Reader;

/// No S3 or STS reply nests more than 5 levels.
pub const MAX_DEPTH: usize = 64;
/// A ListObjectsV2 page of 1,000 objects has about 15,000 elements.
pub const MAX_ELEMENTS: usize = 200_000;

/// One element: its local name, its text, its child elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first element named `name`, this one or any below it, depth first.
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// The trimmed text of [`Self::find`]`(name)`.
    pub fn text_of(&self, name: &str) -> Option<String> {
        self.find(name).map(|e| e.text.trim().to_string())
    }

    /// The direct children named `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

/// Parses a reply body; `None` when [`parse_checked`] refuses it.
pub fn parse(body: &str) -> Option<Element> {
    parse_checked(body).ok()
}

/// Parses a reply body; the error says why it is refused: not well-formed XML with a
/// root element, nested deeper than [`MAX_DEPTH`], or more than [`MAX_ELEMENTS`] elements.
pub fn parse_checked(body: &str) -> Result<Element, String> {
    let bad = || "it is not well-formed XML".to_string();
    let mut reader = Reader::from_str(body);
    // The element being read is last; the root is first.
    let mut stack: Vec<Element> = Vec::new();
    let mut elements = 0usize;
    // Before an element is opened, as the stack's new top.
    let mut admit = |stack: &Vec<Element>| -> Result<(), String> {
        elements += 1;
        if stack.len() >= MAX_DEPTH {
            return Err(format!("it nests elements deeper than {MAX_DEPTH} levels"));
        }
        if elements > MAX_ELEMENTS {
            return Err(format!("it has more than {MAX_ELEMENTS} elements"));
        }
        Ok(())
    };
    // Text and entity references since the last tag, resolved when the tag ends.
    let mut raw = String::new();
    let flush = |raw: &mut String, stack: &mut Vec<Element>| -> Result<(), String> {
        if !raw.is_empty() {
            let text = quick_xml::escape::unescape(raw)
                .map_err(|_| bad())?
                .into_owned();
            match stack.last_mut() {
                Some(e) => e.text.push_str(&text),
                // Outside the root only white space may stand (between the declaration
                // and the root, as pretty-printed replies have it).
                None if text.trim().is_empty() => {}
                None => return Err(bad()),
            }
            raw.clear();
        }
        Ok(())
    };
    loop {
        match reader.read_event().map_err(|_| bad())? {
            Event::Start(e) => {
                flush(&mut raw, &mut stack)?;
                admit(&stack)?;
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                stack.push(Element {
                    name,
                    ..Default::default()
                });
            }
            Event::Empty(e) => {
                flush(&mut raw, &mut stack)?;
                admit(&stack)?;
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let el = Element {
                    name,
                    ..Default::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                flush(&mut raw, &mut stack)?;
                let done = stack.pop().ok_or_else(bad)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::Text(t) => raw.push_str(&t.decode().map_err(|_| bad())?),
            Event::GeneralRef(r) => {
                raw.push('&');
                raw.push_str(&r.decode().map_err(|_| bad())?);
                raw.push(';');
            }
            Event::CData(c) => {
                flush(&mut raw, &mut stack)?;
                let text = c.decode().map_err(|_| bad())?.into_owned();
                stack.last_mut().ok_or_else(bad)?.text.push_str(&text);
            }
            Event::Eof => return Err(bad()),
            _ => {}
        }
    }
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
    fn elements_text_and_entities() {
        let b = "<?xml version=\"1.0\"?><R xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <UploadId>abc</UploadId><Upload><Key>a&amp;b</Key></Upload>\
                 <Upload><Key>c</Key></Upload><IsTruncated> true </IsTruncated>\
                 <ETag>&#34;5f36&#x22;</ETag><Q>&quot;x&quot;</Q><C><![CDATA[a <b> &amp;]]></C>\
                 <Empty/></R>";
        let r = parse(b).unwrap();
        assert_eq!(r.name, "R");
        assert_eq!(r.text_of("UploadId").as_deref(), Some("abc"));
        assert_eq!(r.text_of("Nope"), None);
        let ups: Vec<_> = r.all("Upload").collect();
        assert_eq!(ups.len(), 2);
        assert_eq!(ups[0].text_of("Key").as_deref(), Some("a&b"));
        // White space around a value does not change it (the old reader read false here).
        assert_eq!(r.text_of("IsTruncated").as_deref(), Some("true"));
        assert_eq!(r.text_of("ETag").as_deref(), Some("\"5f36\""));
        assert_eq!(r.text_of("Q").as_deref(), Some("\"x\""));
        assert_eq!(r.text_of("C").as_deref(), Some("a <b> &amp;"));
        assert_eq!(r.text_of("Empty").as_deref(), Some(""));
        // Prefixed names are matched by their local part; attributes are ignored.
        let p = parse("<s3:E a=\"1\"><s3:Code>NoSuchKey</s3:Code></s3:E>").unwrap();
        assert_eq!(p.text_of("Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(escape("\"x\"&<"), "&quot;x&quot;&amp;&lt;");
        for bad in [
            "<Upload>unclosed",
            "",
            "not xml",
            "<a></b>",
            "<a>&bogus;</a>",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    /// 1.4 million levels in under 10 MB: the tree this would build overflows the stack
    /// when dropped or searched. It is refused, and so is a flat flood of elements.
    #[test]
    fn deep_or_huge_documents_are_refused_without_building_them() {
        let n = 1_400_000;
        let deep = format!("{}{}", "<a>".repeat(n), "</a>".repeat(n));
        assert!(deep.len() < 10_000_000);
        let e = parse_checked(&deep).unwrap_err();
        assert!(e.contains("deeper than 64 levels"), "{e}");
        assert_eq!(parse(&deep), None);
        // An unclosed one as well (no tree, and no stack of 1.4 M open elements).
        assert!(parse_checked(&"<a>".repeat(n)).is_err());
        // Exactly the limit is fine, one more is not.
        let at = |d: usize| format!("{}x{}", "<a>".repeat(d), "</a>".repeat(d));
        assert_eq!(parse_checked(&at(MAX_DEPTH)).unwrap().name, "a");
        assert!(parse_checked(&at(MAX_DEPTH + 1)).is_err());
        let flat = format!("<R>{}</R>", "<a/>".repeat(MAX_ELEMENTS));
        let e = parse_checked(&flat).unwrap_err();
        assert!(e.contains("more than 200000 elements"), "{e}");
        let fits = format!("<R>{}</R>", "<a/>".repeat(MAX_ELEMENTS - 1));
        assert_eq!(
            parse_checked(&fits).unwrap().children.len(),
            MAX_ELEMENTS - 1
        );
        assert!(parse_checked("<a>")
            .unwrap_err()
            .contains("not well-formed"));
    }
}
