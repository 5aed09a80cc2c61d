//! The tools configured by environment variables (the Workers balancer, the Python LM proxy):
//! a `.env` file's parser, and their import through the environment quick start.

use super::{Doc, Imported, Tool};
use crate::quickstart::QuickStart;
use serde_json::Value;

/// The variables each tool's import reads (others in a `.env` file are listed as not
/// imported). `KEYWAY_ENDPOINTS` points either at other upstreams.
const WORKERS: &[&str] = &[
    "LOAD_BALANCER_ENABLED",
    "LOAD_BALANCER_API_KEYS",
    "LOAD_BALANCER_STRATEGY",
    "LOAD_BALANCER_WINDOW_SIZE",
    "KEYWAY_LOAD_BALANCER_PROVIDER",
    "KEYWAY_ENDPOINTS",
];
const LM_PROXY: &[&str] = &[
    "OPENAI_API_KEYS",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEYS",
    "ANTHROPIC_API_KEY",
    "SERVICE_ENDPOINTS",
    "KEYWAY_ENDPOINTS",
    "LOG_LEVEL",
];

pub(super) fn reads(tool: Tool, name: &str) -> bool {
    match tool {
        Tool::Workers => WORKERS.contains(&name),
        Tool::LmProxy => LM_PROXY.contains(&name),
        _ => false,
    }
}

