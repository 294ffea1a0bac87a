//! Fuzzing of everything that parses untrusted text: the create-body parser, session-id
//! parsing and API-key loading and checking run under proptest in-process (no panics, and
//! every answer is one the API documents); query strings go through a real gateway, a few
//! hundred seeded garbage queries against one live session, because a gateway round trip is
//! too slow for proptest's case counts.

use std::time::{Duration, Instant};

use crate::common::*;
use ingot::validation::{
    KeyRing, MIN_KEY_LEN, SessionOptions, TimeoutLimits, parse_create_body, parse_id,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const LIMITS: TimeoutLimits = TimeoutLimits {
    default_ms: 300_000,
    min_ms: 1_000,
    max_ms: 86_400_000,
};

/// Fields a create body may carry, honoured or refused-unless-default.
const FIELDS: &[&str] = &[
    "sessionId",
    "timeout",
    "userAgent",
    "dimensions",
    "proxyUrl",
    "headless",
    "solveCaptcha",
    "useProxy",
    "blockAds",
    "region",
    "sessionContext",
    "stealthConfig",
    "isSelenium",
    "inactivityTimeout",
    "concurrency",
    "deviceConfig",
    "optimizeBandwidth",
];

/// What every successful parse must satisfy, whatever the input.
fn check_options(o: &SessionOptions) -> Result<(), TestCaseError> {
    prop_assert!((LIMITS.min_ms..=LIMITS.max_ms).contains(&o.timeout_ms));
    prop_assert!((1..=16_384).contains(&o.dimensions.width));
    prop_assert!((1..=16_384).contains(&o.dimensions.height));
    if let Some(ua) = &o.user_agent {
        prop_assert!(!ua.is_empty() && ua.len() <= 1024);
        prop_assert!(!ua.chars().any(char::is_control), "{ua:?}");
    }
    if let Some(p) = &o.proxy_server {
        let scheme = p.split("://").next().unwrap_or("");
        prop_assert!(
            ["http", "https", "socks4", "socks5"].contains(&scheme),
            "{p}"
        );
        // It goes on Chromium's command line: nothing that could smuggle another flag.
        prop_assert!(!p.contains(char::is_whitespace), "{p:?}");
        prop_assert!(!p.contains('@'), "credentials kept: {p}");
    }
    Ok(())
}

/// Parses bytes; checks the invariants of either outcome; returns the result.
fn parse_checked(body: &[u8]) -> Result<Result<SessionOptions, String>, TestCaseError> {
    let first = parse_create_body(body, LIMITS);
    // Deterministic: the same body always gets the same answer.
    prop_assert_eq!(&first, &parse_create_body(body, LIMITS));
    match first {
        Ok(o) => {
            check_options(&o)?;
            Ok(Ok(o))
        }
        Err(e) => {
            // An empty field name is only possible for a body with an empty key (`{"": 1}`),
            // which gets `"": is not a known session option`.
            prop_assert!(
                !e.field.is_empty() || body.windows(3).any(|w| w == b"\"\":"),
                "error names no field: {e}"
            );
            prop_assert!(!e.reason.is_empty(), "error gives no reason: {e}");
            // The message starts with the field, quoted when it is not a plain name.
            let short: String = e.field.chars().take(64).collect();
            let message = e.to_string();
            prop_assert!(
                message.starts_with(&short) || message.starts_with(&format!("{short:?}")),
                "message does not start with the field: {message}"
            );
            Ok(Err(e.field))
        }
    }
}

/// Any JSON value, nested up to a few levels, with strings that look like the values the
/// fields want (UUIDs, URLs, user agents) as well as junk.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..100_000).prop_map(Value::from),
        prop_oneof![
            Just(1000.0),
            Just(1e300),
            Just(-0.0),
            Just(0.5),
            Just(1920.0)
        ]
        .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        "[a-z0-9:/._@-]{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("123e4567-e89b-12d3-a456-426614174000"),
            Just("{123e4567-e89b-12d3-a456-426614174000}"),
            Just("urn:uuid:123e4567-e89b-12d3-a456-426614174000"),
            Just("http://127.0.0.1:8080"),
            Just("socks5://[::1]:1080"),
            Just("http://u:p@host:1"),
            Just("http://host:99999"),
            Just("http:// host --flag"),
            Just("Mozilla/5.0 ingot"),
            Just("desktop"),
            Just(""),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An object key: mostly real field names, sometimes junk.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        2 => prop_oneof![Just("width"), Just("height"), Just("device"), Just("cookies")]
            .prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

/// A create body: an object with real field names and random values, `dimensions` often
/// an object with random `width` and `height`.
fn create_object() -> impl Strategy<Value = Map<String, Value>> {
    let dimensions = (
        prop::option::of(any_json()),
        prop::option::of(any_json()),
        prop::option::of(any_json()),
    )
        .prop_map(|(w, h, extra)| {
            let mut d = Map::new();
            if let Some(w) = w {
                d.insert("width".into(), w);
            }
            if let Some(h) = h {
                d.insert("height".into(), h);
            }
            if let Some(x) = extra {
                d.insert("depth".into(), x);
            }
            Value::Object(d)
        });
    (
        prop::collection::vec((key(), any_json()), 0..8),
        prop::option::of(dimensions),
    )
        .prop_map(|(fields, dimensions)| {
            let mut o: Map<String, Value> = fields.into_iter().collect();
            if let Some(d) = dimensions {
                o.insert("dimensions".into(), d);
            }
            o
        })
}

/// Bodies that are valid, with the options they must give.
fn valid_body() -> impl Strategy<Value = (Value, SessionOptions)> {
    (
        prop::option::of(any::<u128>()),
        prop::option::of(1_000u64..=86_400_000),
        prop::option::of("[ -~]{1,64}"),
        prop::option::of((1u32..=16_384, 1u32..=16_384)),
        prop::option::of((
            prop::sample::select(&["http", "https", "socks4", "socks5"][..]),
            "[a-z][a-z0-9]{0,10}(\\.[a-z]{2,5})?",
            1u16..,
        )),
        any::<bool>(),
    )
        .prop_map(|(id, timeout, ua, dims, proxy, defaults)| {
            let id = id.map(uuid::Uuid::from_u128);
            let mut body = json!({});
            if let Some(id) = id {
                body["sessionId"] = id.to_string().into();
            }
            if let Some(t) = timeout {
                body["timeout"] = t.into();
            }
            if let Some(ua) = &ua {
                body["userAgent"] = ua.clone().into();
            }
            if let Some((w, h)) = dims {
                body["dimensions"] = json!({"width": w, "height": h});
            }
            if let Some((scheme, host, port)) = &proxy {
                body["proxyUrl"] = format!("{scheme}://{host}:{port}").into();
            }
            if defaults {
                // Steel options ingot does not implement, at their default values.
                for (k, v) in [
                    ("solveCaptcha", json!(false)),
                    ("useProxy", json!(false)),
                    ("blockAds", json!(null)),
                    ("region", json!(null)),
                    ("sessionContext", json!({})),
                    ("stealthConfig", json!({})),
                    ("extensionIds", json!([])),
                    ("concurrency", json!(1)),
                    ("deviceConfig", json!({"device": "desktop"})),
                    ("headless", json!(true)),
                ] {
                    body[k] = v;
                }
            }
            let expected = SessionOptions {
                session_id: id,
                timeout_ms: timeout.unwrap_or(LIMITS.default_ms),
                user_agent: ua,
                dimensions: dims
                    .map(|(width, height)| ingot::Dimensions { width, height })
                    .unwrap_or_default(),
                proxy_server: proxy.map(|(scheme, host, port)| {
                    // The URL parser drops a scheme's default port but ingot puts it back.
                    format!("{scheme}://{host}:{port}")
                }),
                proxy_authorization: None,
                inactivity_timeout_ms: None,
                fullscreen: false,
                context: None,
                headful: false,
            };
            (body, expected)
        })
}

/// Tokens for the token-soup body: JSON pieces, field names, awkward numbers, broken escapes
/// and bytes that are not UTF-8.
const SOUP: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b"null",
    b"true",
    b"false",
    b" ",
    b"\n",
    b"\"timeout\"",
    b"\"dimensions\"",
    b"\"width\"",
    b"\"height\"",
    b"\"userAgent\"",
    b"\"sessionId\"",
    b"\"proxyUrl\"",
    b"\"headless\"",
    b"\"region\"",
    b"\"useProxy\"",
    b"0",
    b"-0",
    b"1000",
    b"60000.0",
    b"1e999",
    b"-1e999",
    b"1e-999",
    b"18446744073709551616",
    b"99999999999999999999999999999999999999",
    b"0.5",
    b"NaN",
    b"Infinity",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"\"\\x\"",
    b"\"\xff\xfe\"",
    b"\xc3\x28",
    b"\xef\xbb\xbf",
    b"\"http://127.0.0.1:1\"",
    b"\"123e4567-e89b-12d3-a456-426614174000\"",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn create_body_parser_survives_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_checked(&body)?;
    }

    #[test]
    fn create_body_parser_survives_arbitrary_text(body in "\\PC{0,256}") {
        let _ = parse_checked(body.as_bytes())?;
    }

    /// JSON-ish token soup: nearly valid bodies, broken escapes, huge and odd numbers,
    /// invalid UTF-8 inside strings.
    #[test]
    fn create_body_parser_survives_token_soup(tokens in prop::collection::vec(prop::sample::select(SOUP), 0..40)) {
        let body: Vec<u8> = tokens.concat();
        let _ = parse_checked(&body)?;
    }

    /// Random values under the real field names: never a panic, and a refusal always names
    /// the field at fault, which is a key the body really has.
    #[test]
    fn create_body_parser_names_the_field_it_refuses(object in create_object()) {
        let body = serde_json::to_vec(&Value::Object(object.clone())).expect("serialise");
        match parse_checked(&body)? {
            Ok(_) => {
                // Accepted: every field is known, and the unsupported ones are at defaults.
                for k in object.keys() {
                    prop_assert!(FIELDS.contains(&k.as_str()), "unknown field {k} accepted");
                }
            }
            Err(field) if field.starts_with("sessionContext.") => {
                // A field of the context: named by its path from the key the body has.
                // Keys may hold dots themselves: the named path starts with a key the
                // context has, followed by the end, a `.` or a `[`.
                let sub = &field["sessionContext.".len()..];
                let names_a_key = object
                    .get("sessionContext")
                    .and_then(Value::as_object)
                    .is_some_and(|c| {
                        c.keys().any(|k| {
                            sub.strip_prefix(k.as_str())
                                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                        })
                    });
                prop_assert!(names_a_key, "error names {field}, not in {object:?}");
            }
            Err(field) => {
                match field.strip_prefix("dimensions.") {
                    Some(sub) if object.get("dimensions").is_some_and(Value::is_object) => {
                        let dims = object["dimensions"].as_object().expect("object");
                        prop_assert!(
                            dims.contains_key(sub) || sub == "width" || sub == "height",
                            "error names {field}"
                        );
                    }
                    _ => prop_assert!(
                        object.contains_key(&field),
                        "error names {field}, not in {object:?}"
                    ),
                }
            }
        }
    }

    /// Any JSON at all (arrays, scalars, deep nesting) as the whole body.
    #[test]
    fn create_body_parser_survives_arbitrary_json(value in any_json()) {
        let body = serde_json::to_vec(&value).expect("serialise");
        let outcome = parse_checked(&body)?;
        if !matches!(value, Value::Object(_) | Value::Null) {
            prop_assert_eq!(outcome, Err("body".to_owned()));
        }
    }

    /// Valid bodies give exactly the options they ask for, so the parser is not just
    /// refusing everything.
    #[test]
    fn create_body_parser_accepts_valid_bodies((body, expected) in valid_body()) {
        let parsed = parse_create_body(&serde_json::to_vec(&body).expect("serialise"), LIMITS);
        prop_assert_eq!(parsed, Ok(expected), "body {}", body);
    }

    #[test]
    fn session_id_parsing_survives_arbitrary_strings(raw in prop_oneof![
        "\\PC{0,64}",
        "[0-9a-fA-F{}:urn-]{30,45}",
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
    ]) {
        match parse_id(&raw, "cursorId") {
            Ok(id) => prop_assert_eq!(Some(id), uuid::Uuid::parse_str(&raw).ok()),
            Err(e) => {
                prop_assert!(uuid::Uuid::parse_str(&raw).is_err());
                prop_assert_eq!(e.status.as_u16(), 400);
                prop_assert_eq!(e.code, "invalid_request");
                prop_assert!(e.message.starts_with("cursorId: "), "{}", e.message);
            }
        }
    }

    /// Every UUID spelling the uuid crate reads names the same session.
    #[test]
    fn session_id_parsing_accepts_every_spelling(n in any::<u128>()) {
        let id = uuid::Uuid::from_u128(n);
        for spelling in [
            id.hyphenated().to_string(),
            id.simple().to_string(),
            id.urn().to_string(),
            id.braced().to_string(),
            id.hyphenated().to_string().to_uppercase(),
        ] {
            prop_assert_eq!(parse_id(&spelling, "id").ok(), Some(id), "{}", spelling);
        }
    }

    /// Key lists of any text: loading never panics, and a ring that loads authenticates
    /// nothing but strings that are configured keys.
    #[test]
    fn key_ring_survives_arbitrary_lists(
        list in prop::option::of("\\PC{0,80}"),
        admin in prop::option::of("\\PC{0,40}"),
        presented in prop::collection::vec("\\PC{0,40}", 0..4),
    ) {
        if let Ok(ring) = KeyRing::load(None, list.as_deref(), admin.as_deref()) {
            let candidates: Vec<&str> = list
                .iter()
                .flat_map(|l| l.split(','))
                .chain(admin.as_deref())
                .map(str::trim)
                .collect();
            for p in &presented {
                if let Some(tenant) = ring.authenticate(p) {
                    // The presented string is one configured key, whole or after `name:`.
                    let configured = candidates.iter().any(|c| {
                        *c == p.as_str() || c.split_once(':').is_some_and(|(_, k)| k == p.as_str())
                    });
                    prop_assert!(configured, "{p:?} authenticated as {} from {list:?} / {admin:?}", tenant.name);
                }
            }
            prop_assert!(ring.authenticate("").is_none(), "the empty key authenticates");
        }
    }

    /// Well-formed key lists load, every key authenticates as its tenant, and a key that
    /// differs in one character does not.
    #[test]
    fn key_ring_authenticates_exactly_its_keys(
        keys in prop::collection::btree_map("[a-z][a-z0-9_.-]{0,15}", "[!-+\\--~]{16,40}", 1..6),
        admin in prop::option::of("[!-+\\--~]{16,40}"),
        flip in any::<prop::sample::Index>(),
    ) {
        // Keys must be unique too; drop the (rare) case where two coincide.
        let mut all: Vec<&String> = keys.values().chain(admin.iter()).collect();
        all.sort();
        all.dedup();
        prop_assume!(all.len() == keys.len() + usize::from(admin.is_some()));
        prop_assume!(!keys.contains_key("admin") || admin.is_none());
        let list = keys.iter().map(|(n, k)| format!("{n}:{k}")).collect::<Vec<_>>().join(",");
        let ring = KeyRing::load(None, Some(&list), admin.as_deref())
            .map_err(|e| TestCaseError::fail(format!("{list}: {e}")))?;
        prop_assert_eq!(ring.len(), all.len());
        for (name, key) in &keys {
            let tenant = ring.authenticate(key);
            prop_assert_eq!(tenant.as_ref().map(|t| &*t.name), Some(name.as_str()));
            prop_assert!(!tenant.expect("tenant").admin);
            let mut wrong: Vec<char> = key.chars().collect();
            let i = flip.index(wrong.len());
            wrong[i] = if wrong[i] == 'a' { 'b' } else { 'a' };
            let wrong: String = wrong.into_iter().collect();
            prop_assert!(ring.authenticate(&wrong).is_none() || keys.values().any(|k| *k == wrong));
        }
        if let Some(admin) = &admin {
            prop_assert!(ring.authenticate(admin).is_some_and(|t| t.admin && &*t.name == "admin"));
        }
    }
}

