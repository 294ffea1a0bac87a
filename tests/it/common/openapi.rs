//! Answers checked against ingot's own OpenAPI document (`GET /v1/openapi.json`): the status
//! must be documented for the operation, the content type too, and a JSON body must validate
//! against the schema the document gives it (JSON Schema 2020-12, formats checked, `$ref`s
//! into `components` resolved).

use serde_json::{Value, json};

/// The document, as a gateway served it.
pub struct Spec {
    pub doc: Value,
}

impl Spec {
    pub fn new(doc: Value) -> Spec {
        let version = doc["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3.1."), "OpenAPI 3.1, got {version:?}");
        assert!(doc["paths"].is_object(), "paths: {doc}");
        Spec { doc }
    }

    /// The operation `method path` (a path of the document, such as `/v1/sessions/{id}`).
    pub fn operation(&self, method: &str, path: &str) -> &Value {
        let operation = &self.doc["paths"][path][method.to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {path} is not in the document"
        );
        operation
    }

    /// The response object the document gives `method path` for `status`, `$ref` resolved.
    pub fn response(&self, method: &str, path: &str, status: u16) -> &Value {
        let operation = self.operation(method, path);
        let response = &operation["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which the document does not list: {}",
            operation["responses"]
        );
        match response["$ref"].as_str() {
            Some(reference) => {
                let name = reference
                    .strip_prefix("#/components/responses/")
                    .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
                let resolved = &self.doc["components"]["responses"][name];
                assert!(resolved.is_object(), "{reference} does not resolve");
                resolved
            }
            None => response,
        }
    }

    /// A validator for `schema`, a schema of this document.
    pub fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let mut root = match schema {
            Value::Object(o) => o.clone(),
            other => panic!("a schema must be an object, got {other}"),
        };
        root.insert("components".into(), self.doc["components"].clone());
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .unwrap_or_else(|e| panic!("the document's schema {schema} does not compile: {e}"))
    }

    /// The schema of a component, such as `CreateSessionBody`.
    pub fn component(&self, name: &str) -> jsonschema::Validator {
        self.validator(&json!({"$ref": format!("#/components/schemas/{name}")}))
    }

    /// Asserts that an answer conforms: its status is documented for `method path`, its
    /// content type is one the document gives that status, and its body validates.
    pub fn check(&self, method: &str, path: &str, answer: &Answer) {
        let what = format!("{method} {path} → {}", answer.status);
        let response = self.response(method, path, answer.status);
        let Some(content) = response["content"].as_object() else {
            assert!(
                answer.text.is_empty(),
                "{what}: the document gives no body, got {:?}",
                answer.text
            );
            return;
        };
        let media = answer
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let Some(documented) = content.get(media) else {
            panic!(
                "{what}: content type {media:?} is not documented ({:?})",
                content.keys().collect::<Vec<_>>()
            );
        };
        if media != "application/json" {
            return;
        }
        let body: Value = serde_json::from_str(&answer.text)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", answer.text));
        let validator = self.validator(&documented["schema"]);
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the body does not match the document:\n{}\nbody: {body}",
            errors.join("\n")
        );
    }
}

/// What a check needs of an HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub text: String,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.expect("answer body");
        Answer {
            status,
            content_type,
            text,
        }
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// The path templates that `.route("…")` calls in `source` (the text of `src/api/mod.rs`)
/// register, in OpenAPI's form: a wildcard `{*rest}` becomes `{rest}`.
pub fn routed_paths(source: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let literal = rest.trim_start();
        let Some(literal) = literal.strip_prefix('"') else {
            panic!(
                "a route whose path is not a string literal: {}",
                &rest[..rest.len().min(80)]
            );
        };
        let end = literal.find('"').expect("closing quote");
        paths.push(literal[..end].replace("{*", "{"));
    }
    paths
}
