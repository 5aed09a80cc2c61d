//! Token usage in a response body (or in one SSE event's JSON).
//!
//! The body is walked with serde visitors that keep only the few members that can carry usage
//! (`usage`, `usageMetadata`, `message.usage`, `response.usage`, `x_groq.usage`, and the length of
//! `choices`); everything else is skipped with `IgnoredAny`, so nothing but the small usage
//! objects is allocated, whatever the size of the body.

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// Tokens one request consumed, as the provider reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Prompt tokens, including Anthropic's cache writes and reads and Gemini's tool-use prompt.
    pub input_tokens: u64,
    /// Generated tokens, including reasoning tokens (Gemini reports them separately as
    /// `thoughtsTokenCount`; OpenAI and Anthropic already include them).
    pub output_tokens: u64,
}

impl Usage {
    /// Input plus output (saturating).
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Token usage of a whole JSON response body.
///
/// Understands:
/// - OpenAI chat/completions: `usage.prompt_tokens` / `completion_tokens` (`total_tokens`);
/// - OpenAI responses API and Anthropic messages: `usage.input_tokens` / `output_tokens`, plus
///   Anthropic's `cache_creation_input_tokens` and `cache_read_input_tokens` counted as input
///   (OpenAI's `cached_tokens` details are a subset of the prompt and are not added);
/// - Gemini: `usageMetadata.promptTokenCount` (+ `toolUsePromptTokenCount`) as input,
///   `candidatesTokenCount` (+ `thoughtsTokenCount`) as output;
/// - a streamed Gemini body (a JSON array of chunks): the latest usage in it.
///
/// When only a total is given, output is `total - input`. `None` when no usage is present
/// (absent, `null`, or without any known count), or when the body is not JSON.
pub fn from_json(body: &[u8]) -> Option<Usage> {
    Envelope::parse(body)?.counts.to_usage()
}

/// The raw counts of one usage report, each `None` when the report does not carry it. Kept
/// apart (rather than summed at once) so that streamed reports can update them field by field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    input: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    extra_input: Option<u64>,
    output: Option<u64>,
    extra_output: Option<u64>,
    total: Option<u64>,
}

impl Counts {
    /// OpenAI (both APIs) and Anthropic: the `usage` object.
    fn from_usage(v: &Value) -> Counts {
        Counts {
            input: count(v, "prompt_tokens").or_else(|| count(v, "input_tokens")),
            cache_creation: count(v, "cache_creation_input_tokens"),
            cache_read: count(v, "cache_read_input_tokens"),
            extra_input: None,
            output: count(v, "completion_tokens").or_else(|| count(v, "output_tokens")),
            extra_output: None,
            total: count(v, "total_tokens"),
        }
    }

