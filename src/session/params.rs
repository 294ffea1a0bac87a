//! Validation of a `POST /v1/sessions` body into [`SessionOptions`].
//!
//! Owns the rules for every create field: which are honoured, which are refused because
//! ingot does not implement them, and the error text that names the field. It must not
//! touch the registry or launch anything.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::vocab::Dimensions;

/// Largest window side accepted.
pub(crate) const MAX_DIMENSION: u64 = 16_384;
/// Longest user agent accepted, in bytes.
pub(crate) const MAX_USER_AGENT_LEN: usize = 1_024;
/// Longest `proxyUrl` accepted, in bytes.
pub(crate) const MAX_PROXY_URL_LEN: usize = 2048;

/// What a create request asked for, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// The id the client chose, if it chose one.
    pub session_id: Option<Uuid>,
    /// How long the session may live, in milliseconds.
    pub timeout_ms: u64,
    /// `userAgent`.
    pub user_agent: Option<String>,
    /// The page size.
    pub dimensions: Dimensions,
    /// The proxy as Chromium's `--proxy-server` takes it: `scheme://host:port`.
    pub proxy_server: Option<String>,
    /// The `Proxy-Authorization` that proxy wants, when `proxyUrl` has a user and password.
    pub proxy_authorization: Option<ProxyAuthorization>,
    /// `fullscreen`: a 1920×1080 page that fills its screen, whatever `dimensions` says.
    pub fullscreen: bool,
    /// `sessionContext`: cookies and web storage to load before the session is handed over.
    pub context: Option<super::context::SessionContext>,
    /// `inactivityTimeout`: the session is released once no client has sent a CDP message
    /// for this long, in milliseconds. `None`: off.
    pub inactivity_timeout_ms: Option<u64>,
    /// `headless: false`: full Chromium, headful, on a virtual display of its own.
    pub headful: bool,
}

impl SessionOptions {
    /// Whether a pooled browser (default flags) can serve this session.
    pub fn poolable(&self) -> bool {
        self.user_agent.is_none()
            && !self.headful
            && self.proxy_server.is_none()
            && self.dimensions == Dimensions::default()
    }
}

/// A proxy's `Proxy-Authorization` value (`Basic …`). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyAuthorization(pub String);

impl std::fmt::Debug for ProxyAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyAuthorization(<hidden>)")
    }
}

/// A create body that cannot be honoured, naming the field at fault (as the client wrote
/// it; the message shows odd names quoted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", shown_name(field))]
pub struct InvalidField {
    /// The field as the client named it (`dimensions.width` for nested ones).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Limits that come from the gateway's configuration.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLimits {
    /// When the body names none.
    pub default_ms: u64,
    /// Shortest accepted.
    pub min_ms: u64,
    /// Longest accepted (`--max-timeout-ms`).
    pub max_ms: u64,
}

/// The create fields ingot honours.
pub(crate) const HONOURED: [&str; 9] = [
    "sessionId",
    "sessionContext",
    "fullscreen",
    "timeout",
    "inactivityTimeout",
    "userAgent",
    "dimensions",
    "proxyUrl",
    "headless",
];

/// Steel fields that ingot does not implement. Each is accepted only at its default value;
/// anything else is refused rather than silently ignored.
pub(crate) const UNSUPPORTED: &[&str] = &[
    "useProxy",
    "blockAds",
    "solveCaptcha",
    "isSelenium",
    "region",
    "stealthConfig",
    "concurrency",
    "optimizeBandwidth",
    "debugConfig",
    "deviceConfig",
    "credentials",
    "extensionIds",
    "profileId",
    "persistProfile",
    "namespace",
    "projectId",
    "experimentalFeatures",
    "caCertificates",
];

