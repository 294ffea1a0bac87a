//! Makes a new browser's first page exactly the size the session asked for.
//!
//! Headless Chromium sizes its window, not its page, and the page is smaller by an
//! invisible tab strip and toolbar. The launcher adds the usual difference; this checks the
//! page and resizes the window when a Chromium build differs. It uses only the gateway's own
//! CDP session and detaches again, so clients never see it.

use serde_json::{Value, json};
use tracing::debug;

use super::mux::{CommandError, Mux};
use crate::session::params::Dimensions;

/// Measures the first page and corrects its window if needed. Returns the page size found
/// before any correction.
pub async fn fit_first_page(mux: &Mux, want: Dimensions) -> Result<(u64, u64), CommandError> {
    let targets = mux.command("Target.getTargets", json!({})).await?;
    let target_id = targets["targetInfos"]
        .as_array()
        .and_then(|infos| infos.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["targetId"].as_str())
        .ok_or(CommandError::Refused(
            "Target.getTargets",
            "no page target".into(),
        ))?
        .to_owned();
    let attached = mux
        .command(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )
        .await?;
    let page_session = attached["sessionId"]
        .as_str()
        .ok_or(CommandError::Refused(
            "Target.attachToTarget",
            "no sessionId".into(),
        ))?
        .to_owned();
    let measured = measure(mux, &page_session).await;
    let _ = mux
        .command(
            "Target.detachFromTarget",
            json!({ "sessionId": page_session }),
        )
        .await;
    let (width, height) = measured?;
    if (width, height) != (u64::from(want.width), u64::from(want.height)) {
        debug!(
            width,
            height,
            ?want,
            "first page has the wrong size; resizing its window"
        );
        let window = mux
            .command(
                "Browser.getWindowForTarget",
                json!({ "targetId": target_id }),
            )
            .await?;
        let bounds = &window["bounds"];
        // The window must grow (or shrink) by what the page lacks (or has in excess).
        let grow = |outer: &Value, inner: u64, wanted: u32| {
            let outer = outer.as_i64().unwrap_or(i64::from(wanted));
            (outer + i64::from(wanted) - inner as i64).max(1)
        };
        mux.command(
            "Browser.setWindowBounds",
            json!({
                "windowId": window["windowId"],
                "bounds": {
                    "width": grow(&bounds["width"], width, want.width),
                    "height": grow(&bounds["height"], height, want.height),
                }
            }),
        )
        .await?;
    }
    Ok((width, height))
}

async fn measure(mux: &Mux, page_session: &str) -> Result<(u64, u64), CommandError> {
    let reply = mux
        .command_in(
            Some(page_session),
            "Runtime.evaluate",
            json!({ "expression": "[innerWidth, innerHeight]", "returnByValue": true }),
        )
        .await?;
    let value = &reply["result"]["value"];
    match (value[0].as_u64(), value[1].as_u64()) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(CommandError::Refused(
            "Runtime.evaluate",
            format!("unexpected page size {value}"),
        )),
    }
}
