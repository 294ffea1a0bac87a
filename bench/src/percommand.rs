//! Per-command figures on one long-lived page per target: round trip, large replies,
//! pipelining, screenshots and reconnects.
//!
//! Owns opening a page connection the way Puppeteer does (browser-level WebSocket,
//! `Target.attachToTarget` with `flatten`), preparing the page identically on both targets,
//! and one round of measurements. Interleaving rounds across targets is the caller's job.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::json;

use crate::cdp::Cdp;
use crate::procfs::Usage;
use crate::stats::{mb_per_s, ms, us};

/// How long any one CDP step may take (a 60 MiB reply on a busy machine included).
pub(crate) const CDP_TIMEOUT: Duration = Duration::from_secs(120);

/// Commands sent before timing the round trip, to warm caches and JIT on both ends.
const RTT_WARMUP: usize = 100;
/// How long after the last reconnect's close the cost of reconnects is read, so that
/// tearing down its connection (ingot detaching from the browser) is counted.
pub(crate) const RECONNECT_SETTLE: Duration = Duration::from_millis(20);
/// Commands in flight at once for the pipelining figure.
pub(crate) const PIPELINED: usize = 200;

/// Fills the page with a gradient and text so that screenshots encode real content, and
/// answers once a frame has been produced.
const FILL_PAGE: &str = r#"(() => {
  document.body.style.margin = '0';
  document.body.style.background = 'linear-gradient(135deg, #0b486b, #f56217)';
  document.body.innerHTML =
    '<h1 style="font: bold 64px sans-serif; color: white; padding: 40px">ingot-bench</h1>' +
    '<p style="font: 20px serif; color: white; padding: 0 40px">' +
    'The quick brown fox jumps over the lazy dog. '.repeat(300) + '</p>';
  return new Promise(r => requestAnimationFrame(() => r(innerWidth + 'x' + innerHeight)));
})()"#;

/// How many runs of each measurement one round makes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoundPlan {
    /// Round trips per target, in blocks of `rtt_block` alternating between the targets.
    pub rtt_runs: usize,
    pub rtt_block: usize,
    pub reps_4mib: usize,
    pub reps_60mib: usize,
    pub pipelined_reps: usize,
    pub screenshots: usize,
    pub reconnects: usize,
}

/// A page to drive: its browser connection and the page's flattened CDP session.
pub(crate) struct Page {
    cdp: Cdp,
    session: String,
    browser_url: String,
    /// The page's `innerWidth`x`innerHeight` after preparation.
    pub viewport: String,
}

/// A screenshot's PNG size, as decoded from its header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shot {
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
}

/// What one process used per operation (a round trip, a reconnect), one figure per round.
#[derive(Debug, Default)]
pub(crate) struct Cost {
    /// CPU time per operation, in µs.
    pub cpu_us: Vec<f64>,
    /// Context switches per operation.
    pub switches: Vec<f64>,
}

impl Cost {
    /// Records one round: `used` over `ops` operations (nothing when there were none).
    pub(crate) fn push(&mut self, used: Usage, ops: usize) {
        if ops == 0 {
            return;
        }
        self.cpu_us.push(used.cpu_ns as f64 / 1e3 / ops as f64);
        self.switches.push(used.switches as f64 / ops as f64);
    }
}

/// Everything one target produced over all rounds.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    pub reconnect_ms: Vec<f64>,
    pub rtt_p50_us: Vec<f64>,
    pub rtt_p99_us: Vec<f64>,
    /// The gateway's cost per round trip, all its threads, while its blocks ran (ingot only).
    pub gateway_rtt: Cost,
    /// The cost per round trip of the target's Chromium browser process (all its threads,
    /// renderers not included).
    pub browser_rtt: Cost,
    /// The benchmark client's own cost per round trip (this process, all threads).
    pub client_rtt: Cost,
    /// The gateway's cost per reconnect (ingot only).
    pub gateway_reconnect: Cost,
    /// The browser process's cost per reconnect.
    pub browser_reconnect: Cost,
    pub reply_4mib_mbps: Vec<f64>,
    pub reply_60mib_mbps: Vec<f64>,
    pub pipelined_ms: Vec<f64>,
    pub screenshot_ms: Vec<f64>,
    pub shot: Option<Shot>,
}