/// Whether an unsupported field's value is what Steel treats as "off".
fn is_default_value(field: &str, value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => {
            o.is_empty()
                || (field == "deviceConfig"
                    && o.len() == 1
                    && o.get("device") == Some(&Value::from("desktop")))
        }
        Value::Number(n) => field == "concurrency" && n.as_u64() == Some(1),
        Value::String(_) | Value::Bool(true) => false,
    }
}

/// Parses and validates a create body. An empty body means "all defaults".
pub fn parse_create_body(
    body: &[u8],
    limits: TimeoutLimits,
) -> Result<SessionOptions, InvalidField> {
    let object = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(Value::Null) => Map::new(),
            Ok(_) => return Err(invalid("body", "must be a JSON object")),
            Err(e) => return Err(invalid("body", format!("is not valid JSON: {e}"))),
        }
    };
    parse_create_object(&object, limits)
}

fn parse_create_object(
    body: &Map<String, Value>,
    limits: TimeoutLimits,
) -> Result<SessionOptions, InvalidField> {
    check_field_names(body)?;
    let proxy = match body.get("proxyUrl") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(proxy_server(s)?),
        Some(_) => {
            return Err(invalid(
                "proxyUrl",
                "must be a string such as http://proxy.example:8080",
            ));
        }
    };
    let options = SessionOptions {
        session_id: session_id(body.get("sessionId"))?,
        timeout_ms: timeout_ms(body.get("timeout"), limits)?,
        user_agent: user_agent(body.get("userAgent"))?,
        dimensions: match fullscreen(body.get("fullscreen"))? {
            true => {
                dimensions(body.get("dimensions"))?;
                Dimensions::default()
            }
            false => dimensions(body.get("dimensions"))?,
        },
        fullscreen: fullscreen(body.get("fullscreen"))?,
        context: match body.get("sessionContext") {
            None => None,
            Some(value) => super::context::SessionContext::parse(value)?,
        },
        inactivity_timeout_ms: inactivity_timeout_ms(body.get("inactivityTimeout"))?,
        headful: headful(body.get("headless"))?,
        proxy_server: proxy.as_ref().map(|(server, _)| server.clone()),
        proxy_authorization: proxy.and_then(|(_, authorization)| authorization),
    };
    Ok(options)
}

/// `headless`: `false` asks for a headful browser; `true`, `null` or nothing for the
/// default headless one.
fn headful(value: Option<&Value>) -> Result<bool, InvalidField> {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(true)) => Ok(false),
        Some(Value::Bool(false)) => Ok(true),
        Some(_) => Err(invalid("headless", "must be a boolean")),
    }
}

/// Refuses unknown fields, and Steel fields ingot does not implement unless they are at
/// their default. Fields are checked in a stable order, so the same body always gets the
/// same error.
fn check_field_names(body: &Map<String, Value>) -> Result<(), InvalidField> {
    let mut keys: Vec<&String> = body.keys().collect();
    keys.sort();
    for key in keys {
        if HONOURED.contains(&key.as_str()) {
            continue;
        }
        if !UNSUPPORTED.contains(&key.as_str()) {
            return Err(invalid(key, "is not a known session option"));
        }
        if !is_default_value(key, &body[key.as_str()]) {
            return Err(invalid(key, "is not supported by ingot; leave it unset"));
        }
    }
    Ok(())
}

fn session_id(value: Option<&Value>) -> Result<Option<Uuid>, InvalidField> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Uuid::parse_str(s).map(Some).map_err(|_| {
            invalid(
                "sessionId",
                "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000",
            )
        }),
        Some(_) => Err(invalid("sessionId", "must be a string holding a UUID")),
    }
}

fn timeout_ms(value: Option<&Value>, limits: TimeoutLimits) -> Result<u64, InvalidField> {
    let n = match value {
        None | Some(Value::Null) => return Ok(limits.default_ms),
        Some(Value::Number(n)) => n,
        Some(_) => return Err(invalid("timeout", "must be a number of milliseconds")),
    };
    let ms = whole_number(n)
        .ok_or_else(|| invalid("timeout", "must be a whole number of milliseconds"))?;
    match u64::try_from(ms) {
        Ok(ms) if (limits.min_ms..=limits.max_ms).contains(&ms) => Ok(ms),
        _ => Err(invalid(
            "timeout",
            format!(
                "must be between {} and {} milliseconds, got {n}",
                limits.min_ms, limits.max_ms
            ),
        )),
    }
}