proptest! {
    // Each case writes a file: fewer cases.
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Key files of arbitrary bytes (not even UTF-8): loading never panics, and an error
    /// names the file.
    #[test]
    fn key_file_loading_survives_arbitrary_bytes(content in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(&path, &content).expect("write");
        match KeyRing::load(Some(&path), None, None) {
            Ok(ring) => {
                // Every loaded key came from a line at least MIN_KEY_LEN long.
                let text = String::from_utf8(content).expect("a file that loads is UTF-8");
                let longest = text.lines().map(|l| l.trim().len()).max().unwrap_or(0);
                prop_assert!(ring.is_empty() || longest >= MIN_KEY_LEN);
            }
            Err(e) => prop_assert!(e.to_string().contains(&path.display().to_string()), "{e}"),
        }
    }
}

/// A tiny seeded generator (xorshift64*), so the gateway fuzz is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.below(options.len())]
    }
}

/// Characters a request target may carry unencoded in its query (RFC 3986), so that what
/// reaches ingot is exactly this text.
const QUERY_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/?%";

/// One garbage query string: real and junk keys, repeated keys, values that are junk,
/// broken percent-encoding (`%`, `%zz`, encoded invalid UTF-8 and NUL), huge values.
fn garbage_query(rng: &mut Rng, live: &str) -> String {
    let keys = [
        "status",
        "limit",
        "cursorId",
        "sessionId",
        "from",
        "to",
        "apiKey",
        "tenant",
        "format",
        "x",
        "",
        "%73tatus",
        "limit%00",
        "%ff%fe",
        "a[]",
    ];
    let values = [
        "",
        "live",
        "released",
        "failed",
        "LIVE",
        "0",
        "1",
        "100",
        "101",
        "-1",
        "18446744073709551616",
        "1e3",
        "csv",
        "json",
        "xml",
        "2026-11-01T00:00:00Z",
        "2026-11-01T00:00:00+01:00",
        "2026-11-01T00:00:00 01:00",
        "9999-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "%",
        "%z",
        "%zz",
        "%C3%28",
        "%ED%A0%80",
        "%00",
        "%FF%FE%FD",
        "%25",
        "+",
        "=",
        "==",
        "&",
        "123e4567-e89b-12d3-a456-426614174000",
        "{123e4567-e89b-12d3-a456-426614174000}",
        "%7B%7D",
        "%22%5C",
    ];
    let mut q = String::new();
    let pairs = 1 + rng.below(6);
    for i in 0..pairs {
        if i > 0 {
            q.push_str(rng.pick(&["&", "&&", ";", "&=&"]));
        }
        let key = rng.pick(&keys);
        q.push_str(key);
        if rng.below(8) != 0 {
            q.push('=');
        }
        match rng.below(10) {
            0 => q.push_str(live),
            1 => {
                // Random characters, percent signs and all.
                for _ in 0..rng.below(40) {
                    q.push(QUERY_CHARS[rng.below(QUERY_CHARS.len())] as char);
                }
            }
            2 if q.len() < 10_000 => {
                // Huge: up to 40 KB, under the 64 KiB head limit.
                let n = 1 + rng.below(40_000);
                let unit = rng.pick(&["a", "%41", "%ff", "9", "%"]);
                q.push_str(&unit.repeat(n / unit.len().max(1)));
            }
            _ => q.push_str(rng.pick(&values)),
        }
    }
    q
}