impl Page {
    /// Connects to a browser-level CDP endpoint, attaches to its first page and prepares
    /// it: a 1920×1080 viewport (set explicitly, so both targets render the same pixels) and
    /// some content.
    pub(crate) async fn open(browser_url: &str) -> Result<Page> {
        let mut cdp = Cdp::connect(browser_url, CDP_TIMEOUT).await?;
        let targets = cdp
            .call_result("Target.getTargets", json!({}), None)
            .await?;
        let target_id = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .ok_or_else(|| anyhow!("the browser has no page: {targets}"))?
            .to_owned();
        let attached = cdp
            .call_result(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
                None,
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("attachToTarget gave no sessionId: {attached}"))?
            .to_owned();
        let s = Some(session.as_str());
        cdp.call_result(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": false }),
            s,
        )
        .await?;
        let filled = cdp
            .call_result(
                "Runtime.evaluate",
                json!({ "expression": FILL_PAGE, "awaitPromise": true, "returnByValue": true }),
                s,
            )
            .await?;
        let viewport = filled["result"]["value"].as_str().unwrap_or("?").to_owned();
        let mut page = Page {
            cdp,
            session,
            browser_url: browser_url.to_owned(),
            viewport,
        };
        page.warm_up().await?;
        Ok(page)
    }

    /// One round of every per-command measurement but the round trip (which the caller
    /// interleaves finely across targets with [`Page::round_trips`]) and reconnects (whose
    /// cost the caller reads around [`Page::reconnects`]), appended to `out`.
    pub(crate) async fn round(&mut self, plan: &RoundPlan, out: &mut Samples) -> Result<()> {
        for _ in 0..plan.reps_4mib {
            out.reply_4mib_mbps.push(self.large_reply(4 << 20).await?);
        }
        for _ in 0..plan.reps_60mib {
            out.reply_60mib_mbps.push(self.large_reply(60 << 20).await?);
        }
        for _ in 0..plan.pipelined_reps {
            out.pipelined_ms.push(self.pipelined().await?);
        }
        for _ in 0..plan.screenshots {
            let (took, shot) = self.screenshot().await?;
            out.screenshot_ms.push(took);
            out.shot = Some(shot);
        }
        Ok(())
    }

    /// `n` reconnects ([`Page::reconnect`]), each appended to `out` in ms.
    pub(crate) async fn reconnects(&self, n: usize, out: &mut Vec<f64>) -> Result<()> {
        for _ in 0..n {
            out.push(self.reconnect().await?);
        }
        Ok(())
    }

    /// A new WebSocket to the browser until the first reply to `Browser.getVersion`, in ms.
    async fn reconnect(&self) -> Result<f64> {
        let started = Instant::now();
        let mut cdp = Cdp::connect(&self.browser_url, CDP_TIMEOUT).await?;
        cdp.call_result("Browser.getVersion", json!({}), None)
            .await?;
        let took = ms(started.elapsed());
        cdp.close().await;
        Ok(took)
    }

    /// Checks that `1+1` is 2, then runs [`RTT_WARMUP`] unmeasured round trips.
    async fn warm_up(&mut self) -> Result<()> {
        let params = json!({ "expression": "1+1" });
        let s = Some(self.session.as_str());
        let first = self
            .cdp
            .call_result("Runtime.evaluate", params.clone(), s)
            .await?;
        if first["result"]["value"] != 2 {
            bail!("1+1 evaluated to {first}");
        }
        for _ in 0..RTT_WARMUP {
            let id = self.cdp.send("Runtime.evaluate", &params, s).await?;
            self.cdp.reply(id).await?;
        }
        Ok(())
    }

