//! The OpenAPI 3.1 document of the HTTP API, served at `GET /v1/openapi.json` without an API
//! key (it is harmless metadata, as public as Steel's own API reference).
//!
//! Owns the assembly of the document: [`ApiDoc`] names every documented operation (one list,
//! `paths`) and the schemas no operation reaches by itself (another list, `schemas`); the
//! security schemes; the responses the middleware of `mod.rs` may give any operation (401,
//! 403, 431, and 408/413 where a body is read); the aliases with a trailing slash; and the
//! schemas of the request bodies, which have no Rust type because `session::params` parses
//! them by hand, so they are built here from params' own lists and limits, and from the
//! gateway's timeout limits when the document is served. Everything else is derived from the
//! code it describes: each operation from the `#[utoipa::path]` on its handler, each JSON
//! shape from `#[derive(ToSchema)]` on the type the handler serializes (`wire.rs`,
//! `error.rs`, the handlers' own answers).
//!
//! It must not change routing, middleware or what a handler does: it only describes them. A
//! new route needs its `#[utoipa::path]` and an entry in `paths`; a test fails otherwise.
//! Left out on purpose: the routes of `unsupported.rs`, which answer 501 and are not ingot's
//! API. The CDP WebSocket endpoints (`/`, `/devtools/browser/{id}`) are described as GETs
//! answering 101 to an upgrade, or an error before it.

use std::borrow::Cow;

use axum::Json;
use axum::extract::State;
use serde_json::Value;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder,
    Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, PathItem, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::AppState;
use super::error::ErrorJson;
use crate::session::params::{
    INACTIVITY_MS, MAX_DIMENSION, MAX_PROXY_URL_LEN, MAX_USER_AGENT_LEN, TimeoutLimits, UNSUPPORTED,
};
use crate::vocab::STEEL_RELEASE_REASONS;

/// Where the document is served.
pub(crate) const PATH: &str = "/v1/openapi.json";

/// The document. Add a route's handler to `paths`, and a schema that no operation names
/// (directly or through another schema) to `schemas`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ingot",
        description = "A self-hosted browser-session gateway that speaks Steel's sessions API. \
            Create a session, then drive its Chromium over CDP at its `websocketUrl`. \
            Every error answers `{\"message\", \"error\": {\"code\", \"message\"}}`.",
    ),
    paths(
        super::sessions::create,
        super::sessions::list,
        super::sessions::release_all,
        super::sessions::retrieve,
        super::sessions::release,
        super::sessions::set_timeout,
        super::sessions::live_details,
        super::sessions::context,
        super::viewer::computer,
        super::files::list,
        super::files::upload,
        super::files::download,
        super::files::archive,
        super::files::delete_one,
        super::files::delete_all,
        super::live::viewer,
        super::live::view,
        super::live::facts,
        super::live::thumbnail,
        super::live::socket,
        super::live::console,
        super::cdp::connect_by_query,
        super::cdp::connect_by_path,
        super::cdp::version_by_query,
        super::cdp::version_by_path,
        super::usage::usage,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
    ),
    components(schemas(ErrorJson, SessionContextJson)),
    modifiers(&Security, &MiddlewareAnswers, &EmptyMeansUnset, &TrailingSlashes, &SteelWords),
    tags(
        (name = "sessions", description = "Steel's sessions API"),
        (name = "cdp", description = "CDP discovery and the WebSocket endpoints clients connect to"),
        (name = "files", description = "Steel's session files: uploads and the pages' downloads"),
        (name = "viewer", description = "The live viewer (with a session's viewer token instead of an API key) and the console"),
        (name = "usage", description = "Billed minutes and traffic"),
        (name = "operations", description = "Probes and metrics: no API key, any `Host`"),
        (name = "meta", description = "This document"),
    ),
)]
pub(crate) struct ApiDoc;

/// The document as this gateway serves it: the timeout ranges are its own.
pub(crate) fn document(limits: TimeoutLimits) -> Document {
    let mut doc = ApiDoc::openapi();
    if let Some(components) = doc.components.as_mut() {
        components.schemas.insert(
            CreateSessionBody::name().into(),
            create_body(Some(limits)).into(),
        );
        components.schemas.insert(
            TimeoutBody::name().into(),
            timeout_body(Some(limits)).into(),
        );
    }
    doc
}

/// `GET /v1/openapi.json`: this document (OpenAPI 3.1), with this gateway's timeout limits.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)),
)]
pub(crate) async fn openapi_json(State(state): State<AppState>) -> Json<Document> {
    Json(document(state.limits))
}