/// Parses the gateway's answer; a 5xx, a non-JSON answer or a dropped connection fails.
async fn check_answer(gw: &Gateway, path: &str) -> u16 {
    let r = tokio::time::timeout(Duration::from_secs(20), gw.http.get(gw.url(path)).send())
        .await
        .unwrap_or_else(|_| panic!("no answer within 20 s to {path:.200}"))
        .unwrap_or_else(|e| panic!("connection failed for {path:.200}: {e}\n{}", gw.log_text()));
    let status = r.status().as_u16();
    let csv = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    let body = r
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("body of {path:.200} cut short: {e}"));
    assert!(
        (200..300).contains(&status) || (400..500).contains(&status),
        "{status} for {path:.300}: {}",
        String::from_utf8_lossy(&body)
    );
    if csv {
        assert_eq!(status, 200, "{path:.300}");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("date,sessions,"), "{path:.300}: {text}");
        assert!(
            text.lines().last().is_some_and(|l| l.starts_with("total,")),
            "{text}"
        );
        return status;
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{status} for {path:.300} is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    if status >= 400 {
        let message = json["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{status} without a message: {json}");
        assert_eq!(json["error"]["message"], json["message"], "{json}");
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_query_strings_get_json_answers_and_the_gateway_carries_on() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().expect("id").to_owned();
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("ws")).await;
    let page = cdp.attach_first_page().await;

    let mut rng = Rng(0x1a2b_3c4d_5e6f_7788);
    let endpoints = ["/v1/sessions", "/v1/usage", "/json/version"];
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let started = Instant::now();
    for n in 0..300 {
        let query = garbage_query(&mut rng, &id);
        let path = format!("{}?{query}", endpoints[n % endpoints.len()]);
        *by_status.entry(check_answer(&gw, &path).await).or_default() += 1;
    }
    // The fuzz must reach both sides: answers and refusals.
    let ok: usize = by_status.range(200..300).map(|(_, n)| n).sum();
    let refused: usize = by_status.range(400..500).map(|(_, n)| n).sum();
    assert!(
        ok >= 20 && refused >= 20,
        "too one-sided to mean anything: {by_status:?}"
    );
    eprintln!(
        "300 garbage queries in {:?}: {by_status:?}",
        started.elapsed()
    );

    // A few checks that the answers are the right ones, not merely well-formed.
    let (status, body) = gw.get("/v1/sessions?limit=%ff").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("limit"),
        "{body}"
    );
    let (status, body) = gw.get("/v1/sessions?status=live&status=failed").await;
    assert_eq!(status, 400, "repeated key: {body}");
    let (status, body) = gw.get("/v1/usage?from=%C3%28").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("from"),
        "{body}"
    );
    let (status, body) = gw.get(&format!("/json/version?sessionId={id}&x=%zz")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or("")
            .contains(&id),
        "{body}"
    );

    // Healthy afterwards, and the session works as before.
    let (status, _) = gw.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(gw.session(&id).await["status"], "live");
    assert_eq!(cdp.eval(&page, "6 * 7").await, json!(42));
    cdp.close().await;
    gw.release(&id).await;
    gw.assert_clean(secs(5)).await;
}
