//! The difference between a headless Chromium's window and the page inside it.
//!
//! Chromium sizes its window with `--window-size`, and the page is smaller by an invisible
//! tab strip and toolbar. That difference belongs to the Chromium build, not to a session,
//! so it is measured once per gateway process, on the first browser launched, and every
//! later launch simply asks for a window that much larger. The measurement talks CDP over
//! the new browser's transport before anyone else uses it. This module owns that figure and
//! the measurement; it must not know about sessions or clients.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::CdpTransport;
use crate::vocab::Dimensions;

/// How much larger than the page the window must be, in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frame {
    pub width: i64,
    pub height: i64,
}

/// What this Chromium build is expected to need until a measurement says otherwise.
const EXPECTED: Frame = Frame {
    width: 0,
    height: 87,
};
/// How long one measurement command may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The frame learned from the first launch, shared by all launches.
#[derive(Debug, Default)]
pub(super) struct FrameCalibration {
    learned: Mutex<Option<Frame>>,
}

impl FrameCalibration {
    /// The frame to launch with, and whether it still needs to be measured.
    pub(super) fn frame(&self) -> (Frame, bool) {
        match *self.learned.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(frame) => (frame, false),
            None => (EXPECTED, true),
        }
    }

    pub(super) fn learn(&self, frame: Frame) {
        *self.learned.lock().unwrap_or_else(|p| p.into_inner()) = Some(frame);
    }
}

/// The window size to launch with for a page of `page` size.
pub(super) fn window_size(page: Dimensions, frame: Frame) -> (i64, i64) {
    (
        i64::from(page.width) + frame.width,
        i64::from(page.height) + frame.height,
    )
}

/// Measures the first page of a browser launched with `frame`, resizes its window if the
/// page is not `want`, and returns the frame this build really needs.
pub(super) async fn measure_and_fit(
    transport: &mut CdpTransport,
    want: Dimensions,
    frame: Frame,
) -> Result<Frame, MeasureError> {
    let mut cdp = RawCdp {
        transport,
        next_id: super::startup::NEXT_ID,
    };
    let targets = cdp.call("Target.getTargets", json!({}), None).await?;
    let target_id = targets["targetInfos"]
        .as_array()
        .and_then(|infos| infos.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["targetId"].as_str())
        .ok_or(MeasureError::NoPage)?
        .to_owned();
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
            None,
        )
        .await?;
    let page = attached["sessionId"]
        .as_str()
        .ok_or(MeasureError::NoSession)?
        .to_owned();
    let measured = cdp
        .call(
            "Runtime.evaluate",
            json!({ "expression": "[innerWidth, innerHeight]", "returnByValue": true }),
            Some(&page),
        )
        .await;
    cdp.call(
        "Target.detachFromTarget",
        json!({ "sessionId": page }),
        None,
    )
    .await?;
    let value = &measured?["result"]["value"];
    let (inner_width, inner_height) = match (value[0].as_i64(), value[1].as_i64()) {
        (Some(w), Some(h)) => (w, h),
        _ => return Err(MeasureError::PageSize(value.clone())),
    };
    let (want_width, want_height) = (i64::from(want.width), i64::from(want.height));
    let real = Frame {
        width: frame.width + want_width - inner_width,
        height: frame.height + want_height - inner_height,
    };
    if real != frame {
        let window = cdp
            .call(
                "Browser.getWindowForTarget",
                json!({ "targetId": target_id }),
                None,
            )
            .await?;
        let (width, height) = window_size(want, real);
        cdp.call(
            "Browser.setWindowBounds",
            json!({ "windowId": window["windowId"], "bounds": { "width": width, "height": height } }),
            None,
        )
        .await?;
    }
    Ok(real)
}

/// Why the page could not be measured (the browser is then used as launched).
#[derive(Debug, thiserror::Error)]
pub(super) enum MeasureError {
    /// The browser has no page target.
    #[error("the browser has no page")]
    NoPage,
    /// Attaching to the page gave no session id.
    #[error("no sessionId for the page")]
    NoSession,
    /// `[innerWidth, innerHeight]` did not evaluate to two numbers.
    #[error("unexpected page size {0}")]
    PageSize(Value),
    /// The pipe closed.
    #[error("the CDP pipe closed")]
    PipeClosed,
    /// A command failed.
    #[error("{method} failed: {error}")]
    Failed {
        /// The command.
        method: &'static str,
        /// The CDP error object.
        error: Value,
    },
    /// A command got no answer in time.
    #[error("no answer to {0}")]
    NoAnswer(&'static str),
}

/// Just enough of a CDP client for the measurement, before the multiplexer takes over.
struct RawCdp<'a> {
    transport: &'a mut CdpTransport,
    next_id: u64,
}

impl RawCdp<'_> {
    async fn call(
        &mut self,
        method: &'static str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value, MeasureError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        self.transport
            .to_browser
            .send(Bytes::from(command.to_string()))
            .await
            .map_err(|_| MeasureError::PipeClosed)?;
        let wait = async {
            while let Some(msg) = self.transport.from_browser.recv().await {
                let Ok(mut reply) = serde_json::from_slice::<Value>(&msg) else {
                    continue;
                };
                if reply["id"] != id {
                    continue; // events of the attach and detach
                }
                if let Some(error) = reply.get_mut("error") {
                    let error = error.take();
                    return Err(MeasureError::Failed { method, error });
                }
                return Ok(reply
                    .get_mut("result")
                    .map(Value::take)
                    .unwrap_or(Value::Null));
            }
            Err(MeasureError::PipeClosed)
        };
        tokio::time::timeout(STEP_TIMEOUT, wait)
            .await
            .map_err(|_| MeasureError::NoAnswer(method))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_page_plus_frame() {
        let page = Dimensions {
            width: 1280,
            height: 800,
        };
        assert_eq!(window_size(page, EXPECTED), (1280, 887));
        let calibration = FrameCalibration::default();
        assert_eq!(calibration.frame(), (EXPECTED, true));
        calibration.learn(Frame {
            width: 0,
            height: 90,
        });
        assert_eq!(
            calibration.frame(),
            (
                Frame {
                    width: 0,
                    height: 90
                },
                false
            )
        );
    }
}