/// The API key schemes: the header of REST calls, and the query parameter of WebSocket and
/// `/json` requests.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            super::API_KEY_HEADER,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                super::API_KEY_HEADER,
                "An API key of `--api-keys` (or `--admin-api-key`). A gateway started \
                 without keys on a loopback address needs none.",
            ))),
        );
        components.add_security_scheme(
            super::API_KEY_PARAM,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                super::API_KEY_PARAM,
                "The same key, for WebSocket and `/json` requests, whose clients cannot set \
                 headers.",
            ))),
        );
    }
}

/// The answers that the middleware of `mod.rs` may give before any handler runs.
struct MiddlewareAnswers;

impl MiddlewareAnswers {
    const ANSWERS: [(&'static str, &'static str); 5] = [
        ("401", "A missing or invalid API key"),
        (
            "403",
            "A request from a web page (an `Origin` header), a `Host` that is not this \
             gateway, or `x-ingot-*` headers without the cluster's secret",
        ),
        ("408", "The request body did not arrive in time"),
        ("413", "The request body is larger than 64 KiB"),
        ("431", "The request line and headers are larger than 64 KiB"),
    ];
}

impl Modify for MiddlewareAnswers {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (status, description) in Self::ANSWERS {
            let body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorJson::name())))
                .build();
            let answer = ResponseBuilder::new()
                .description(description)
                .content("application/json", body)
                .build();
            components
                .responses
                .insert(answer_name(status), answer.into());
        }
        for item in doc.paths.paths.values_mut() {
            for (_, operation) in operations(item) {
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                // Release-all reads a body it does not describe (only a `projectId` in it
                // counts, and SDKs send none).
                let reads_body = operation.request_body.is_some()
                    || operation.operation_id.as_deref() == Some("release_all_sessions");
                for (status, _) in Self::ANSWERS {
                    let applies = match status {
                        "401" => secured,
                        "408" | "413" => reads_body,
                        _ => true,
                    };
                    if applies {
                        operation
                            .responses
                            .responses
                            .entry(status.to_owned())
                            .or_insert_with(|| Ref::from_response_name(answer_name(status)).into());
                    }
                }
            }
        }
    }
}

fn answer_name(status: &str) -> String {
    format!("Error{status}")
}

/// The operations of a path item, with their methods.
fn operations(
    item: &mut PathItem,
) -> impl Iterator<Item = (&'static str, &mut utoipa::openapi::path::Operation)> {
    [
        ("get", item.get.as_mut()),
        ("post", item.post.as_mut()),
        ("put", item.put.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|o| (method, o)))
}

/// The query parameters of `/v1/…` take an empty value (`?limit=`) as unset.
struct EmptyMeansUnset;

impl Modify for EmptyMeansUnset {
    fn modify(&self, doc: &mut Document) {
        for (_, item) in doc
            .paths
            .paths
            .iter_mut()
            .filter(|(path, _)| path.starts_with("/v1/"))
        {
            for (_, operation) in operations(item) {
                let query = operation
                    .parameters
                    .iter_mut()
                    .flatten()
                    .filter(|p| p.parameter_in == ParameterIn::Query);
                for parameter in query {
                    // utoipa has no field for it: it is deprecated, but OpenAPI 3.1 keeps it.
                    parameter
                        .extensions
                        .get_or_insert_with(Default::default)
                        .insert("allowEmptyValue".into(), Value::Bool(true));
                }
            }
        }
    }
}

/// `/json/version/` and `/devtools/browser/{id}/json/version/` answer as the paths without
/// the slash (some clients add it).
struct TrailingSlashes;

impl Modify for TrailingSlashes {
    fn modify(&self, doc: &mut Document) {
        for path in ["/json/version", "/devtools/browser/{id}/json/version"] {
            let Some(mut item) = doc.paths.paths.get(path).cloned() else {
                continue;
            };
            for (_, operation) in operations(&mut item) {
                operation.operation_id = operation
                    .operation_id
                    .take()
                    .map(|id| format!("{id}_slash"));
            }
            doc.paths.paths.insert(format!("{path}/"), item);
        }
    }
}

/// The body of `POST /v1/sessions`, for the document only: `session::params` parses it.
pub(crate) enum CreateSessionBody {}

impl PartialSchema for CreateSessionBody {
    fn schema() -> RefOr<Schema> {
        create_body(None).into()
    }
}

impl ToSchema for CreateSessionBody {
    fn name() -> Cow<'static, str> {
        "CreateSessionBody".into()
    }
}

/// The body of `POST /v1/sessions/{id}/timeout`, for the document only.
pub(crate) enum TimeoutBody {}

impl PartialSchema for TimeoutBody {
    fn schema() -> RefOr<Schema> {
        timeout_body(None).into()
    }
}

impl ToSchema for TimeoutBody {
    fn name() -> Cow<'static, str> {
        "TimeoutBody".into()
    }
}

/// A session's cookies and web storage: `sessionContext` of a create body, and the answer of
/// `GET /v1/sessions/{id}/context`. `session::context` reads and checks it by hand.
pub(crate) enum SessionContextJson {}

