//! Key injection: remove whatever credential the client sent where the pool puts keys, then
//! put the chosen key there (header, query parameter or JSON body field).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use keyway_api::model::Auth;
use keyway_api::secret::SecretValue;

/// Removes the client's own credential from the header the pool injects into. Query and body
/// credentials are replaced when the key is injected.
pub fn strip_client_credential(auth: &Auth, headers: &mut HeaderMap) {
    if let Auth::Header { name, .. } = auth {
        headers.remove(name.as_str());
    }
}

/// Puts the key into the header, or returns the rewritten query string (the client's own
/// parameter of that name removed). Body fields are injected by [`inject_body`].
pub fn inject(
    auth: &Auth,
    key: &SecretValue,
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Option<String> {
    match auth {
        Auth::Header { name, prefix } => {
            let mut value = String::with_capacity(prefix.len() + key.expose().len());
            value.push_str(prefix);
            value.push_str(key.expose());
            // Validated at config time: no control characters. Marked sensitive so that
            // HPACK never indexes it and Debug output hides it.
            if let (Ok(name), Ok(mut v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                v.set_sensitive(true);
                headers.insert(name, v);
            }
            query.map(str::to_string)
        }
        Auth::Query { param } => {
            let mut out = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                if k != param.as_str() {
                    out.append_pair(&k, &v);
                }
            }
            out.append_pair(param, key.expose());
            Some(out.finish())
        }
        Auth::BodyField { .. } => query.map(str::to_string),
    }
}

/// The body with the key in its field (`Auth::BodyField`), replacing the client's own value.
/// `None` when the body is not a JSON object.
pub fn inject_body(auth: &Auth, key: &SecretValue, body: &Bytes) -> Option<Bytes> {
    match auth {
        Auth::BodyField { field } => {
            crate::usage::set_json_field(body, field, key.expose()).map(Bytes::from)
        }
        _ => Some(body.clone()),
    }
}