    /// Gemini: the `usageMetadata` object.
    fn from_gemini(v: &Value) -> Counts {
        Counts {
            input: count(v, "promptTokenCount"),
            cache_creation: None,
            cache_read: None,
            extra_input: count(v, "toolUsePromptTokenCount"),
            output: count(v, "candidatesTokenCount"),
            extra_output: count(v, "thoughtsTokenCount"),
            total: count(v, "totalTokenCount"),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    /// Takes every count `newer` carries, keeping the others: streamed reports are cumulative,
    /// so the latest value of each count wins (Anthropic's `message_delta` carries only
    /// `output_tokens`, the input stays from `message_start`).
    pub(super) fn merge_latest(&mut self, newer: Counts) {
        fn take(old: &mut Option<u64>, new: Option<u64>) {
            if new.is_some() {
                *old = new;
            }
        }
        take(&mut self.input, newer.input);
        take(&mut self.cache_creation, newer.cache_creation);
        take(&mut self.cache_read, newer.cache_read);
        take(&mut self.extra_input, newer.extra_input);
        take(&mut self.output, newer.output);
        take(&mut self.extra_output, newer.extra_output);
        take(&mut self.total, newer.total);
    }

    pub(super) fn to_usage(self) -> Option<Usage> {
        if self.is_empty() {
            return None;
        }
        let input = [
            self.input,
            self.cache_creation,
            self.cache_read,
            self.extra_input,
        ]
        .into_iter()
        .flatten()
        .fold(0u64, u64::saturating_add);
        let output = match (self.output, self.total) {
            (Some(o), _) => o.saturating_add(self.extra_output.unwrap_or(0)),
            (None, Some(t)) => t.saturating_sub(input),
            (None, None) => self.extra_output.unwrap_or(0),
        };
        Some(Usage {
            input_tokens: input,
            output_tokens: output,
        })
    }
}

/// A non-negative count; floats are truncated (saturating), anything else is absent.
fn count(v: &Value, key: &str) -> Option<u64> {
    let n = v.get(key)?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// What one JSON document (a body, or one SSE event's data) says about usage.
#[derive(Debug, Default)]
pub(super) struct Envelope {
    /// The usage it reports (empty when none).
    pub(super) counts: Counts,
    /// It is OpenAI's extra `stream_options.include_usage` chunk: `"choices": []` and a
    /// non-null `usage`.
    pub(super) usage_only_chunk: bool,
}

impl Envelope {
    /// `None` when `json` is not one well-formed JSON value.
    pub(super) fn parse(json: &[u8]) -> Option<Envelope> {
        serde_json::from_slice::<Envelope>(json).ok()
    }
}

/// The members of an object that matter here; other keys are skipped.
#[derive(Clone, Copy)]
enum Key {
    Usage,
    UsageMetadata,
    /// Objects whose own `usage` member counts: Anthropic's `message_start` (`message`), the
    /// responses API's stream events (`response`), Groq's last chunk (`x_groq`).
    Nested,
    Choices,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "usage" => Key::Usage,
                    "usageMetadata" => Key::UsageMetadata,
                    "message" | "response" | "x_groq" => Key::Nested,
                    "choices" => Key::Choices,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// Implements the visitor methods for scalars, all mapping to `Default::default()`: the
/// visitors here accept any JSON value and only look into the shapes they know.
macro_rules! lenient_scalars {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Envelope, D::Error> {
        d.deserialize_any(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    lenient_scalars!();

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut usage: Option<Value> = None;
        let mut usage_metadata: Option<Value> = None;
        let mut nested: Option<Value> = None;
        let mut choices: Option<usize> = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Usage => usage = Some(map.next_value()?),
                Key::UsageMetadata => usage_metadata = Some(map.next_value()?),
                Key::Nested => {
                    if let NestedUsage(Some(v)) = map.next_value()? {
                        nested = Some(v);
                    }
                }
                Key::Choices => choices = map.next_value::<ArrayLen>()?.0,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // Gemini first, then a top-level `usage`, then a nested one: the first that carries
        // any count.
        let counts = [
            usage_metadata.as_ref().map(Counts::from_gemini),
            usage.as_ref().map(Counts::from_usage),
            nested.as_ref().map(Counts::from_usage),
        ]
        .into_iter()
        .flatten()
        .find(|c| !c.is_empty())
        .unwrap_or_default();
        let usage_only_chunk = choices == Some(0) && usage.as_ref().is_some_and(|u| !u.is_null());
        Ok(Envelope {
            counts,
            usage_only_chunk,
        })
    }

    /// A streamed Gemini body is an array of chunks: the latest report of each count wins.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
        let mut counts = Counts::default();
        while let Some(e) = seq.next_element::<Envelope>()? {
            counts.merge_latest(e.counts);
        }
        Ok(Envelope {
            counts,
            usage_only_chunk: false,
        })
    }
}

/// The `usage` member of an object, if the value is an object that has one.
#[derive(Default)]
struct NestedUsage(Option<Value>);

impl<'de> Deserialize<'de> for NestedUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NestedUsage, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NestedUsage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            lenient_scalars!();
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NestedUsage, A::Error> {
                let mut usage = None;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Usage => usage = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(NestedUsage(usage))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NestedUsage, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(NestedUsage(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The length of an array; `None` for any other value.
#[derive(Default)]
struct ArrayLen(Option<usize>);

impl<'de> Deserialize<'de> for ArrayLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ArrayLen, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ArrayLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            lenient_scalars!();
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ArrayLen, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ArrayLen(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ArrayLen, A::Error> {
                let mut n = 0usize;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n = n.saturating_add(1);
                }
                Ok(ArrayLen(Some(n)))
            }
        }
        d.deserialize_any(V)
    }
}
