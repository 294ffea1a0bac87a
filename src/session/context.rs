//! Steel's session context: the cookies and web storage of a session, read from a live
//! browser (`GET /v1/sessions/{id}/context`) and loaded into a new one before it is handed
//! over (`sessionContext` on create).
//!
//! Owns the context's validation and the CDP that reads and writes it, through a private
//! client of the browser ([`Driver`]). Loading never needs launch flags, so a pooled browser
//! serves a session with a context. It must not know HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::params::InvalidField;
use crate::cdp::driver::Driver;
use crate::cdp::mux::{CommandError, Mux};

/// Web storage: origin → key → value.
type Storage = BTreeMap<String, BTreeMap<String, String>>;

/// A context to load into a new session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionContext {
    /// Cookies as CDP's `Storage.setCookies` takes them.
    cookies: Vec<Value>,
    local: Storage,
    session: Storage,
}

/// What a page reports of its storage (evaluated in each open page).
const READ_STORAGE: &str = "({origin: location.origin, \
    local: Object.fromEntries(Object.entries(localStorage)), \
    session: Object.fromEntries(Object.entries(sessionStorage))})";
/// The body served for each origin while its storage is written: no script runs.
const EMPTY_PAGE_BASE64: &str = "PGh0bWw+PC9odG1sPg==";
/// Fields of a cookie that `Storage.setCookies` accepts.
const COOKIE_FIELDS: [&str; 13] = [
    "name",
    "value",
    "url",
    "domain",
    "path",
    "secure",
    "httpOnly",
    "sameSite",
    "expires",
    "priority",
    "sourceScheme",
    "sourcePort",
    "partitionKey",
];

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

impl SessionContext {
    /// Validates `sessionContext` from a create body, naming the field at fault.
    pub fn parse(value: &Value) -> Result<Option<SessionContext>, InvalidField> {
        let object = match value {
            Value::Null => return Ok(None),
            Value::Object(o) => o,
            _ => return Err(invalid("sessionContext", "must be an object")),
        };
        for key in object.keys() {
            match key.as_str() {
                "cookies" | "localStorage" | "sessionStorage" => {}
                // Only what a context read back says: nothing (`{}`), or `null`.
                "indexedDB"
                    if object[key]
                        .as_object()
                        .map_or(object[key].is_null(), Map::is_empty) => {}
                "indexedDB" => {
                    return Err(invalid(
                        "sessionContext.indexedDB",
                        "is not supported by ingot; leave it empty",
                    ));
                }
                _ => {
                    return Err(invalid(
                        format!("sessionContext.{key}"),
                        "is not a known field",
                    ));
                }
            }
        }
        let context = SessionContext {
            cookies: cookies(object.get("cookies"))?,
            local: storage(object.get("localStorage"), "localStorage")?,
            session: storage(object.get("sessionStorage"), "sessionStorage")?,
        };
        Ok((context != SessionContext::default()).then_some(context))
    }
}

fn cookies(value: Option<&Value>) -> Result<Vec<Value>, InvalidField> {
    let list = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("sessionContext.cookies", "must be an array")),
    };
    list.iter().enumerate().map(|(i, c)| cookie(i, c)).collect()
}

fn cookie(i: usize, value: &Value) -> Result<Value, InvalidField> {
    let field = |name: &str| format!("sessionContext.cookies[{i}].{name}");
    let object = value
        .as_object()
        .ok_or_else(|| invalid(format!("sessionContext.cookies[{i}]"), "must be an object"))?;
    for name in ["name", "value"] {
        if !object.get(name).is_some_and(Value::is_string) {
            return Err(invalid(field(name), "must be a string"));
        }
    }
    if !["domain", "url"]
        .iter()
        .any(|k| object.get(*k).is_some_and(Value::is_string))
    {
        return Err(invalid(field("domain"), "a cookie needs a domain or a url"));
    }
    let mut kept = Map::new();
    for name in COOKIE_FIELDS {
        match object.get(name) {
            None | Some(Value::Null) => {}
            // A session cookie reads back with expires -1; it is set without one.
            Some(Value::Number(n)) if name == "expires" && n.as_f64().is_some_and(|e| e <= 0.0) => {
            }
            Some(v) => {
                kept.insert(name.to_owned(), v.clone());
            }
        }
    }
    Ok(Value::Object(kept))
}