/// Parses the body of a timeout change, `{"timeout": <ms>}`: the session's new total
/// life, within the same limits as at create.
pub(crate) fn parse_timeout_body(body: &[u8], limits: TimeoutLimits) -> Result<u64, InvalidField> {
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(invalid(
                "body",
                "must be a JSON object such as {\"timeout\": 600000}",
            ));
        }
        Err(e) => return Err(invalid("body", format!("is not valid JSON: {e}"))),
    };
    if let Some(other) = object.keys().find(|k| k.as_str() != "timeout") {
        return Err(invalid(other, "is not known here; send only timeout"));
    }
    match object.get("timeout") {
        None | Some(Value::Null) => Err(invalid(
            "timeout",
            "is required: the session's new total life in milliseconds",
        )),
        value => timeout_ms(value, limits),
    }
}

fn fullscreen(value: Option<&Value>) -> Result<bool, InvalidField> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid("fullscreen", "must be a boolean")),
    }
}

/// Shortest and longest `inactivityTimeout`, in milliseconds (1 s to 24 h).
pub(crate) const INACTIVITY_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;

fn inactivity_timeout_ms(value: Option<&Value>) -> Result<Option<u64>, InvalidField> {
    let n = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(_) => {
            return Err(invalid(
                "inactivityTimeout",
                "must be a number of milliseconds",
            ));
        }
    };
    let ms = whole_number(n).ok_or_else(|| {
        invalid(
            "inactivityTimeout",
            "must be a whole number of milliseconds",
        )
    })?;
    match u64::try_from(ms) {
        Ok(ms) if INACTIVITY_MS.contains(&ms) => Ok(Some(ms)),
        _ => Err(invalid(
            "inactivityTimeout",
            format!(
                "must be between {} and {} milliseconds, got {n}",
                INACTIVITY_MS.start(),
                INACTIVITY_MS.end()
            ),
        )),
    }
}

fn user_agent(value: Option<&Value>) -> Result<Option<String>, InvalidField> {
    let s = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid("userAgent", "must be a string")),
    };
    if s.is_empty() || s.len() > MAX_USER_AGENT_LEN {
        return Err(invalid(
            "userAgent",
            format!("must be 1 to {MAX_USER_AGENT_LEN} characters long"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid("userAgent", "must not contain control characters"));
    }
    Ok(Some(s.clone()))
}

fn dimensions(value: Option<&Value>) -> Result<Dimensions, InvalidField> {
    let d = match value {
        None | Some(Value::Null) => return Ok(Dimensions::default()),
        Some(Value::Object(d)) => d,
        Some(_) => return Err(invalid("dimensions", "must be an object {width, height}")),
    };
    if let Some(key) = d.keys().find(|k| *k != "width" && *k != "height") {
        return Err(invalid(
            &format!("dimensions.{key}"),
            "is not a known field; use width and height",
        ));
    }
    Ok(Dimensions {
        width: dimension(d, "width")?,
        height: dimension(d, "height")?,
    })
}

fn dimension(d: &Map<String, Value>, key: &str) -> Result<u32, InvalidField> {
    let field = format!("dimensions.{key}");
    match d.get(key) {
        None | Some(Value::Null) => Err(invalid(&field, "is required")),
        Some(Value::Number(n)) => match whole_number(n).and_then(|v| u64::try_from(v).ok()) {
            Some(v) if (1..=MAX_DIMENSION).contains(&v) => Ok(v as u32),
            _ => Err(invalid(
                &field,
                format!("must be a whole number from 1 to {MAX_DIMENSION}"),
            )),
        },
        Some(_) => Err(invalid(&field, "must be a number")),
    }
}

/// A JSON number that is a whole number, such as `60000` or `60000.0` (what `60 * 1000.0`
/// gives in Python or JavaScript).
fn whole_number(n: &serde_json::Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.into());
    }
    let f = n.as_f64()?;
    // The cast saturates, so a huge value stays out of every range.
    (f.fract() == 0.0).then_some(f as i128)
}