impl PartialSchema for SessionContextJson {
    fn schema() -> RefOr<Schema> {
        session_context().into()
    }
}

impl ToSchema for SessionContextJson {
    fn name() -> Cow<'static, str> {
        "SessionContext".into()
    }
}

fn or_null(t: Type) -> SchemaType {
    SchemaType::from_iter([t, Type::Null])
}

fn typed(t: impl Into<SchemaType>) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(t)
}

fn described(t: impl Into<SchemaType>, description: &str) -> ObjectBuilder {
    typed(t).description(Some(description))
}

/// Milliseconds within `limits` (the gateway's own, once served).
fn milliseconds(
    t: impl Into<SchemaType>,
    limits: Option<TimeoutLimits>,
    what: &str,
) -> ObjectBuilder {
    let (min, max) = limits.map_or((None, None), |l| (Some(l.min_ms), Some(l.max_ms)));
    described(t, what).minimum(min).maximum(max)
}

/// The create body: every field `session::params` honours, and Steel's fields it accepts
/// only at their defaults. Nothing else is accepted.
fn create_body(limits: Option<TimeoutLimits>) -> Schema {
    let mut body = described(
        Type::Object,
        "A session's options. Each field may be `null` (its default). Steel's fields that \
         ingot does not implement are accepted only at their defaults; unknown fields are \
         refused.",
    )
    .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for (field, schema) in session_fields(limits).into_iter().chain(browser_fields()) {
        body = body.property(field, schema);
    }
    for field in UNSUPPORTED {
        body = body.property(*field, unsupported(field));
    }
    body.build().into()
}

/// The honoured fields about the session itself: its id, context and lifetimes.
fn session_fields(limits: Option<TimeoutLimits>) -> [(&'static str, RefOr<Schema>); 4] {
    [
        ("sessionId", session_id().into()),
        (
            "sessionContext",
            AnyOfBuilder::new()
                .description(Some(
                    "Cookies and web storage to load before the session is handed over",
                ))
                .item(typed(Type::Null))
                .item(Ref::from_schema_name(SessionContextJson::name()))
                .into(),
        ),
        (
            "timeout",
            milliseconds(
                or_null(Type::Integer),
                limits,
                "The session's total life, in milliseconds",
            )
            .default(limits.map(|l| l.default_ms.into()))
            .into(),
        ),
        (
            "inactivityTimeout",
            described(
                or_null(Type::Integer),
                "Release the session once no client has sent a CDP message for this long, in \
                 milliseconds; off by default",
            )
            .minimum(Some(*INACTIVITY_MS.start()))
            .maximum(Some(*INACTIVITY_MS.end()))
            .into(),
        ),
    ]
}

/// `sessionId`: a UUID, in any spelling the `uuid` crate reads (as ids are read everywhere).
fn session_id() -> AnyOfBuilder {
    const HYPHENATED: &str =
        "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}";
    let others = format!(
        "^([0-9A-Fa-f]{{32}}|\\{{{HYPHENATED}\\}}|[Uu][Rr][Nn]:[Uu][Uu][Ii][Dd]:{HYPHENATED})$"
    );
    AnyOfBuilder::new()
        .description(Some(
            "The new session's id, a UUID; random by default. The simple, braced and URN \
             spellings are read too.",
        ))
        .item(typed(Type::Null))
        .item(typed(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))))
        .item(typed(Type::String).pattern(Some(others)))
}

