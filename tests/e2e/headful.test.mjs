// Headful sessions (`"headless": false`): full Chromium on an Xvfb display of its own. Created
// through steel-sdk, driven with Puppeteer and Playwright against a page served on 127.0.0.1,
// screenshots of the session's size that show the page; no `HeadlessChrome` and no
// `navigator.webdriver` on a headful and on a default session; the live viewer draws a headful
// session's frames; fullscreen works; release leaves no Xvfb and no Chromium behind; and an
// Xvfb killed under a session fails it, closes its CDP clients and leaves no Chromium.
//
// Needs Debian's `chromium` and `xvfb` (deploy/install-deps.sh installs them): /healthz must
// say `engines.headful: true`. The viewer is opened in a browser of the test's own (Playwright
// launching full Chromium headless), as in viewer.test.mjs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';
import Steel from 'steel-sdk';

import {
  startGateway,
  withGatewayLog,
  assertPng,
  assertSessionShape,
  processTable,
  descendantsOf,
  processesMentioning,
  sleep,
} from './harness.mjs';
import { connect, disconnectQuietly } from './puppeteer-client.mjs';

const T = { timeout: 120_000 };
// Not a default size, so that a screenshot of the right size is the session's doing.
const DIMENSIONS = { width: 1000, height: 700 };
const VIEWER_CHROMIUM = process.env.INGOT_CHROMIUM || '/usr/lib/chromium/chromium';
const VIEWER_FLAGS = [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const GONE_WITHIN_MS = 15_000;

// The page: a red left half and a blue right half (so a screenshot or a viewer frame is not
// blank, and shows this page), a title, and a button that asks for fullscreen.
const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>headful e2e</title></head>
<body style="margin:0">
<div style="position:fixed;left:0;top:0;width:50vw;height:100vh;background:#d00"></div>
<div style="position:fixed;left:50vw;top:0;width:50vw;height:100vh;background:#00d"></div>
<h1 id="greeting" style="position:fixed;left:20px;top:120px;color:#fff">hello from 127.0.0.1</h1>
<button id="fs" style="position:fixed;left:20px;top:20px;width:200px;height:60px"
  onclick="document.documentElement.requestFullscreen().then(() => { document.title = 'fullscreen'; },
    (e) => { document.title = 'refused: ' + e.name; })">fullscreen</button>
</body></html>`;

let gw;
let site;
let client;

before(async () => {
  site = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(PAGE);
  });
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
  gw = await startGateway({ args: ['--pool-size', '0'] });
  client = new Steel({ baseURL: gw.baseUrl, maxRetries: 0 });
  const engines = gw.health?.engines;
  assert.equal(
    engines?.headful,
    true,
    `headful sessions unavailable (/healthz engines: ${JSON.stringify(engines)}); ` +
      'deploy/install-deps.sh installs chromium and xvfb',
  );
});

after(async () => {
  try {
    await gw?.stop();
  } finally {
    site?.closeAllConnections?.();
    site?.close();
  }
});

const siteUrl = () => `http://127.0.0.1:${site.address().port}/`;

/** Creates a headful session through steel-sdk. */
function createHeadful(extra = {}) {
  return client.sessions.create({ headless: false, dimensions: DIMENSIONS, timeout: 120_000, ...extra });
}

/** The Xvfb processes of this test's gateway: its descendants, or naming its data dir. */
function ourXvfbs() {
  const table = processTable();
  const mine = descendantsOf(gw.child.pid, table);
  return table.filter(
    (p) => path.basename(p.argv0) === 'Xvfb' && (mine.has(p.pid) || p.cmdline.includes(gw.dataDir)),
  );
}

/** Every Xvfb on the machine, as `pgrep -f Xvfb` counts them (for the diagnostics only). */
function pgrepXvfb() {
  try {
    return execFileSync('pgrep', ['-f', 'Xvfb'], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).length;
  } catch {
    return 0; // pgrep exits 1 when nothing matches
  }
}

/** The processes (browser and helpers, and a display that names it) of one session. */
function sessionProcesses(id) {
  return processesMentioning(path.join(gw.dataDir, 'sessions', id));
}

