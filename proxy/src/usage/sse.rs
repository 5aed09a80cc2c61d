//! Streaming (`text/event-stream`) responses: usage from the events as they pass, and removal
//! of OpenAI's usage-only chunk.
//!
//! Both types take the raw upstream chunks, split anywhere (even inside a `\r\n`), and keep at
//! most one line (scanner) or one event (filter) of state, capped by a limit.
//!
//! Lines end with `\n`, `\r\n` or a lone `\r` (as in the SSE spec). Each `data:` line is looked
//! at on its own: an event whose data is spread over several `data:` lines is not joined (no
//! LLM provider sends those), and for the filter such an event is never removed.

use super::response::{Counts, Envelope, Usage};
use bytes::Bytes;

/// Default cap on a line the scanner buffers and on an event the filter holds back: 64 KiB.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// The payload of a `data:` line (one optional space after the colon removed).
fn data_payload(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data:")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// A payload that may be a JSON object carrying usage: a cheap filter before parsing. (A key
/// spelled with escapes, `"\u0075sage"`, is missed; no provider does that.)
fn may_carry_usage(payload: &[u8]) -> bool {
    payload.trim_ascii_start().first() == Some(&b'{') && contains(payload, b"usage")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn is_terminator(b: u8) -> bool {
    b == b'\n' || b == b'\r'
}

/// Accumulates token usage from a streaming response, fed the raw bytes as they pass.
///
/// Recognised, in any `data:` line holding a JSON object:
/// - OpenAI chat/completions: a chunk with a non-null `usage` (the extra last chunk when the
///   request set `stream_options.include_usage`; also OpenAI-compatible servers that put it
///   on the last content chunk, and Groq's `x_groq.usage`);
/// - OpenAI responses API: `response.usage` of `response.completed` and friends;
/// - Anthropic: `message_start` (`message.usage`, input and cache counts) and `message_delta`
///   (`usage.output_tokens`, cumulative);
/// - Gemini: `usageMetadata` of each chunk.
///
/// Reports are cumulative, so each count takes its latest reported value (never a sum).
/// A line longer than the limit is skipped (up to the next line end), not buffered.
#[derive(Debug)]
pub struct SseUsageScanner {
    /// The incomplete line at the end of what was fed so far.
    partial: Vec<u8>,
    /// The current line grew past `max_line`: ignore it up to its end.
    skipping: bool,
    counts: Counts,
    max_line: usize,
}

impl Default for SseUsageScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl SseUsageScanner {
    /// A scanner that buffers lines up to [`DEFAULT_MAX_LINE`].
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }

    /// A scanner that buffers lines up to `max_line` bytes (longer lines are skipped).
    pub fn with_max_line(max_line: usize) -> Self {
        SseUsageScanner {
            partial: Vec::new(),
            skipping: false,
            counts: Counts::default(),
            max_line,
        }
    }

    /// Feeds the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let Some(end) = rest.iter().position(|&b| is_terminator(b)) else {
                // An incomplete line: keep it for the next chunk, within the cap.
                if !self.skipping {
                    if self.partial.len().saturating_add(rest.len()) > self.max_line {
                        self.partial = Vec::new();
                        self.skipping = true;
                    } else {
                        self.partial.extend_from_slice(rest);
                    }
                }
                return;
            };
            let (line, tail) = rest.split_at(end);
            rest = tail.get(1..).unwrap_or_default();
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                // Complete in this chunk: no need to buffer it, but the same cap applies, so
                // the result does not depend on where the stream was split.
                if line.len() <= self.max_line {
                    self.line(line);
                }
            } else if self.partial.len().saturating_add(line.len()) <= self.max_line {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
                whole.clear();
                self.partial = whole;
            } else {
                self.partial = Vec::new();
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Some(payload) = data_payload(line) else {
            return;
        };
        if !may_carry_usage(payload) {
            return;
        }
        if let Some(e) = Envelope::parse(payload) {
            self.counts.merge_latest(e.counts);
        }
    }

    /// The usage seen so far (`None` until a report arrives). Complete once the stream ended;
    /// an incomplete last line (no line end) is ignored.
    pub fn usage(&self) -> Option<Usage> {
        self.counts.to_usage()
    }

    /// Bytes of the buffer allocated for the incomplete line.
    #[cfg(test)]
    pub(super) fn buffered_capacity(&self) -> usize {
        self.partial.capacity()
    }
}