/// The honoured fields about its browser.
fn browser_fields() -> [(&'static str, RefOr<Schema>); 5] {
    let fullscreen = "A 1920×1080 page that fills its screen, whatever `dimensions` says";
    let proxy = "`scheme://[user:password@]host:port` with scheme http, https, socks4 or \
                 socks5 (a user and password with http only); no path or query";
    [
        (
            "fullscreen",
            described(or_null(Type::Boolean), fullscreen).into(),
        ),
        (
            "userAgent",
            described(
                or_null(Type::String),
                "The browser's user agent; at most 1024 bytes of UTF-8",
            )
            .min_length(Some(1))
            .max_length(Some(MAX_USER_AGENT_LEN))
            .pattern(Some("^[^\\u0000-\\u001f\\u007f-\\u009f]*$"))
            .examples(["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"])
            .into(),
        ),
        ("dimensions", dimensions().into()),
        (
            "proxyUrl",
            described(or_null(Type::String), proxy)
                .max_length(Some(MAX_PROXY_URL_LEN))
                .examples(["http://127.0.0.1:3128"])
                .into(),
        ),
        (
            "headless",
            described(
                or_null(Type::Boolean),
                "false: full Chromium, headful, on a virtual display of its own (Xvfb); \
                 true, null or unset: the node's default headless engine",
            )
            .into(),
        ),
    ]
}

/// `dimensions` of a create body.
fn dimensions() -> ObjectBuilder {
    let side = |what: &str| {
        described(Type::Integer, what)
            .minimum(Some(1))
            .maximum(Some(MAX_DIMENSION))
    };
    described(
        or_null(Type::Object),
        "The page size, in CSS pixels (default 1920×1080)",
    )
    .additional_properties(Some(AdditionalProperties::FreeForm(false)))
    .property("width", side("Page width"))
    .property("height", side("Page height"))
    .required("width")
    .required("height")
}

/// A Steel field ingot does not implement: only its default is accepted.
fn unsupported(field: &str) -> Schema {
    let mut defaults = AnyOfBuilder::new()
        .description(Some("Not supported by ingot: accepted only at its default"))
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .enum_values(Some([Value::Null, Value::Bool(false)])),
        )
        .item(
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(SchemaType::AnyValue))
                .max_items(Some(0)),
        )
        .item(typed(Type::Object).max_properties(Some(0)));
    match field {
        "concurrency" => {
            defaults = defaults.item(typed(Type::Integer).enum_values(Some([1])));
        }
        "deviceConfig" => {
            defaults = defaults.item(
                typed(Type::Object)
                    .property("device", typed(Type::String).enum_values(Some(["desktop"])))
                    .required("device")
                    .additional_properties(Some(AdditionalProperties::FreeForm(false))),
            );
        }
        _ => {}
    }
    defaults.build().into()
}

/// The body of a timeout change.
fn timeout_body(limits: Option<TimeoutLimits>) -> Schema {
    typed(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .property(
            "timeout",
            milliseconds(
                Type::Integer,
                limits,
                "The session's new total life from its creation, in milliseconds",
            ),
        )
        .required("timeout")
        .build()
        .into()
}

/// [`SessionContextJson`]: what `session::context` accepts and answers.
fn session_context() -> Schema {
    let storage = |what: &str| {
        described(or_null(Type::Object), what)
            .property_names(Some(
                typed(Type::String)
                    .description(Some("An origin such as https://example.com"))
                    .pattern(Some("^https?://[^/?#]+$")),
            ))
            .additional_properties(Some(
                typed(Type::Object).additional_properties(Some(typed(Type::String))),
            ))
    };
    described(
        Type::Object,
        "Cookies (CDP's `Network.CookieParam`), and web storage by origin",
    )
    .additional_properties(Some(AdditionalProperties::FreeForm(false)))
    .property(
        "cookies",
        ArrayBuilder::new()
            .schema_type(or_null(Type::Array))
            .items(RefOr::T(cookie())),
    )
    .property(
        "localStorage",
        storage("`localStorage` by origin, then key"),
    )
    .property(
        "sessionStorage",
        storage("`sessionStorage` by origin, then key"),
    )
    .property(
        "indexedDB",
        described(or_null(Type::Object), "Not supported: always empty").max_properties(Some(0)),
    )
    .build()
    .into()
}

/// One cookie: a name, a value, and a domain or a URL. Of the other fields, those of CDP's
/// `Network.CookieParam` reach the browser; the rest are dropped.
fn cookie() -> Schema {
    let string = || typed(Type::String);
    AllOfBuilder::new()
        .item(
            typed(Type::Object)
                .property("name", string())
                .property("value", string())
                .required("name")
                .required("value"),
        )
        .item(
            AnyOfBuilder::new()
                .item(
                    typed(Type::Object)
                        .property("domain", string())
                        .required("domain"),
                )
                .item(
                    typed(Type::Object)
                        .property("url", string())
                        .required("url"),
                ),
        )
        .build()
        .into()
}

/// A Session's `releaseReason` is one of Steel's words (or `null`).
struct SteelWords;

impl Modify for SteelWords {
    fn modify(&self, doc: &mut Document) {
        let session = doc
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("Session"));
        let Some(RefOr::T(Schema::Object(session))) = session else {
            return;
        };
        if let Some(RefOr::T(Schema::Object(reason))) = session.properties.get_mut("releaseReason")
        {
            let words = STEEL_RELEASE_REASONS.iter().map(|r| Value::from(*r));
            reason.enum_values = Some(words.chain([Value::Null]).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::session::params::HONOURED;

    /// The create body's schema names exactly the fields `session::params` knows.
    #[test]
    fn the_create_body_names_every_field_params_knows() {
        let Schema::Object(body) = create_body(None) else {
            panic!("the create body is an object");
        };
        let documented: BTreeSet<&str> = body.properties.keys().map(String::as_str).collect();
        let known: BTreeSet<&str> = HONOURED.iter().chain(UNSUPPORTED).copied().collect();
        assert_eq!(documented, known);
    }
}