/// `.env` text: `NAME=value` lines, optional `export `, `#` comments, values in single or
/// double quotes (which may span lines, as the Python proxy's `SERVICE_ENDPOINTS='{...}'`),
/// and an unquoted JSON value spanning lines until its braces balance. Errors give the line
/// number only (a value may be a key).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected NAME=value", n + 1));
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("line {}: {name:?} is not a variable name", n + 1));
        }
        let mut value = value.trim_start().to_string();
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'');
        if let Some(q) = quote {
            value.remove(0);
            while !value.trim_end().ends_with(q) {
                let Some((_, next)) = lines.next() else {
                    return Err(format!("line {}: the quote is never closed", n + 1));
                };
                value.push('\n');
                value.push_str(next);
            }
            let end = value.trim_end().len() - 1;
            value.truncate(end);
        } else if value.starts_with('{') || value.starts_with('[') {
            while !balanced(&value) {
                let Some((_, next)) = lines.next() else {
                    return Err(format!("line {}: the JSON value is never closed", n + 1));
                };
                value.push('\n');
                value.push_str(next);
            }
        } else if let Some(i) = value.find(" #") {
            value.truncate(i);
        }
        out.push((name.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    let mut in_string = false;
    let mut escaped = false;
    for c in s.chars() {
        match (in_string, c) {
            (true, '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (true, '"') if !escaped => in_string = false,
            (false, '"') => in_string = true,
            (false, '{' | '[') => depth += 1,
            (false, '}' | ']') => depth -= 1,
            _ => {}
        }
        escaped = false;
    }
    depth <= 0
}

/// The quick start's manifests for the tool's variables, with its notes and the tool's own
/// differences as comments.
pub(super) fn import(
    tool: Tool,
    env: &dyn Fn(&str) -> Option<String>,
    prefixed: bool,
) -> Result<Imported, String> {
    let only = |name: &str| if reads(tool, name) { env(name) } else { None };
    let qs = QuickStart::from_env(&only)?.ok_or_else(|| match tool {
        Tool::Workers => "no keys: LOAD_BALANCER_API_KEYS is not set".to_string(),
        _ => {
            "no keys: set OPENAI_API_KEYS, ANTHROPIC_API_KEYS, OPENAI_API_KEY or ANTHROPIC_API_KEY"
                .to_string()
        }
    })?;
    let mut imported = Imported::default();
    imported.header.extend(qs.notes().iter().cloned());
    for (pool, variable, ids, _) in qs.summary() {
        imported.header.push(format!(
            "{variable} -> pool {pool}, key ids {} (in the order of the variable)",
            ids.join(", ")
        ));
    }
    if tool == Tool::Workers && !prefixed {
        imported.header.push(
            "URLs: give --strip-prefix /YOUR-UUID/lb to keep /:uuid/lb/v1/messages working unchanged; without it, clients call /v1/messages."
                .into(),
        );
    }
    match tool {
        Tool::Workers => imported.header.extend(
            [
                "Statistics live in the proxy (GET /status, /metrics on the admin port), not in Cloudflare KV: \
                 they restart at zero with the proxy; in a cluster the controller sums them over replicas in the ApiKeyPool's status.",
                "Management: GET .../load-balancer/status, .../load-balancer/config and POST .../load-balancer/reset answer on the \
                 admin port (127.0.0.1:9901), in the Workers' shapes, with keys by id instead of by value.",
                "Failing keys: a key failing more than half of at least 10 requests is disabled for 60 s (doubling on repeat), \
                 then tried again (the Workers re-enabled it after a success); a 429 cools it for Retry-After.",
            ]
            .map(String::from),
        ),
        _ => {
            imported.header.extend(
                [
                    "Port: the Python proxy listened on 8082; run keyway-proxy --listen 127.0.0.1:8082 to keep the clients' address.",
                    "GET /health and GET /stats answer on the admin port (127.0.0.1:9901) in the Python proxy's shapes.",
                    "Requests are forwarded as they are: an Anthropic-format request for a gpt-* model is not translated to OpenAI's format \
                     (the Python proxy did); send each provider's own format.",
                ]
                .map(String::from),
            );
            if let Some(level) = env("LOG_LEVEL") {
                imported.header.push(format!(
                    "LOG_LEVEL={level}: set KEYWAY_LOG={} instead",
                    level.trim().to_ascii_lowercase()
                ));
            }
        }
    }
    for value in qs.documents(true) {
        let comments = comments(tool, &value);
        imported.docs.push(Doc { comments, value });
    }
    Ok(imported)
}

fn comments(tool: Tool, doc: &Value) -> Vec<String> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    match (tool, kind) {
        (Tool::Workers, "ApiKeyPool") => {
            let selection = doc
                .pointer("/spec/selection")
                .and_then(Value::as_str)
                .unwrap_or("roundRobin");
            let mut out = vec![format!(
                "LOAD_BALANCER_STRATEGY -> selection: {selection} (round-robin -> roundRobin, weighted -> weighted, \
                 time-window -> timeWindow with LOAD_BALANCER_WINDOW_SIZE minutes as timeWindowSeconds)"
            )];
            if selection == "weighted" {
                out.push(
                    "weighted: smooth, deterministic shares in proportion to each key's weight (key:weight)".into(),
                );
            }
            out
        }
        (Tool::LmProxy, "ApiKeyPool") => {
            vec!["Keys are used in turn (roundRobin), as the Python proxy's round-robin iterator.".into()]
        }
        (Tool::LmProxy, "LoadBalancerPool") if doc.pointer("/spec/backends").is_some() => vec![
            "SERVICE_ENDPOINTS -> backends, balanced round robin. Endpoints ending in /v1 stay as they are: \
             /v1/chat/completions goes to .../v1/chat/completions, not /v1/v1."
                .into(),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dotenv_files_as_the_seeds_write_them() {
        let text = r#"# Multiple API Keys (comma-separated)
OPENAI_API_KEYS="sk-key1,sk-key2,sk-key3"
export ANTHROPIC_API_KEYS='sk-ant-key1,sk-ant-key2'

SERVICE_ENDPOINTS={
  "openai": [
    "https://api.openai.com/v1"
  ]
}
LOAD_BALANCER_WINDOW_SIZE=5  # 5 minutes
OTHER='{
  "a": 1
}'
"#;
        let vars = parse(text).unwrap();
        let get = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("OPENAI_API_KEYS"), Some("sk-key1,sk-key2,sk-key3"));
        assert_eq!(get("ANTHROPIC_API_KEYS"), Some("sk-ant-key1,sk-ant-key2"));
        let endpoints: serde_json::Value =
            serde_json::from_str(get("SERVICE_ENDPOINTS").unwrap()).unwrap();
        assert_eq!(endpoints["openai"][0], "https://api.openai.com/v1");
        assert_eq!(get("LOAD_BALANCER_WINDOW_SIZE"), Some("5"));
        assert_eq!(get("OTHER"), Some("{\n  \"a\": 1\n}"));

        let err = parse("A=1\nB='sk-secret-unclosed\n").unwrap_err();
        assert!(
            err.contains("line 2") && !err.contains("sk-secret"),
            "{err}"
        );
        assert!(parse("not a line").unwrap_err().contains("line 1"));
    }
}