    /// `runs` sequential `Runtime.evaluate 1+1` round trips, each appended to `out` in µs.
    pub(crate) async fn round_trips(&mut self, runs: usize, out: &mut Vec<f64>) -> Result<()> {
        let params = json!({ "expression": "1+1" });
        let s = Some(self.session.as_str());
        for _ in 0..runs {
            let started = Instant::now();
            let id = self.cdp.send("Runtime.evaluate", &params, s).await?;
            self.cdp.reply(id).await?;
            out.push(us(started.elapsed()));
        }
        Ok(())
    }

    /// One reply of about `size` bytes (a string returned by value), in MB/s of reply bytes.
    async fn large_reply(&mut self, size: usize) -> Result<f64> {
        let params = json!({ "expression": format!("'x'.repeat({size})"), "returnByValue": true });
        let started = Instant::now();
        let id = self
            .cdp
            .send("Runtime.evaluate", &params, Some(&self.session))
            .await?;
        let reply = self.cdp.reply(id).await?;
        let took = started.elapsed();
        let len = reply.text.len();
        if len < size {
            bail!(
                "a {size}-byte reply came back with {len} bytes: {}",
                &reply.text.as_str()[..len.min(300)]
            );
        }
        Ok(mb_per_s(len, took))
    }

    /// [`PIPELINED`] `Runtime.evaluate 1+1` written at once, until the last reply, in ms.
    async fn pipelined(&mut self) -> Result<f64> {
        let params = json!({ "expression": "1+1" });
        let started = Instant::now();
        let ids = self
            .cdp
            .send_many(PIPELINED, "Runtime.evaluate", &params, Some(&self.session))
            .await?;
        self.cdp.replies(&ids).await?;
        Ok(ms(started.elapsed()))
    }

    /// One `Page.captureScreenshot` as PNG, in ms, with the image's size.
    async fn screenshot(&mut self) -> Result<(f64, Shot)> {
        let params = json!({ "format": "png" });
        let started = Instant::now();
        let id = self
            .cdp
            .send("Page.captureScreenshot", &params, Some(&self.session))
            .await?;
        let reply = self.cdp.reply(id).await?;
        let took = ms(started.elapsed());
        let shot = png_size(reply.text.as_str()).ok_or_else(|| {
            anyhow!(
                "screenshot reply holds no PNG: {}",
                &reply.text.as_str()[..reply.text.len().min(300)]
            )
        })?;
        Ok((took, shot))
    }

    /// Closes the page's connection.
    pub(crate) async fn close(self) {
        self.cdp.close().await;
    }
}

/// Width, height and encoded size of the base64 PNG in a `captureScreenshot` reply.
fn png_size(reply: &str) -> Option<Shot> {
    let start = reply.find("\"data\":\"")? + 8;
    let data = &reply[start..];
    let end = data.find('"')?;
    // The IHDR chunk's width and height are bytes 16..24: the first 32 base64 characters.
    let head = decode_base64(data.get(..32)?)?;
    if head.get(..8)? != b"\x89PNG\r\n\x1a\n" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some(Shot {
        width: be(&head[16..20]),
        height: be(&head[20..24]),
        bytes: end / 4 * 3,
    })
}

/// Decodes unpadded standard base64 (a whole number of 4-character groups).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for group in text.as_bytes().chunks(4) {
        if group.len() != 4 {
            return None;
        }
        let mut n = 0u32;
        for &c in group {
            n = n << 6 | value(c)?;
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::png_size;

    #[test]
    fn reads_png_dimensions_from_a_reply() {
        // A 1920x1080 PNG signature and IHDR, base64-encoded.
        let reply = r#"{"id":3,"result":{"data":"iVBORw0KGgoAAAANSUhEUgAAB4AAAAQ4CAYAAAB"}}"#;
        let shot = png_size(reply).expect("a PNG");
        assert_eq!((shot.width, shot.height), (1920, 1080));
    }
}