/** Waits until `fn()` returns a falsy value or an empty array; returns the last value. */
async function waitGone(fn, timeoutMs = GONE_WITHIN_MS) {
  const deadline = Date.now() + timeoutMs;
  let last = fn();
  while ((Array.isArray(last) ? last.length : last) && Date.now() < deadline) {
    await sleep(100);
    last = fn();
  }
  return last;
}

/**
 * Decodes a PNG in `page` (a page of a session, Puppeteer's or Playwright's) and samples the
 * middle of its left and right halves: {width, height, left: [r,g,b], right: [r,g,b]}.
 */
function samplePng(page, png) {
  return page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
    const y = Math.floor(canvas.height * 0.75);
    return { width: canvas.width, height: canvas.height, left: at(Math.floor(canvas.width / 4), y), right: at(Math.floor((canvas.width * 3) / 4), y) };
  }, Buffer.from(png).toString('base64'));
}

const isRed = ([r, g, b]) => r > 150 && g < 90 && b < 90;
const isBlue = ([r, g, b]) => b > 150 && r < 90 && g < 90;

/** A screenshot of the session's size that shows the test page. */
async function assertShowsPage(page, png, label) {
  const info = assertPng(png, label);
  assert.deepEqual([info.width, info.height], [DIMENSIONS.width, DIMENSIONS.height], `${label} size`);
  const sample = await samplePng(page, png);
  assert.ok(isRed(sample.left) && isBlue(sample.right), `${label} does not show the page: ${JSON.stringify(sample)}`);
  return info;
}

/** What a page says about automation. */
function identity(page) {
  return page.evaluate(() => ({
    userAgent: navigator.userAgent,
    brands: (navigator.userAgentData?.brands ?? []).map((b) => b.brand),
    webdriver: navigator.webdriver,
  }));
}

function assertNotAutomated(id, label) {
  assert.ok(!id.userAgent.includes('HeadlessChrome'), `${label}: userAgent ${id.userAgent}`);
  assert.ok(!id.brands.some((b) => b.includes('HeadlessChrome')), `${label}: brands ${id.brands}`);
  assert.equal(id.webdriver, false, `${label}: navigator.webdriver`);
}

test('a headful session: Session JSON, Puppeteer and Playwright drive it, screenshots of its size', T, withGatewayLog(() => gw, async (t) => {
  const started = Date.now();
  const session = await createHeadful();
  t.diagnostic(`headful create took ${Date.now() - started} ms`);
  let browser;
  let cdp;
  try {
    assertSessionShape(session, gw);
    assert.equal(session.status, 'live');
    assert.equal(session.headless, false, 'the Session JSON says headless: false');
    assert.deepEqual(session.dimensions, DIMENSIONS);
    assert.equal((await client.sessions.retrieve(session.id)).headless, false, 'retrieve says headless: false');
    assert.equal((await gw.getSession(session.id)).headless, false, 'the raw JSON says headless: false');

    // Puppeteer: navigate, evaluate, screenshot.
    browser = await connect(session.websocketUrl);
    const pages = await browser.pages();
    assert.equal(pages.length, 1, `expected one open page, got ${pages.map((p) => p.url())}`);
    const page = pages[0];
    const response = await page.goto(siteUrl(), { waitUntil: 'load' });
    assert.equal(response.status(), 200);
    assert.equal(await page.title(), 'headful e2e');
    assert.equal(await page.$eval('#greeting', (el) => el.textContent), 'hello from 127.0.0.1');
    assert.deepEqual(
      await page.evaluate(() => [screen.width, screen.height]),
      [DIMENSIONS.width, DIMENSIONS.height],
      'the display has the session\'s dimensions',
    );
    const shot = await assertShowsPage(page, await page.screenshot({ type: 'png' }), 'Puppeteer screenshot');
    t.diagnostic(`Puppeteer screenshot ${shot.width}x${shot.height}, ${shot.bytes} bytes`);
    await browser.disconnect();

    // Playwright over CDP, on the same page.
    cdp = await chromium.connectOverCDP(session.websocketUrl, { timeout: 60_000 });
    const pwPage = cdp.contexts()[0].pages()[0];
    assert.equal(await pwPage.title(), 'headful e2e');
    assert.equal(await pwPage.evaluate(() => 6 * 7), 42);
    await pwPage.goto(siteUrl(), { waitUntil: 'load' });
    await assertShowsPage(pwPage, await pwPage.screenshot({ type: 'png' }), 'Playwright screenshot');
    await cdp.close();
    cdp = undefined;

    assert.equal((await client.sessions.retrieve(session.id)).status, 'live');
    const released = await client.sessions.release(session.id);
    assert.equal(released.success, true);
  } finally {
    await disconnectQuietly(browser);
    await cdp?.close().catch(() => {});
    await gw.releaseQuietly(session.id);
  }
}));