/// Removes OpenAI's usage-only chunk (`"choices": []` with a non-null `usage`, sent because
/// the proxy added `stream_options.include_usage`) from a stream, passing every other byte
/// through unchanged.
///
/// Incremental: [`filter`](Self::filter) returns what can be released now. Only the current
/// event is held back, and only until its first `data:` line is complete (then it is either
/// released at once, or known to be the usage chunk and dropped at its end): a complete event
/// is never delayed. An event that grows past the limit before that is released unchanged.
/// [`finish`](Self::finish) releases what is still held when the stream ends (a usage chunk
/// that lacks only its closing blank line is dropped, not released).
///
/// Lines other than `data:` (`event:`, `id:`, comments) of a removed event are removed with it.
#[derive(Debug)]
pub struct StripUsageChunk {
    /// Bytes of the current event not yet released (`Holding` only).
    held: Vec<u8>,
    /// Where the current line starts in `held`.
    line_start: usize,
    /// Still deciding (or decided to drop) the current event; else releasing it as it comes.
    holding: bool,
    /// The current event's data line is the usage-only chunk.
    strip: bool,
    /// No byte since the last line end (so a line end now ends the event).
    line_empty: bool,
    /// The last byte seen was a `\r`: a `\n` now belongs to the same line end.
    prev_cr: bool,
    /// That `\r` ended an event: whether its `\n` is released (`Some(true)`) or dropped.
    cr_release: Option<bool>,
    limit: usize,
}

impl Default for StripUsageChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl StripUsageChunk {
    /// A filter that holds back at most [`DEFAULT_MAX_LINE`] bytes.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_LINE)
    }

    /// A filter that holds back at most about `limit` bytes of an event.
    pub fn with_limit(limit: usize) -> Self {
        StripUsageChunk {
            held: Vec::new(),
            line_start: 0,
            holding: true,
            strip: false,
            line_empty: true,
            prev_cr: false,
            cr_release: None,
            limit,
        }
    }

    /// Takes the next upstream chunk; returns the bytes to send on now.
    pub fn filter(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(chunk.len().saturating_add(self.held.len()));
        let mut rest = chunk;
        while let Some((&first, after)) = rest.split_first() {
            if std::mem::take(&mut self.prev_cr) {
                let release = self.cr_release.take();
                if first == b'\n' {
                    match release {
                        Some(true) => out.push(b'\n'),
                        Some(false) => {}
                        None if self.holding => {
                            self.held.push(b'\n');
                            self.line_start = self.held.len();
                        }
                        None => out.push(b'\n'),
                    }
                    rest = after;
                    continue;
                }
            }
            match rest.iter().position(|&b| is_terminator(b)) {
                Some(end) => {
                    let (content, tail) = rest.split_at(end);
                    self.content(content, &mut out);
                    if let Some((&t, after)) = tail.split_first() {
                        self.end_line(t, &mut out);
                        rest = after;
                    } else {
                        rest = tail;
                    }
                }
                None => {
                    self.content(rest, &mut out);
                    rest = &[];
                }
            }
        }
        Bytes::from(out)
    }

    /// The stream ended: returns what is still held back (nothing if it is the usage chunk).
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        let strip = self.holding && self.strip;
        *self = Self::with_limit(self.limit);
        if strip {
            Bytes::new()
        } else {
            Bytes::from(held)
        }
    }

    /// Bytes held back now.
    #[cfg(test)]
    pub(super) fn held_len(&self) -> usize {
        self.held.len()
    }

    fn content(&mut self, content: &[u8], out: &mut Vec<u8>) {
        if content.is_empty() {
            return;
        }
        self.line_empty = false;
        if !self.holding {
            out.extend_from_slice(content);
        } else if self.held.len().saturating_add(content.len()) > self.limit {
            self.release_held(out);
            out.extend_from_slice(content);
        } else {
            self.held.extend_from_slice(content);
        }
    }

    /// Sends on what is held and the rest of the event as it comes.
    fn release_held(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.line_start = 0;
        self.holding = false;
        self.strip = false;
    }

    fn end_line(&mut self, t: u8, out: &mut Vec<u8>) {
        let blank = std::mem::replace(&mut self.line_empty, true);
        self.prev_cr = t == b'\r';
        self.cr_release = None;
        if blank {
            // The event ends here.
            let release = !(self.holding && self.strip);
            if release {
                out.append(&mut self.held);
                out.push(t);
            }
            if self.prev_cr {
                self.cr_release = Some(release);
            }
            self.held.clear();
            self.line_start = 0;
            self.holding = true;
            self.strip = false;
            return;
        }
        if !self.holding {
            out.push(t);
            return;
        }
        let (is_data, usage_only) =
            match data_payload(self.held.get(self.line_start..).unwrap_or_default()) {
                Some(p) => (
                    true,
                    may_carry_usage(p) && Envelope::parse(p).is_some_and(|e| e.usage_only_chunk),
                ),
                None => (false, false),
            };
        if is_data && (self.strip || !usage_only) {
            // Not the usage chunk (or a second data line in it): release the event.
            self.release_held(out);
            out.push(t);
            return;
        }
        self.strip |= usage_only;
        self.held.push(t);
        self.line_start = self.held.len();
        if self.held.len() > self.limit {
            self.release_held(out);
        }
    }
}
