//! `/v1/sessions/{id}/files…`: Steel's session files API (list, upload, download, delete,
//! delete all, and the `files.zip` archive).
//!
//! Handlers check that the caller may see the session, pass the request to the node that
//! has the session's files in a cluster, and leave the files themselves to
//! [`crate::files`]. An upload is streamed to disk, never held in memory: its size is
//! checked as it arrives, and a stalled one is cut off. A `file` given as a URL is refused:
//! the gateway does not fetch URLs for clients (that would be a server-side request
//! forgery).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::multipart::{Field, Multipart, MultipartError};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::io::ReaderStream;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::error::ErrorJson;
use super::extract::parse_id;
use super::locate::{self, Route, Step, UPLOAD_DEADLINE, ended_conflict};
use super::relay::Relay;
use super::wire::{FileJson, FileListJson, ReleaseJson};
use crate::auth::Caller;
use crate::files::{FileName, Upload};

/// Largest `path` field of an upload, in bytes.
const MAX_PATH_FIELD: usize = 4 << 10;
/// An uploaded `file` this small, without a file name, is checked for being a URL.
const URL_CHECK_BYTES: usize = 8 << 10;
/// The file name the Python SDK gives a `file` passed as a string.
const UNNAMED: &str = "upload";

/// The files routes. Uploads are exempt from the API's small body limit and whole-body
/// deadline: they enforce the file size limit and a stall timeout of their own.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/sessions/{id}/files",
            get(list)
                .post(upload)
                .layer(DefaultBodyLimit::disable())
                .delete(delete_all),
        )
        .route("/v1/sessions/{id}/files.zip", get(archive))
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(download).delete(delete_one),
        )
}

/// Whether the session's files are here (and whether the session is live), or the answer
/// of the node that has them (to a request without a body).
async fn here(
    state: &AppState,
    relay: &Relay,
    caller: &Caller,
    id: Uuid,
) -> Result<Option<Response>, ApiError> {
    match locate::resolve(state, relay, caller, (id, Route::Files), ()).await? {
        Step::Here(..) | Step::Recorded(_) => Ok(None),
        Step::Answered(answer) => Ok(Some(answer)),
    }
}

/// `GET /v1/sessions/{id}/files`: the session's files, newest first.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/files",
    operation_id = "list_session_files",
    tag = "files",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session's files, newest first", body = FileListJson),
        (status = 400, description = "`id` is not a UUID, or the path is refused (`invalid_path`)", body = ErrorJson),
        (status = 404, description = "No such session for this API key (or no such file)", body = ErrorJson),
        (status = 502, description = "In a cluster, the node that has the files does not answer", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "id")?;
    if let Some(answer) = here(&state, &relay, &caller, id).await? {
        return Ok(answer);
    }
    let files = state.registry.files().list(id).await?;
    let data = files.iter().map(FileJson::new).collect();
    Ok(Json(FileListJson { data }).into_response())
}

/// `GET /v1/sessions/{id}/files/{path}`: one file's bytes.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/files/{path}",
    operation_id = "download_session_file",
    tag = "files",
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("path" = String, Path, pattern = r"^[^\x00-\x1f\x7f-\x9f\\]+$", description = "The file's name relative to the session's files (`dir/a.txt`), or its `path` as listed. Refused with 400 `invalid_path`: `.` and `..` components, other absolute paths, empty components, control characters and backslashes"),
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "`id` is not a UUID, or the path is refused (`invalid_path`)", body = ErrorJson),
        (status = 404, description = "No such session for this API key (or no such file)", body = ErrorJson),
        (status = 502, description = "In a cluster, the node that has the files does not answer", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn download(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "id")?;
    let name = state.registry.files().name(id, &path)?;
    if let Some(answer) = here(&state, &relay, &caller, id).await? {
        return Ok(answer);
    }
    let (file, info) = state.registry.files().open(id, &name).await?;
    let base = name.as_str().rsplit('/').next().unwrap_or(name.as_str());
    Ok(stream(file, info.size, "application/octet-stream", base))
}

/// `GET /v1/sessions/{id}/files.zip`: every file of the session in one zip archive.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/files.zip",
    operation_id = "download_session_files_archive",
    tag = "files",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "Every file of the session in one zip archive", content_type = "application/zip", body = Vec<u8>),
        (status = 400, description = "`id` is not a UUID, or the path is refused (`invalid_path`)", body = ErrorJson),
        (status = 404, description = "No such session for this API key (or no such file)", body = ErrorJson),
        (status = 502, description = "In a cluster, the node that has the files does not answer", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn archive(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "id")?;
    if let Some(answer) = here(&state, &relay, &caller, id).await? {
        return Ok(answer);
    }
    let files = state.registry.files().list(id).await?;
    let (file, len) = state.registry.files().archive(files).await?;
    Ok(stream(file, len, "application/zip", "files.zip"))
}