/// A client's field name as an error message shows it: as is when it looks like a name,
/// else quoted and escaped; cut to 64 characters either way.
fn shown_name(key: &str) -> String {
    let short: String = key.chars().take(64).collect();
    let plain = !short.is_empty()
        && short
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let cut = if short.len() < key.len() { "…" } else { "" };
    if plain {
        format!("{short}{cut}")
    } else {
        format!("{short:?}{cut}")
    }
}

/// Turns a `proxyUrl` into Chromium's `--proxy-server` value.
/// `proxyUrl` as Chromium's `--proxy-server` takes it, and the `Proxy-Authorization` its
/// user and password make (http proxies only).
fn proxy_server(raw: &str) -> Result<(String, Option<ProxyAuthorization>), InvalidField> {
    const MAX_HOST: usize = 253;
    if raw.len() > MAX_PROXY_URL_LEN {
        return Err(invalid(
            "proxyUrl",
            format!("is longer than {MAX_PROXY_URL_LEN} characters"),
        ));
    }
    let url =
        url::Url::parse(raw).map_err(|e| invalid("proxyUrl", format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https" | "socks4" | "socks5") {
        return Err(invalid(
            "proxyUrl",
            "scheme must be http, https, socks4 or socks5",
        ));
    }
    let authorization = proxy_authorization(&url)?;
    if url.path() != "/" && !url.path().is_empty()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(invalid(
            "proxyUrl",
            "must be scheme://host:port with no path or query",
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| invalid("proxyUrl", "must name a host"))?;
    if host.len() > MAX_HOST || host.split('.').any(|label| label.len() > 63) {
        return Err(invalid(
            "proxyUrl",
            "host name is longer than DNS allows (253 characters, 63 per label)",
        ));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| invalid("proxyUrl", "must name a port"))?;
    Ok((format!("{}://{host}:{port}", url.scheme()), authorization))
}

/// `Basic base64(user:password)` from the URL's (percent-decoded) user and password.
fn proxy_authorization(url: &url::Url) -> Result<Option<ProxyAuthorization>, InvalidField> {
    use base64::Engine;
    if url.username().is_empty() && url.password().is_none() {
        return Ok(None);
    }
    if url.scheme() != "http" {
        return Err(invalid(
            "proxyUrl",
            "a user and password are supported for http:// proxies only",
        ));
    }
    let decode = |s: &str| {
        percent_decode(s).ok_or_else(|| invalid("proxyUrl", "user or password is not valid UTF-8"))
    };
    let user = decode(url.username())?;
    let password = decode(url.password().unwrap_or_default())?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Ok(Some(ProxyAuthorization(format!("Basic {token}"))))
}

fn percent_decode(s: &str) -> Option<String> {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TimeoutLimits = TimeoutLimits {
        default_ms: 300_000,
        min_ms: 1_000,
        max_ms: 86_400_000,
    };

    fn parse(body: &str) -> Result<SessionOptions, InvalidField> {
        parse_create_body(body.as_bytes(), LIMITS)
    }

    #[test]
    fn empty_body_gives_defaults() {
        for body in ["", "  ", "{}", "null"] {
            let o = parse(body).unwrap();
            assert_eq!(o.timeout_ms, 300_000);
            assert_eq!(
                o.dimensions,
                Dimensions {
                    width: 1920,
                    height: 1080
                }
            );
            assert_eq!(o.session_id, None);
        }
    }

    #[test]
    fn honoured_fields() {
        assert!(parse(r#"{"headless":false}"#).unwrap().headful);
        assert!(!parse(r#"{"headless":null}"#).unwrap().headful);
        assert!(!parse(r#"{"headless":false}"#).unwrap().poolable());
        let o = parse(r#"{"sessionId":"123e4567-e89b-12d3-a456-426614174000","timeout":60000,"userAgent":"ua/1","dimensions":{"width":1280,"height":800},"proxyUrl":"http://127.0.0.1:8080","headless":true,"useProxy":false,"blockAds":false,"region":null}"#).unwrap();
        assert_eq!(o.timeout_ms, 60_000);
        assert_eq!(o.user_agent.as_deref(), Some("ua/1"));
        assert_eq!(
            o.dimensions,
            Dimensions {
                width: 1280,
                height: 800
            }
        );
        assert_eq!(o.proxy_server.as_deref(), Some("http://127.0.0.1:8080"));
    }

    #[test]
    fn integral_floats_are_whole_numbers() {
        let o = parse(r#"{"timeout":60000.0,"dimensions":{"width":1280.0,"height":800}}"#).unwrap();
        assert_eq!(o.timeout_ms, 60_000);
        assert_eq!(
            o.dimensions,
            Dimensions {
                width: 1280,
                height: 800
            }
        );
        for body in [r#"{"timeout":-1}"#, r#"{"timeout":1e300}"#] {
            let err = parse(body).unwrap_err();
            assert!(err.reason.contains("between"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        for (body, field) in [
            (r#"{"timeout":10}"#, "timeout"),
            (r#"{"timeout":86400001}"#, "timeout"),
            (r#"{"timeout":"60000"}"#, "timeout"),
            (r#"{"timeout":1.5}"#, "timeout"),
            (r#"{"timeout":-1}"#, "timeout"),
            (r#"{"timeout":1e30}"#, "timeout"),
            (r#"{"sessionId":"nope"}"#, "sessionId"),
            (r#"{"sessionId":7}"#, "sessionId"),
            (
                r#"{"dimensions":{"width":0,"height":10}}"#,
                "dimensions.width",
            ),
            (r#"{"dimensions":{"width":100}}"#, "dimensions.height"),
            (r#"{"headless":"no"}"#, "headless"),
            (r#"{"solveCaptcha":true}"#, "solveCaptcha"),
            (r#"{"useProxy":true}"#, "useProxy"),
            (
                r#"{"sessionContext":{"cookies":{}}}"#,
                "sessionContext.cookies",
            ),
            (r#"{"region":"us-east"}"#, "region"),
            (
                r#"{"stealthConfig":{"humanizeInteractions":true}}"#,
                "stealthConfig",
            ),
            (r#"{"proxyUrl":"socks5://u:p@127.0.0.1:8080"}"#, "proxyUrl"),
            (r#"{"proxyUrl":"ftp://127.0.0.1:21"}"#, "proxyUrl"),
            (r#"{"userAgent":"a\nb"}"#, "userAgent"),
            (r#"{"bogus":1}"#, "bogus"),
            (r#"[1]"#, "body"),
            (r#"{"#, "body"),
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.field, field, "body {body}: {err}");
        }
    }
}

#[cfg(test)]
mod proxy_credentials {
    use super::*;

    #[test]
    fn an_http_proxy_with_credentials_keeps_them_out_of_the_flag() {
        let (server, auth) = proxy_server("http://al%40ice:p%3Ass+w@10.0.0.1:3128").expect("valid");
        assert_eq!(server, "http://10.0.0.1:3128");
        // base64("al@ice:p:ss+w")
        assert_eq!(
            auth,
            Some(ProxyAuthorization("Basic YWxAaWNlOnA6c3Mrdw==".into()))
        );
        assert!(!format!("{auth:?}").contains("YWxA"), "Debug hides it");
        assert_eq!(proxy_server("http://10.0.0.1:3128").expect("valid").1, None);
    }
}