test('no HeadlessChrome and navigator.webdriver false, headful and default sessions', T, withGatewayLog(() => gw, async (t) => {
  const headful = await createHeadful();
  const headless = await client.sessions.create({ timeout: 120_000 });
  try {
    for (const [label, session] of [['headful', headful], [`default (${gw.engine})`, headless]]) {
      const cdp = await chromium.connectOverCDP(session.websocketUrl, { timeout: 60_000 });
      try {
        const page = cdp.contexts()[0].pages()[0];
        await page.goto(siteUrl(), { waitUntil: 'load' });
        const id = await identity(page);
        t.diagnostic(`${label}: ${id.userAgent} [${id.brands}] webdriver=${id.webdriver}`);
        assertNotAutomated(id, label);
      } finally {
        await cdp.close().catch(() => {});
      }
    }
  } finally {
    await gw.releaseQuietly(headful.id);
    await gw.releaseQuietly(headless.id);
  }
}));

test('the live viewer draws frames of a headful session', T, withGatewayLog(() => gw, async () => {
  const session = await createHeadful();
  let cdp;
  let viewer;
  try {
    cdp = await chromium.connectOverCDP(session.websocketUrl, { timeout: 60_000 });
    await cdp.contexts()[0].pages()[0].goto(siteUrl(), { waitUntil: 'load' });
    viewer = await chromium.launch({ executablePath: VIEWER_CHROMIUM, args: VIEWER_FLAGS });
    const tab = await viewer.newPage({ viewport: { width: 1200, height: 900 } });
    await tab.goto(session.debugUrl);
    await tab.waitForFunction(() => window.ingotViewer?.framesDrawn > 0, null, { timeout: 30_000 });
    // The canvas shows the page: red on the left, blue on the right (a frame may lag a
    // navigation, so wait for one that shows it).
    const sampleCanvas = () => tab.evaluate(() => {
      const screen = document.getElementById('screen');
      const c = new OffscreenCanvas(screen.width, screen.height);
      const ctx = c.getContext('2d');
      ctx.drawImage(screen, 0, 0);
      const y = Math.floor(screen.height * 0.75);
      const at = (x) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
      return { width: screen.width, height: screen.height, left: at(Math.floor(screen.width / 4)), right: at(Math.floor((screen.width * 3) / 4)) };
    });
    const deadline = Date.now() + 15_000;
    let sample = await sampleCanvas();
    while (!(isRed(sample.left) && isBlue(sample.right)) && Date.now() < deadline) {
      await sleep(200);
      sample = await sampleCanvas();
    }
    assert.ok(isRed(sample.left) && isBlue(sample.right), `the viewer does not show the page: ${JSON.stringify(sample)}`);
  } finally {
    await viewer?.close().catch(() => {});
    await cdp?.close().catch(() => {});
    await gw.releaseQuietly(session.id);
  }
}));

test('fullscreen works on a headful session', T, withGatewayLog(() => gw, async (t) => {
  const session = await createHeadful();
  let browser;
  try {
    browser = await connect(session.websocketUrl);
    const [page] = await browser.pages();
    await page.goto(siteUrl(), { waitUntil: 'load' });
    // A click through Input.dispatchMouseEvent is the user gesture requestFullscreen needs.
    await page.click('#fs');
    await page.waitForFunction(() => document.title !== 'headful e2e', { timeout: 10_000 });
    assert.equal(await page.title(), 'fullscreen');
    assert.equal(await page.evaluate(() => document.fullscreenElement === document.documentElement), true);
    // How much of the display the page then covers (without a window manager on the display,
    // Chromium's window may keep its size): reported, not asserted.
    await sleep(500);
    const covered = await page.evaluate(() => [innerWidth, innerHeight, screen.width, screen.height]);
    t.diagnostic(`fullscreen page ${covered[0]}x${covered[1]} on a ${covered[2]}x${covered[3]} display`);
    await page.evaluate(() => document.exitFullscreen());
    await page.waitForFunction(() => document.fullscreenElement === null, { timeout: 10_000 });
  } finally {
    await disconnectQuietly(browser);
    await gw.releaseQuietly(session.id);
  }
}));