/// `DELETE /v1/sessions/{id}/files/{path}`
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}/files/{path}",
    operation_id = "delete_session_file",
    tag = "files",
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("path" = String, Path, pattern = r"^[^\x00-\x1f\x7f-\x9f\\]+$", description = "The file's name relative to the session's files (`dir/a.txt`), or its `path` as listed. Refused with 400 `invalid_path`: `.` and `..` components, other absolute paths, empty components, control characters and backslashes"),
    ),
    responses(
        (status = 200, description = "The file is deleted", body = ReleaseJson),
        (status = 400, description = "`id` is not a UUID, or the path is refused (`invalid_path`)", body = ErrorJson),
        (status = 404, description = "No such session for this API key (or no such file)", body = ErrorJson),
        (status = 502, description = "In a cluster, the node that has the files does not answer", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn delete_one(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "id")?;
    let name = state.registry.files().name(id, &path)?;
    if let Some(answer) = here(&state, &relay, &caller, id).await? {
        return Ok(answer);
    }
    state.registry.files().delete(id, &name).await?;
    Ok(done("File deleted successfully"))
}

/// `DELETE /v1/sessions/{id}/files`
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}/files",
    operation_id = "delete_session_files",
    tag = "files",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "Every file of the session is deleted", body = ReleaseJson),
        (status = 400, description = "`id` is not a UUID, or the path is refused (`invalid_path`)", body = ErrorJson),
        (status = 404, description = "No such session for this API key (or no such file)", body = ErrorJson),
        (status = 502, description = "In a cluster, the node that has the files does not answer", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn delete_all(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "id")?;
    if let Some(answer) = here(&state, &relay, &caller, id).await? {
        return Ok(answer);
    }
    state.registry.files().delete_all(id).await?;
    Ok(done("All files deleted successfully"))
}

/// `POST /v1/sessions/{id}/files`: `multipart/form-data` with the file in `file` and,
/// optionally, its name in `path` (else the file's own name). Answers the stored `File`.
/// 409 once the session ended: no browser can use the file any more.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/files",
    operation_id = "upload_session_file",
    tag = "files",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The stored file", body = FileJson),
        (status = 408, description = "The upload stalled", body = ErrorJson),
        (status = 409, description = "The session has ended", body = ErrorJson),
        (status = 413, description = "The file is larger than `--max-file-bytes` (`file_too_large`), or the session's files would pass `--max-session-files-bytes` (`session_files_too_large`) or `--max-session-files` entries (`too_many_session_files`); nothing is stored", body = ErrorJson),
        (status = 507, description = "The file would fill the disk", body = ErrorJson),
        (status = 400, description = "`id` is not a UUID, or the path is refused (`invalid_path`; also a path more than 8 directories deep)", body = ErrorJson),
        (status = 404, description = "No such session for this API key (or no such file)", body = ErrorJson),
        (status = 502, description = "In a cluster, the node that has the files does not answer", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "id")?;
    let (parts, body) = request.into_parts();
    let route = (id, Route::Upload);
    let (session, body) = match locate::resolve(&state, &relay, &caller, route, body)
        .await?
        .here(id)
    {
        Ok(here) => here,
        Err(answer) => return Ok(*answer),
    };
    if !session.phase().is_live() {
        return Err(ended_conflict(id));
    }
    let request = Request::from_parts(parts, body);
    let multipart = Multipart::from_request(request, &state)
        .await
        .map_err(|e| ApiError::bad_request(format!("the body must be multipart/form-data: {e}")))?;
    let idle = state.body_timeout;
    let received = tokio::time::timeout(UPLOAD_DEADLINE, receive(&state, id, multipart, idle))
        .await
        .map_err(|_| stalled(UPLOAD_DEADLINE))??;
    let info = received.upload.finish(&received.name).await?;
    tracing::info!(session_id = %id, file = info.name.as_str(), size = info.size, "file uploaded");
    Ok(Json(FileJson::new(&info)).into_response())
}

/// The form of an upload, for the OpenAPI document (the handler reads it as a stream).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "only describes the form")]
pub(crate) struct UploadForm {
    /// The file's bytes. A URL in place of them is refused (`url_upload_refused`).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Its name relative to the session's files; default: the file's own name.
    path: Option<String>,
}

/// An upload read whole, not yet in place.
struct Received {
    upload: Upload,
    name: FileName,
}