fn storage(value: Option<&Value>, name: &str) -> Result<Storage, InvalidField> {
    let origins = match value {
        None | Some(Value::Null) => return Ok(Storage::new()),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(invalid(
                format!("sessionContext.{name}"),
                "must be an object",
            ));
        }
    };
    let mut out = Storage::new();
    for (origin, items) in origins {
        let field = format!("sessionContext.{name}[{origin:?}]");
        let parsed = url::Url::parse(origin).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https") && u.origin().ascii_serialization() == *origin
        });
        if parsed.is_none() {
            return Err(invalid(
                field,
                "must be keyed by an origin such as https://example.com",
            ));
        }
        let items = items
            .as_object()
            .ok_or_else(|| invalid(field.clone(), "must be an object of strings"))?;
        let mut kept = BTreeMap::new();
        for (key, value) in items {
            let value = value
                .as_str()
                .ok_or_else(|| invalid(format!("{field}.{key}"), "must be a string"))?;
            kept.insert(key.clone(), value.to_owned());
        }
        out.insert(origin.clone(), kept);
    }
    Ok(out)
}

/// Reads the context of a live browser: the cookies of every browser context, and the web
/// storage of the origins its open pages show.
pub(crate) async fn read(mux: &Arc<Mux>) -> Result<Value, CommandError> {
    let mut driver = Driver::attach(mux).await?;
    let mut cookies = take_cookies(driver.call("Storage.getCookies", json!({}), None).await?);
    let contexts = driver
        .call("Target.getBrowserContexts", json!({}), None)
        .await?;
    for id in contexts["browserContextIds"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let reply = driver
            .call("Storage.getCookies", json!({"browserContextId": id}), None)
            .await?;
        cookies.extend(take_cookies(reply));
    }
    let (mut local, mut session) = (Map::new(), Map::new());
    for target in web_pages(&mut driver).await? {
        let page = driver.attach_page(&target).await?;
        let seen = driver.evaluate(&page, READ_STORAGE).await;
        let _ = driver
            .call("Target.detachFromTarget", json!({"sessionId": page}), None)
            .await;
        let Ok(seen) = seen else { continue };
        let Some(origin) = seen["origin"].as_str() else {
            continue;
        };
        for (into, items) in [
            (&mut local, &seen["local"]),
            (&mut session, &seen["session"]),
        ] {
            if items.as_object().is_some_and(|o| !o.is_empty()) {
                into.insert(origin.to_owned(), items.clone());
            }
        }
    }
    Ok(json!({
        "cookies": cookies,
        "localStorage": local,
        "sessionStorage": session,
        "indexedDB": {},
    }))
}

fn take_cookies(mut reply: Value) -> Vec<Value> {
    match reply["cookies"].take() {
        Value::Array(list) => list,
        _ => Vec::new(),
    }
}

