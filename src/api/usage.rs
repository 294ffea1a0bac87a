//! `GET /v1/usage`: billed minutes, sessions by final status, and CDP traffic, per UTC day
//! and in total, as JSON or CSV (`format=csv`).
//!
//! Sessions count towards the day (and the `[from, to)` range) in which they were created.
//! Live sessions are included with their figures so far.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorJson};
use super::extract::StrictQuery;
use crate::auth::Caller;
use crate::metering::store::UsageSums;

/// Range used when `from` is not given: this long before `to`.
const DEFAULT_RANGE: time::Duration = time::Duration::days(30);

/// Query of `GET /v1/usage`. Values arrive as strings so that errors can name them.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageParams {
    /// Start of the range, RFC 3339 (default: 30 days before `to`); it must be before `to`.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// End of the range, RFC 3339, exclusive (default: now).
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// Only the tenant of this API key (the admin key, or an open gateway; a tenant may name
    /// only itself).
    api_key: Option<String>,
    /// Only this tenant, by name (the same rules as `apiKey`).
    tenant: Option<String>,
    /// `json` (the default) or `csv`: one row per day, then a `total` row.
    #[param(value_type = Option<UsageFormat>, inline)]
    format: Option<String>,
    /// `day` (the default) or `hour`: with `hour`, `buckets` gives sessions and billed
    /// minutes per hour of the range, which may then span at most 48 hours.
    #[param(value_type = Option<UsageGranularity>, inline)]
    granularity: Option<String>,
}

/// The granularities of `GET /v1/usage`, for the OpenAPI document.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "only describes the values of `granularity`")]
enum UsageGranularity {
    Day,
    Hour,
}

/// The formats of `GET /v1/usage`, for the OpenAPI document.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "only describes the values of `format`")]
enum UsageFormat {
    Json,
    Csv,
}

/// `GET /v1/usage`
#[utoipa::path(
    get,
    path = "/v1/usage",
    operation_id = "get_usage",
    tag = "usage",
    params(UsageParams),
    responses(
        (status = 200, description = "Usage per UTC day and in total", content(
            (UsageReport = "application/json"),
            (String = "text/csv", example = "date,sessions,live,released,failed,billed_minutes,bytes_to_browser,bytes_to_client,messages_to_browser,messages_to_client\ntotal,0,0,0,0,0,0,0,0,0\n"),
        )),
        (status = 400, description = "A query parameter is invalid, `from` is not before `to`, or `apiKey` is not a configured key", body = ErrorJson),
        (status = 403, description = "A tenant asked for another tenant's usage", body = ErrorJson),
        (status = 503, description = "The usage records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(params): StrictQuery<UsageParams>,
) -> Result<Response, ApiError> {
    let csv = match params.format.as_deref() {
        None | Some("") | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format: must be json or csv, got {other:?}"
            )));
        }
    };
    let to = match params.to.as_deref() {
        None | Some("") => OffsetDateTime::now_utc(),
        Some(raw) => parse_time(raw, "to")?,
    };
    let from = match params.from.as_deref() {
        None | Some("") => to - DEFAULT_RANGE,
        Some(raw) => parse_time(raw, "from")?,
    };
    if from >= to {
        return Err(ApiError::bad_request("from: must be earlier than to"));
    }
    let tenant = tenant_filter(&state, &caller, params.api_key, params.tenant)?;
    let days = state
        .meter
        .usage_by_day(from, to, tenant.clone())
        .await
        .map_err(unavailable)?;
    let mut report = UsageReport::new(from, to, tenant.clone(), &days);
    if hourly(params.granularity.as_deref(), from, to)? {
        report.buckets = Some(hours(&state, from, to, tenant).await?);
    }
    if csv {
        Ok(csv_response(&report))
    } else {
        Ok(Json(report).into_response())
    }
}

/// 503 for a usage database that cannot be read.
fn unavailable(e: crate::metering::MeterError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "usage_unavailable",
        e.to_string(),
    )
}

/// Whose usage to report. A tenant reads only its own; the admin key and an open gateway
/// read everyone's, or one tenant's, named by `tenant` or by its `apiKey`.
fn tenant_filter(
    state: &AppState,
    caller: &Caller,
    api_key: Option<String>,
    tenant: Option<String>,
) -> Result<Option<String>, ApiError> {
    let by_key = match api_key.filter(|k| !k.is_empty()) {
        None => None,
        Some(key) => Some(
            state
                .keys
                .authenticate(&key)
                .map(|t| t.name.to_string())
                .ok_or_else(|| ApiError::bad_request("apiKey: not a configured API key"))?,
        ),
    };
    let wanted = by_key.or(tenant.filter(|t| !t.is_empty()));
    match caller {
        Caller::Tenant(me) if !me.admin => match wanted {
            Some(other) if other != *me.name => Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "a tenant can read only its own usage",
            )),
            _ => Ok(Some(me.name.to_string())),
        },
        _ => Ok(wanted),
    }
}

/// RFC 3339, UTC or with an offset. A `+` that form decoding turned into a space is taken
/// back, so an unencoded `+01:00` works.
fn parse_time(raw: &str, field: &str) -> Result<OffsetDateTime, ApiError> {
    let repaired = raw.replace(' ', "+");
    OffsetDateTime::parse(&repaired, &Rfc3339).map_err(|_| {
        ApiError::bad_request(format!(
            "{field}: {raw:?} is not an RFC 3339 time such as 2026-11-01T00:00:00Z"
        ))
    })
}