/// Reads the form: the `file` field to disk, the `path` field to memory.
async fn receive(
    state: &AppState,
    id: Uuid,
    mut form: Multipart,
    idle: Duration,
) -> Result<Received, ApiError> {
    let mut path: Option<String> = None;
    let mut file: Option<(Upload, Option<String>)> = None;
    loop {
        let field = tokio::time::timeout(idle, form.next_field())
            .await
            .map_err(|_| stalled(idle))?
            .map_err(form_error)?;
        let Some(field) = field else { break };
        match field.name() {
            Some("path") if path.is_none() => path = Some(read_text(field, idle).await?),
            Some("file") if file.is_none() => {
                let filename = field.file_name().map(str::to_owned);
                let upload = state.registry.files().begin_upload(id).await?;
                file = Some((
                    store(field, upload, filename.as_deref(), idle).await?,
                    filename,
                ));
            }
            Some(name @ ("path" | "file")) => {
                return Err(ApiError::bad_request(format!(
                    "{name}: given more than once"
                )));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{}: unknown field; an upload has `file` and an optional `path`",
                    other.unwrap_or("(unnamed)")
                )));
            }
        }
    }
    let (upload, filename) =
        file.ok_or_else(|| ApiError::bad_request("file: required (the file's bytes)"))?;
    let raw = path
        .filter(|p| !p.is_empty())
        .or(filename.filter(|f| f != UNNAMED))
        .ok_or_else(|| {
            ApiError::bad_request("path: required when the file has no name of its own")
        })?;
    let name = state.registry.files().new_name(id, &raw)?;
    Ok(Received { upload, name })
}

/// Streams the `file` field into `upload`, refusing a URL in place of a file.
async fn store(
    mut field: Field<'_>,
    mut upload: Upload,
    filename: Option<&str>,
    idle: Duration,
) -> Result<Upload, ApiError> {
    let mut head = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = next_chunk(&mut field, idle).await? {
        total += chunk.len();
        if head.len() < URL_CHECK_BYTES {
            head.extend_from_slice(&chunk[..chunk.len().min(URL_CHECK_BYTES - head.len())]);
        }
        upload.write(&chunk).await?;
    }
    let unnamed = filename.is_none_or(|f| f == UNNAMED);
    if unnamed && total <= URL_CHECK_BYTES && looks_like_url(&head) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "url_upload_refused",
            "file: a URL is refused; ingot does not fetch URLs for clients (server-side request \
             forgery). Download the file yourself and upload its bytes",
        ));
    }
    Ok(upload)
}

/// The next chunk of a field; fails when none arrives within `idle`.
async fn next_chunk(
    field: &mut Field<'_>,
    idle: Duration,
) -> Result<Option<bytes::Bytes>, ApiError> {
    tokio::time::timeout(idle, field.chunk())
        .await
        .map_err(|_| stalled(idle))?
        .map_err(form_error)
}

/// A small text field, whole.
async fn read_text(mut field: Field<'_>, idle: Duration) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = next_chunk(&mut field, idle).await? {
        text.extend_from_slice(&chunk);
        if text.len() > MAX_PATH_FIELD {
            return Err(ApiError::bad_request("path: too long"));
        }
    }
    String::from_utf8(text).map_err(|_| ApiError::bad_request("path: must be UTF-8 text"))
}

/// Whether `bytes` is one URL (what a `file` given as a URL string arrives as).
fn looks_like_url(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let text = text.trim();
    !text.is_empty()
        && !text.contains(char::is_whitespace)
        && url::Url::parse(text).is_ok_and(|u| u.has_host() || u.scheme() == "file")
}

fn form_error(e: MultipartError) -> ApiError {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            e.body_text(),
        ),
        _ => ApiError::bad_request(format!("cannot read the form: {}", e.body_text())),
    }
}

fn stalled(after: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!("the upload stalled: it did not go on within {after:?}"),
    )
}

fn done(message: &str) -> Response {
    Json(ReleaseJson {
        success: true,
        message: message.into(),
    })
    .into_response()
}

/// A file's bytes as a download named `filename`.
fn stream(file: tokio::fs::File, len: u64, content_type: &'static str, filename: &str) -> Response {
    let mut response = Body::from_stream(ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(disposition) = HeaderValue::from_str(&format!(
        "attachment; filename*=UTF-8''{}",
        rfc5987(filename)
    )) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    response
}

/// Percent-encodes all but RFC 5987's `attr-char`s.
fn rfc5987(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_recognised_and_file_contents_are_not() {
        for url in [
            "https://example.com/a.pdf",
            " http://169.254.169.254/latest/meta-data/\n",
            "file:///etc/passwd",
            "ftp://host/x",
        ] {
            assert!(looks_like_url(url.as_bytes()), "{url}");
        }
        for text in [
            "hello world",
            "just-text",
            "a: b",
            "",
            "mailto x",
            "\u{0}\u{1}",
        ] {
            assert!(!looks_like_url(text.as_bytes()), "{text:?}");
        }
    }

    #[test]
    fn download_names_are_encoded() {
        assert_eq!(rfc5987("a b\"ü.txt"), "a%20b%22%C3%BC.txt");
    }
}