/// The target ids of the pages that show an http(s) document.
async fn web_pages(driver: &mut Driver) -> Result<Vec<String>, CommandError> {
    let targets = driver.call("Target.getTargets", json!({}), None).await?;
    Ok(targets["targetInfos"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == "page")
        .filter(|t| {
            t["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
        })
        .filter_map(|t| t["targetId"].as_str().map(str::to_owned))
        .collect())
}

/// Loads `context` into a browser nobody uses yet: cookies first, then each origin's storage,
/// written in the first page from an empty document served for that origin (so no site
/// script runs), which then returns to `about:blank`.
pub(crate) async fn load(mux: &Arc<Mux>, context: &SessionContext) -> Result<(), CommandError> {
    let mut driver = Driver::attach(mux).await?;
    if !context.cookies.is_empty() {
        driver
            .call(
                "Storage.setCookies",
                json!({"cookies": context.cookies}),
                None,
            )
            .await?;
    }
    let origins: std::collections::BTreeSet<&String> =
        context.local.keys().chain(context.session.keys()).collect();
    if origins.is_empty() {
        return Ok(());
    }
    let page = driver.first_page().await?;
    let session = driver.attach_page(&page).await?;
    let patterns = json!({"patterns": [{"urlPattern": "*", "requestStage": "Request"}]});
    driver
        .call("Fetch.enable", patterns, Some(&session))
        .await?;
    for origin in origins {
        driver
            .navigate_fulfilled(&session, &format!("{origin}/"), EMPTY_PAGE_BASE64)
            .await?;
        let script = write_storage(context.local.get(origin), context.session.get(origin));
        driver.evaluate(&session, &script).await?;
    }
    driver
        .call("Fetch.disable", json!({}), Some(&session))
        .await?;
    driver
        .call(
            "Page.navigate",
            json!({"url": "about:blank"}),
            Some(&session),
        )
        .await?;
    driver
        .call(
            "Target.detachFromTarget",
            json!({"sessionId": session}),
            None,
        )
        .await
        .map(drop)
}

/// A script that writes `local` into `localStorage` and `session` into `sessionStorage`.
fn write_storage(
    local: Option<&BTreeMap<String, String>>,
    session: Option<&BTreeMap<String, String>>,
) -> String {
    let json = |items: Option<&BTreeMap<String, String>>| {
        serde_json::to_string(&items.cloned().unwrap_or_default()).unwrap_or_else(|_| "{}".into())
    };
    format!(
        "(() => {{ for (const [k, v] of Object.entries({})) localStorage.setItem(k, v); \
         for (const [k, v] of Object.entries({})) sessionStorage.setItem(k, v); return true; }})()",
        json(local),
        json(session)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_validated_naming_the_field() {
        let ok = json!({
            "cookies": [{"name": "a", "value": "1", "domain": "127.0.0.1", "expires": -1, "size": 2}],
            "localStorage": {"http://127.0.0.1:8080": {"token": "t"}},
            "indexedDB": {},
        });
        let context = SessionContext::parse(&ok)
            .expect("valid")
            .expect("not empty");
        assert_eq!(
            context.cookies,
            [json!({"name": "a", "value": "1", "domain": "127.0.0.1"})]
        );
        assert_eq!(SessionContext::parse(&json!({})).expect("empty"), None);
        for (bad, field) in [
            (json!([]), "sessionContext"),
            (json!({"cookies": {}}), "sessionContext.cookies"),
            (
                json!({"cookies": [{"value": "1", "domain": "d"}]}),
                "sessionContext.cookies[0].name",
            ),
            (
                json!({"cookies": [{"name": "a", "value": "1"}]}),
                "sessionContext.cookies[0].domain",
            ),
            (
                json!({"localStorage": {"not an origin": {}}}),
                "sessionContext.localStorage",
            ),
            (
                json!({"localStorage": {"http://a.example/path": {}}}),
                "sessionContext.localStorage",
            ),
            (
                json!({"sessionStorage": {"https://a.example": {"k": 1}}}),
                "sessionContext.sessionStorage",
            ),
            (
                json!({"indexedDB": {"https://a.example": []}}),
                "sessionContext.indexedDB",
            ),
            (json!({"indexedDB": 5}), "sessionContext.indexedDB"),
            (json!({"indexedDB": []}), "sessionContext.indexedDB"),
            (json!({"other": 1}), "sessionContext.other"),
        ] {
            let err = SessionContext::parse(&bad).expect_err("refused");
            assert!(err.field.starts_with(field), "{bad}: {err}");
        }
    }
}