/// The JSON answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UsageReport {
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    /// The tenant reported on; `null` for everyone.
    #[schema(required = true)]
    tenant: Option<String>,
    total: UsageFigures,
    days: Vec<DayFigures>,
    /// With `granularity=hour`: one bucket per hour of the range, empty ones included.
    #[serde(skip_serializing_if = "Option::is_none")]
    buckets: Option<Vec<HourFigures>>,
}

/// One hour of `granularity=hour`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct HourFigures {
    /// The hour's start, RFC 3339 UTC.
    start: String,
    sessions: u64,
    billed_minutes: u64,
}

/// Longest range `granularity=hour` reports on.
const MAX_HOURLY_RANGE: time::Duration = time::Duration::hours(48);

/// Whether hourly buckets are asked for (`granularity`: `day`, the default, or `hour`, for
/// ranges up to 48 hours).
fn hourly(
    granularity: Option<&str>,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<bool, ApiError> {
    match granularity {
        None | Some("") | Some("day") => Ok(false),
        Some("hour") if to - from <= MAX_HOURLY_RANGE => Ok(true),
        Some("hour") => Err(ApiError::bad_request(
            "granularity: hour covers at most 48 hours; narrow from and to",
        )),
        Some(other) => Err(ApiError::bad_request(format!(
            "granularity: must be day or hour, got {other:?}"
        ))),
    }
}

/// Billed minutes and sessions per hour from the hour `from` falls in, up to `to`.
async fn hours(
    state: &AppState,
    from: OffsetDateTime,
    to: OffsetDateTime,
    tenant: Option<String>,
) -> Result<Vec<HourFigures>, ApiError> {
    let hour = time::Duration::hours(1);
    let mut start =
        from.replace_time(time::Time::from_hms(from.hour(), 0, 0).unwrap_or(time::Time::MIDNIGHT));
    let mut buckets = Vec::new();
    while start < to {
        let sums = state
            .meter
            .usage_by_day(start, start + hour, tenant.clone())
            .await
            .map_err(unavailable)?;
        let figures = sums.iter().fold((0, 0), |(n, m), (_, s)| {
            (n + s.sessions, m + s.billed_minutes)
        });
        buckets.push(HourFigures {
            start: rfc3339(start),
            sessions: figures.0,
            billed_minutes: figures.1,
        });
        start += hour;
    }
    Ok(buckets)
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DayFigures {
    /// `YYYY-MM-DD`, UTC.
    #[schema(format = Date)]
    date: String,
    #[serde(flatten)]
    figures: UsageFigures,
}

#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UsageFigures {
    sessions: u64,
    sessions_by_status: ByStatus,
    billed_minutes: u64,
    bytes: ByDirection,
    messages: ByDirection,
}

#[derive(Debug, Default, Serialize, ToSchema)]
struct ByStatus {
    live: u64,
    released: u64,
    failed: u64,
}

#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ByDirection {
    to_browser: u64,
    to_client: u64,
}

impl UsageFigures {
    fn from_sums(s: &UsageSums) -> UsageFigures {
        UsageFigures {
            sessions: s.sessions,
            sessions_by_status: ByStatus {
                live: s.live,
                released: s.released,
                failed: s.failed,
            },
            billed_minutes: s.billed_minutes,
            bytes: ByDirection {
                to_browser: s.traffic.bytes_to_browser,
                to_client: s.traffic.bytes_to_client,
            },
            messages: ByDirection {
                to_browser: s.traffic.messages_to_browser,
                to_client: s.traffic.messages_to_client,
            },
        }
    }

    fn add(&mut self, other: &UsageFigures) {
        self.sessions += other.sessions;
        self.sessions_by_status.live += other.sessions_by_status.live;
        self.sessions_by_status.released += other.sessions_by_status.released;
        self.sessions_by_status.failed += other.sessions_by_status.failed;
        self.billed_minutes += other.billed_minutes;
        self.bytes.to_browser += other.bytes.to_browser;
        self.bytes.to_client += other.bytes.to_client;
        self.messages.to_browser += other.messages.to_browser;
        self.messages.to_client += other.messages.to_client;
    }

    fn csv_row(&self, label: &str) -> String {
        format!(
            "{label},{},{},{},{},{},{},{},{},{}\n",
            self.sessions,
            self.sessions_by_status.live,
            self.sessions_by_status.released,
            self.sessions_by_status.failed,
            self.billed_minutes,
            self.bytes.to_browser,
            self.bytes.to_client,
            self.messages.to_browser,
            self.messages.to_client,
        )
    }
}

impl UsageReport {
    fn new(
        from: OffsetDateTime,
        to: OffsetDateTime,
        tenant: Option<String>,
        days: &[(String, UsageSums)],
    ) -> UsageReport {
        let days: Vec<DayFigures> = days
            .iter()
            .map(|(date, sums)| DayFigures {
                date: date.clone(),
                figures: UsageFigures::from_sums(sums),
            })
            .collect();
        let mut total = UsageFigures::default();
        for day in &days {
            total.add(&day.figures);
        }
        UsageReport {
            from: rfc3339(from),
            to: rfc3339(to),
            tenant,
            total,
            days,
            buckets: None,
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// One row per day, oldest first, then a `total` row.
fn csv_response(report: &UsageReport) -> Response {
    let mut body = String::from(
        "date,sessions,live,released,failed,billed_minutes,bytes_to_browser,bytes_to_client,messages_to_browser,messages_to_client\n",
    );
    for day in &report.days {
        body.push_str(&day.figures.csv_row(&day.date));
    }
    body.push_str(&report.total.csv_row("total"));
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ingot-usage.csv\"",
            ),
        ],
        body,
    )
        .into_response()
}
