//! The Tariscope dialect's XML form (`/xml` after the method path): answers are the JSON
//! answer written as elements (`<response>`: an object's members as child elements, an
//! array's values as `<item>`s, `null` as an empty element with `nil="true"`); requests are
//! a root element whose child elements are the parameters. Written and read with
//! `quick-xml` (escaping included), round-trip tested.

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use serde_json::{Map, Value};

/// Most nesting an answer may have (answers are shallow; this bounds the recursion).
const MAX_DEPTH: usize = 16;

/// An element name for a JSON key: kept when it is a valid XML name, else `field`
/// with the key in a `name` attribute.
fn valid_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn write_value(
    w: &mut Writer<Vec<u8>>,
    name: &str,
    v: &Value,
    depth: usize,
) -> std::io::Result<()> {
    let mut start = if valid_name(name) {
        BytesStart::new(name)
    } else {
        let mut s = BytesStart::new("field");
        s.push_attribute(("name", name));
        s
    };
    let end_name = if valid_name(name) { name } else { "field" };
    match v {
        Value::Null => {
            start.push_attribute(("nil", "true"));
            w.write_event(Event::Empty(start))?;
            return Ok(());
        }
        Value::Object(m) if depth < MAX_DEPTH => {
            w.write_event(Event::Start(start))?;
            for (k, x) in m {
                write_value(w, k, x, depth + 1)?;
            }
        }
        Value::Array(a) if depth < MAX_DEPTH => {
            w.write_event(Event::Start(start))?;
            for x in a {
                write_value(w, "item", x, depth + 1)?;
            }
        }
        other => {
            w.write_event(Event::Start(start))?;
            let text = match other {
                Value::String(s) => s.clone(),
                x => x.to_string(),
            };
            w.write_event(Event::Text(BytesText::new(&text)))?;
        }
    }
    w.write_event(Event::End(BytesEnd::new(end_name)))?;
    Ok(())
}

/// The XML document of an answer.
pub fn to_xml(root: &str, v: &Value) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    w.get_mut()
        .extend_from_slice(b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    // Writing into a Vec cannot fail.
    let _ = write_value(&mut w, root, v, 0);
    w.into_inner()
}

