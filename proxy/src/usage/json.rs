//! Byte spans of a JSON object's members, for edits that keep the rest of a body byte for byte
//! (member order, spacing, number spelling) — serde_json's `Value` would reorder keys, since
//! its `preserve_order` feature is off.
//!
//! The walker assumes well-formed JSON: callers validate with serde_json first. On anything
//! else it returns `None`, never panics, and it is iterative (no recursion).

use serde::de::IgnoredAny;
use std::ops::Range;

/// One `"key": value` member: the spans of the key (with its quotes) and of the value.
#[derive(Clone, Debug)]
pub(super) struct Member {
    pub(super) key: Range<usize>,
    pub(super) value: Range<usize>,
}

/// An object: its members in order, and where its `{` and `}` are.
#[derive(Debug)]
pub(super) struct Object {
    pub(super) open: usize,
    pub(super) members: Vec<Member>,
}

impl Object {
    /// The top-level object of `body`, if `body` is well-formed JSON (UTF-8 included, which
    /// skipping with `IgnoredAny` alone does not check inside strings) and an object.
    pub(super) fn top_level(body: &[u8]) -> Option<Object> {
        std::str::from_utf8(body).ok()?;
        serde_json::from_slice::<IgnoredAny>(body).ok()?;
        Object::parse(body, skip_ws(body, 0))
    }

    /// The object starting at `b[start]`.
    pub(super) fn parse(b: &[u8], start: usize) -> Option<Object> {
        if b.get(start) != Some(&b'{') {
            return None;
        }
        let mut members = Vec::new();
        let mut i = skip_ws(b, start.checked_add(1)?);
        if b.get(i) == Some(&b'}') {
            return Some(Object {
                open: start,
                members,
            });
        }
        loop {
            let key_end = skip_string(b, i)?;
            let key = i..key_end;
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i.checked_add(1)?);
            let value_end = skip_value(b, i)?;
            members.push(Member {
                key,
                value: i..value_end,
            });
            i = skip_ws(b, value_end);
            match b.get(i)? {
                b',' => i = skip_ws(b, i.checked_add(1)?),
                b'}' => {
                    return Some(Object {
                        open: start,
                        members,
                    });
                }
                _ => return None,
            }
        }
    }

    /// The last member named `name` (what serde_json and most parsers keep on duplicates).
    pub(super) fn last<'a>(&'a self, b: &[u8], name: &str) -> Option<&'a Member> {
        self.members.iter().rev().find(|m| key_is(b, &m.key, name))
    }

    /// `b` with every member named `name` given the value `value_json` (raw JSON), or with
    /// `"name":value_json` appended after the last member when there is none.
    pub(super) fn set(&self, b: &[u8], name: &str, value_json: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(
            b.len()
                .saturating_add(name.len())
                .saturating_add(value_json.len())
                .saturating_add(8),
        );
        let mut copied = 0usize;
        let mut found = false;
        for m in self.members.iter().filter(|m| key_is(b, &m.key, name)) {
            out.extend_from_slice(b.get(copied..m.value.start)?);
            out.extend_from_slice(value_json);
            copied = m.value.end;
            found = true;
        }
        if !found {
            let (at, comma) = match self.members.last() {
                Some(m) => (m.value.end, true),
                None => (self.open.checked_add(1)?, false),
            };
            out.extend_from_slice(b.get(..at)?);
            if comma {
                out.push(b',');
            }
            out.extend_from_slice(&serde_json::to_vec(name).ok()?);
            out.push(b':');
            out.extend_from_slice(value_json);
            copied = at;
        }
        out.extend_from_slice(b.get(copied..)?);
        Some(out)
    }
}

/// Whether the key at `span` (with quotes) is `name`, escapes decoded.
fn key_is(b: &[u8], span: &Range<usize>, name: &str) -> bool {
    let Some(quoted) = b.get(span.clone()) else {
        return false;
    };
    let raw = quoted
        .strip_prefix(b"\"")
        .and_then(|q| q.strip_suffix(b"\""))
        .unwrap_or_default();
    if !raw.contains(&b'\\') {
        return raw == name.as_bytes();
    }
    serde_json::from_slice::<String>(quoted).is_ok_and(|k| k == name)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
    {
        i = i.saturating_add(1);
    }
    i
}

/// The end (one past the closing quote) of the string starting at `b[i]`.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i.checked_add(1)?;
    loop {
        match b.get(j)? {
            b'\\' => j = j.checked_add(2)?,
            b'"' => return j.checked_add(1),
            _ => j = j.checked_add(1)?,
        }
    }
}

/// The end of the value starting at `b[i]`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth = depth.saturating_add(1),
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return j.checked_add(1);
                        }
                    }
                    _ => {}
                }
                j = j.checked_add(1)?;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'))
            {
                j = j.saturating_add(1);
            }
            (j > i).then_some(j)
        }
    }
}