test('release leaves no Xvfb and no Chromium behind', T, withGatewayLog(() => gw, async (t) => {
  // The sessions of the tests before have all been released: their Xvfbs are gone too.
  const before = await waitGone(() => ourXvfbs());
  assert.deepEqual(before, [], 'Xvfb left by the released sessions of the tests before');
  const machineBefore = pgrepXvfb();
  const session = await createHeadful();
  try {
    const during = ourXvfbs();
    assert.equal(during.length, before.length + 1, `one Xvfb for the session: ${JSON.stringify(during)}`);
    assert.ok(sessionProcesses(session.id).length > 0, 'the session has a browser');
    t.diagnostic(`pgrep -f Xvfb: ${machineBefore} before, ${pgrepXvfb()} with the session`);
    const released = await client.sessions.release(session.id);
    assert.equal(released.success, true);
    assert.deepEqual(await waitGone(() => sessionProcesses(session.id)), [], 'Chromium left after release');
    const after = await waitGone(() => ourXvfbs().length > before.length);
    assert.equal(after, false, `Xvfb left after release: ${JSON.stringify(ourXvfbs())}`);
    t.diagnostic(`pgrep -f Xvfb after release: ${pgrepXvfb()}`);
  } finally {
    await gw.releaseQuietly(session.id);
  }
}));

test('a killed Xvfb fails its session, closes its CDP clients and leaves no Chromium', T, withGatewayLog(() => gw, async (t) => {
  const before = new Set((await waitGone(() => ourXvfbs())).map((p) => p.pid));
  const session = await createHeadful();
  let browser;
  let cdp;
  try {
    browser = await connect(session.websocketUrl);
    const puppeteerClosed = new Promise((resolve) => browser.once('disconnected', resolve));
    cdp = await chromium.connectOverCDP(session.websocketUrl, { timeout: 60_000 });
    const playwrightClosed = new Promise((resolve) => cdp.once('disconnected', resolve));
    await cdp.contexts()[0].pages()[0].goto(siteUrl(), { waitUntil: 'load' });

    const xvfb = ourXvfbs().filter((p) => !before.has(p.pid));
    assert.equal(xvfb.length, 1, `the session's Xvfb: ${JSON.stringify(xvfb)}`);
    t.diagnostic(`killing Xvfb ${xvfb[0].pid} (uid ${xvfb[0].uid}): ${xvfb[0].cmdline.slice(0, 200)}`);
    process.kill(xvfb[0].pid, 'SIGKILL');

    const ended = await gw.waitForSession(session.id, (s) => s.status !== 'live', GONE_WITHIN_MS);
    assert.equal(ended.status, 'failed', `retrieve after the Xvfb died: ${JSON.stringify(ended)}`);
    t.diagnostic(`releaseReason ${ended.releaseReason}`);
    const closed = await Promise.race([
      Promise.all([puppeteerClosed, playwrightClosed]).then(() => true),
      sleep(GONE_WITHIN_MS).then(() => false),
    ]);
    assert.equal(closed, true, `CDP clients still connected: Puppeteer ${browser.connected}, Playwright ${cdp.isConnected()}`);
    assert.deepEqual(await waitGone(() => sessionProcesses(session.id)), [], 'Chromium left after its Xvfb died');
    assert.deepEqual(await waitGone(() => ourXvfbs().filter((p) => !before.has(p.pid))), [], 'Xvfb left');
  } finally {
    await disconnectQuietly(browser);
    await cdp?.close().catch(() => {});
    await gw.releaseQuietly(session.id);
  }
}));