/// The parameters of an XML request: the root element's children, each as a string
/// (an empty element is an empty string; `nil="true"` is null).
pub fn from_xml(body: &[u8]) -> Result<Map<String, Value>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the XML body is not UTF-8".to_string())?;
    // Not trimmed: text is split at entity references, and trimming each piece would eat
    // the spaces around them. Whitespace between elements is outside any parameter.
    let mut r = Reader::from_str(text);
    let mut out = Map::new();
    let mut depth = 0usize;
    let mut current: Option<(String, String, bool)> = None;
    loop {
        match r.read_event().map_err(|e| format!("malformed XML: {e}"))? {
            Event::Start(e) => {
                depth += 1;
                if depth == 2 {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    current = Some((name, String::new(), false));
                } else if depth > 2 {
                    return Err("nested elements are not supported in requests".into());
                }
            }
            Event::Empty(e) => {
                if depth == 1 {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    let nil = e
                        .attributes()
                        .flatten()
                        .any(|a| a.key.as_ref() == b"nil" && a.value.as_ref() == b"true");
                    out.insert(
                        name,
                        if nil {
                            Value::Null
                        } else {
                            Value::String(String::new())
                        },
                    );
                } else if depth == 0 {
                    // An empty root: no parameters.
                }
            }
            Event::Text(t) => {
                if let Some(c) = current.as_mut() {
                    let s = t.decode().map_err(|e| format!("malformed XML text: {e}"))?;
                    let s = quick_xml::escape::unescape(&s)
                        .map_err(|e| format!("malformed XML text: {e}"))?;
                    c.1.push_str(&s);
                }
            }
            Event::CData(t) => {
                if let Some(c) = current.as_mut() {
                    c.1.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::GeneralRef(e) => {
                if let Some(c) = current.as_mut() {
                    let name = String::from_utf8_lossy(&e).into_owned();
                    let entity = format!("&{name};");
                    let s = quick_xml::escape::unescape(&entity)
                        .map_err(|e| format!("malformed XML entity: {e}"))?;
                    c.1.push_str(&s);
                }
            }
            Event::End(_) => {
                if depth == 2 {
                    if let Some((name, value, _)) = current.take() {
                        out.insert(name, Value::String(value));
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the writer writes, a reader other than ours (quick-xml's own event reader,
    /// walked here by hand) reads back: every scalar at its path, escapes undone.
    fn leaves(xml: &[u8]) -> Vec<(String, String)> {
        let mut r = Reader::from_reader(xml);
        let mut path: Vec<String> = Vec::new();
        let mut text: Option<String> = None;
        let mut out: Vec<(String, String)> = Vec::new();
        loop {
            match r.read_event().unwrap() {
                Event::Start(e) => {
                    path.push(String::from_utf8_lossy(e.name().as_ref()).into());
                    text = Some(String::new());
                }
                Event::End(_) => {
                    if let Some(t) = text.take().filter(|t| !t.is_empty()) {
                        out.push((path.join("/"), t));
                    }
                    path.pop();
                }
                Event::Empty(e) => {
                    let mut p = path.join("/");
                    p.push('/');
                    p.push_str(&String::from_utf8_lossy(e.name().as_ref()));
                    out.push((p, "<nil>".into()));
                }
                Event::Text(t) => {
                    if let Some(buf) = text.as_mut() {
                        let s = t.decode().unwrap();
                        buf.push_str(&quick_xml::escape::unescape(&s).unwrap());
                    }
                }
                Event::GeneralRef(e) => {
                    if let Some(buf) = text.as_mut() {
                        let entity = format!("&{};", String::from_utf8_lossy(&e));
                        buf.push_str(&quick_xml::escape::unescape(&entity).unwrap());
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        out
    }

    #[test]
    fn answers_round_trip() {
        let v = json!({
            "id": 2928,
            "fullname": "Ivan <Petrenko> & \"Sons\"",
            "House": "12a",
            "balance": 10.5,
            "email": null,
            "list": [1, "two"],
        });
        let xml = to_xml("response", &v);
        let text = String::from_utf8(xml.clone()).unwrap();
        assert!(text.contains("<House>12a</House>"), "{text}");
        assert!(text.contains("&lt;Petrenko&gt;"), "{text}");
        let got = leaves(&xml);
        assert!(
            got.contains(&(
                "response/fullname".into(),
                "Ivan <Petrenko> & \"Sons\"".into()
            )),
            "{got:?}"
        );
        assert!(got.contains(&("response/id".into(), "2928".into())));
        assert!(got.contains(&("response/balance".into(), "10.5".into())));
        assert!(got.contains(&("response/email".into(), "<nil>".into())));
        assert!(got.contains(&("response/list/item".into(), "two".into())));
    }

    #[test]
    fn requests_are_read_as_flat_parameters() {
        let body = br#"<?xml version="1.0"?><request><id>7</id><fullname>A &amp; B</fullname><Flat/><email nil="true"/></request>"#;
        let p = from_xml(body).unwrap();
        assert_eq!(p["id"], "7");
        assert_eq!(p["fullname"], "A & B");
        assert_eq!(p["Flat"], "");
        assert_eq!(p["email"], Value::Null);
        // What we write, we read.
        let v = json!({"id": "5", "description": "x < y & z"});
        let back = from_xml(&to_xml("request", &v)).unwrap();
        assert_eq!(Value::Object(back), v);
        assert!(from_xml(b"<request><a><b>1</b></a></request>").is_err());
        assert!(from_xml(b"<request><a>1</request>").is_err());
    }
}
