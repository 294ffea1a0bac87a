// The live viewer, the console and the computer API, driven by a real browser (Playwright
// launching Chromium) against ingot: frames show what the session shows, clicks, typing and
// the wheel reach the session's page, new tabs appear, a read-only viewer can send nothing,
// tokens and origins are checked, and the viewer says when the session ended. Screenshots of
// the viewer and the console are saved under tests/e2e/artifacts/ for people to look at.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';
import Steel from 'steel-sdk';

import { startGateway, withGatewayLog, repoRoot, sleep } from './harness.mjs';

const T = { timeout: 120_000 };
const ARTIFACTS = path.join(repoRoot, 'tests', 'e2e', 'artifacts');
const CHROMIUM = process.env.INGOT_CHROMIUM || '/usr/lib/chromium/chromium';
const FLAGS = [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// The session's page: a red left half and a blue right half, a button, an input, a tall body
// to scroll, and a log of what happened.
const PAGE = `<!doctype html><html><body style="margin:0;height:3000px">
<div style="position:fixed;left:0;top:0;width:400px;height:600px;background:#d00"></div>
<div style="position:fixed;left:400px;top:0;width:400px;height:600px;background:#00d"></div>
<button id=b style="position:fixed;left:100px;top:100px;width:200px;height:80px" onclick="document.title='clicked'">b</button>
<input id=t style="position:fixed;left:100px;top:300px;width:300px;height:40px">
</body></html>`;

let gw;
let site;
let viewerBrowser;

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  site = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(req.url === '/other' ? '<title>other</title>other tab' : PAGE);
  });
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
  gw = await startGateway({ args: ['--pool-size', '0'] });
  viewerBrowser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
});

after(async () => {
  await viewerBrowser?.close();
  await gw?.stop();
  site?.close();
});

const siteUrl = (p = '/') => `http://127.0.0.1:${site.address().port}${p}`;

/** A session showing the test page, driven over CDP by Playwright (the session's client). */
async function sessionWithPage(client) {
  const session = await client.sessions.create({ dimensions: { width: 800, height: 600 }, timeout: 120_000 });
  const cdp = await chromium.connectOverCDP(session.websocketUrl, { timeout: 60_000 });
  const page = cdp.contexts()[0].pages()[0];
  await page.goto(siteUrl('/'));
  return { session, cdp, page };
}

/** Opens `url` in the person's browser and waits for the first frame on the canvas. */
async function openViewer(url) {
  const tab = await viewerBrowser.newPage({ viewport: { width: 1000, height: 800 } });
  await tab.goto(url);
  await tab.waitForFunction(() => window.ingotViewer?.framesDrawn > 0, null, { timeout: 30_000 });
  return tab;
}

/** The viewer's canvas point for page point (x, y) of an 800×600 page. */
async function canvasPoint(tab, x, y) {
  const box = await tab.locator('#screen').boundingBox();
  return { x: box.x + (x / 800) * box.width, y: box.y + (y / 600) * box.height };
}

/** An HTTP upgrade to `pathAndQuery` with `headers`; resolves with the status code. */
function upgradeStatus(pathAndQuery, headers) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(gw.port, '127.0.0.1', () => {
      const lines = [
        `GET ${pathAndQuery} HTTP/1.1`, `Host: 127.0.0.1:${gw.port}`, 'Connection: Upgrade',
        'Upgrade: websocket', 'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
        ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
      ];
      socket.write(lines.join('\r\n') + '\r\n\r\n');
    });
    socket.setTimeout(10_000, () => reject(new Error('no answer to the upgrade')));
    socket.once('data', (data) => {
      resolve(Number(data.toString().split(' ')[1]));
      socket.destroy();
    });
    socket.once('error', reject);
  });
}

test('the viewer shows the session live and steers it', T, withGatewayLog(() => gw, async () => {
  const client = new Steel({ baseURL: gw.baseUrl, maxRetries: 0 });
  const { session, cdp, page } = await sessionWithPage(client);
  try {
    assert.match(session.debugUrl, /\/viewer\?token=[0-9a-f]{32}$/);
    assert.match(session.sessionViewerUrl, /\/view\?token=[0-9a-f]{32}$/);
    const tab = await openViewer(session.debugUrl);

    // The canvas shows what the session shows: compare sampled pixels with a screenshot.
    const shot = (await page.screenshot({ type: 'png' })).toString('base64');
    const diff = await tab.evaluate(async (png) => {
      const img = new Image();
      img.src = `data:image/png;base64,${png}`;
      await img.decode();
      const screen = document.getElementById('screen');
      const sample = (source, w, h) => {
        const c = new OffscreenCanvas(80, 60);
        const ctx = c.getContext('2d');
        ctx.drawImage(source, 0, 0, w, h, 0, 0, 80, 60);
        return ctx.getImageData(0, 0, 80, 60).data;
      };
      const a = sample(screen, screen.width, screen.height);
      const b = sample(img, img.width, img.height);
      let total = 0;
      for (let i = 0; i < a.length; i += 4) total += Math.abs(a[i] - b[i]) + Math.abs(a[i + 2] - b[i + 2]);
      return total / (a.length / 4) / 2;
    }, shot);
    assert.ok(diff < 24, `canvas and screenshot differ by ${diff} per channel`);

    // A click on the button, through the viewer, reaches the page.
    const button = await canvasPoint(tab, 200, 140);
    await tab.mouse.click(button.x, button.y);
    await page.waitForFunction(() => document.title === 'clicked', null, { timeout: 10_000 });

    // Typing fills the input.
    const input = await canvasPoint(tab, 250, 320);
    await tab.mouse.click(input.x, input.y);
    await tab.keyboard.type('hello viewer');
    await page.waitForFunction(() => document.querySelector('#t').value === 'hello viewer', null, { timeout: 10_000 });

    // The wheel scrolls.
    const middle = await canvasPoint(tab, 600, 300);
    await tab.mouse.move(middle.x, middle.y);
    await tab.mouse.wheel(0, 500);
    await page.waitForFunction(() => window.scrollY > 0, null, { timeout: 10_000 });
    await tab.screenshot({ path: path.join(ARTIFACTS, 'viewer.png') });

    // A tab the session's script opens appears in the tab switcher, and the viewer follows it.
    await page.evaluate((url) => window.open(url), siteUrl('/other'));
    await tab.waitForFunction(() => document.querySelectorAll('#tabs button[data-page-id]').length === 2, null, { timeout: 15_000 });

    // sessionViewerUrl: the viewer with the session's facts.
    const view = await viewerBrowser.newPage({ viewport: { width: 1280, height: 800 } });
    await view.goto(session.sessionViewerUrl);
    await view.waitForFunction(() => document.querySelector('#status')?.textContent.includes('live'), null, { timeout: 15_000 });
    await view.screenshot({ path: path.join(ARTIFACTS, 'session-viewer.png') });

    // After release the viewer says so, and the token is refused.
    await client.sessions.release(session.id);
    await tab.waitForSelector('#ended', { state: 'visible', timeout: 15_000 });
    assert.equal((await tab.textContent('#ended')).includes('session ended'), true);
    await view.waitForSelector('#ended', { state: 'visible', timeout: 15_000 });
    assert.equal((await view.textContent('#reason')).trim(), 'user_requested');
    const token = new URL(session.debugUrl).searchParams.get('token');
    const facts = await fetch(`${gw.baseUrl}/v1/sessions/${session.id}/viewer/facts?token=${token}`);
    assert.equal(facts.status, 410);
    await tab.close();
    await view.close();
  } finally {
    await cdp.close().catch(() => {});
    await client.sessions.release(session.id).catch(() => {});
  }
}));

test('showControls navigates the session, and theme applies', T, withGatewayLog(() => gw, async () => {
  const client = new Steel({ baseURL: gw.baseUrl, maxRetries: 0 });
  const { session, cdp, page } = await sessionWithPage(client);
  try {
    const plain = await openViewer(session.debugUrl);
    assert.equal(await plain.isVisible('#address'), false, 'no controls unless asked');
    assert.ok(await plain.evaluate(() => document.body.classList.contains('theme-dark')));
    await plain.close();
    const tab = await openViewer(`${session.debugUrl}&showControls=true&theme=light`);
    assert.ok(await tab.evaluate(() => document.body.classList.contains('theme-light')));
    await tab.fill('#address', siteUrl('/other'));
    await tab.press('#address', 'Enter');
    await page.waitForURL(siteUrl('/other'), { timeout: 15_000 });
    await tab.click('#back');
    // Back may restore the page from the back-forward cache, without a load event.
    await page.waitForFunction(() => location.pathname === '/', null, { timeout: 15_000 });
    await page.evaluate(() => { window.marker = 1; });
    await tab.click('#reload');
    await page.waitForFunction(() => window.marker === undefined, null, { timeout: 15_000 });
    await tab.close();
  } finally {
    await cdp.close().catch(() => {});
    await client.sessions.release(session.id).catch(() => {});
  }
}));

test('a read-only viewer sends nothing, and tokens and origins are checked', T, withGatewayLog(() => gw, async () => {
  const client = new Steel({ baseURL: gw.baseUrl, maxRetries: 0 });
  const { session, cdp, page } = await sessionWithPage(client);
  const other = await client.sessions.create({ timeout: 60_000 });
  try {
    const tab = await openViewer(`${session.debugUrl}&interactive=false`);
    const button = await canvasPoint(tab, 200, 140);
    await tab.mouse.click(button.x, button.y);
    await tab.keyboard.type('x');
    // A modified page sends input straight to its socket: the server ignores it too.
    await tab.evaluate((url) => new Promise((resolve) => {
      const ws = new WebSocket(url);
      ws.onopen = () => {
        for (const event of ['mousePressed', 'mouseReleased']) {
          ws.send(JSON.stringify({ type: 'mouse', event, x: 200, y: 140, button: 'left', clickCount: 1, modifiers: 0 }));
        }
        ws.send(JSON.stringify({ type: 'navigate', url: 'http://127.0.0.1:9/' }));
        setTimeout(() => { ws.close(); resolve(); }, 500);
      };
      ws.onerror = () => resolve();
    }), `${session.debugUrl.replace('http://', 'ws://').replace('/viewer?', '/viewer/ws?')}&interactive=false`);
    await sleep(300);
    assert.notEqual(await page.title(), 'clicked', 'a read-only viewer clicked');
    assert.equal(new URL(page.url()).pathname, '/', 'a read-only viewer navigated');
    await tab.close();

    const token = new URL(session.debugUrl).searchParams.get('token');
    const otherToken = new URL(other.debugUrl).searchParams.get('token');
    const origin = `http://127.0.0.1:${gw.port}`;
    const ws = (t) => `/v1/sessions/${session.id}/viewer/ws?token=${t}`;
    assert.equal(await upgradeStatus(ws(token), { Origin: origin }), 101);
    assert.equal(await upgradeStatus(ws('0'.repeat(32)), { Origin: origin }), 403, 'a wrong token');
    assert.equal(await upgradeStatus(ws(otherToken), { Origin: origin }), 403, "another session's token");
    assert.equal(await upgradeStatus(ws(token), { Origin: 'http://evil.example' }), 403, 'a foreign origin');
    assert.equal(await upgradeStatus(ws(token), {}), 403, 'no origin');
    const page403 = await fetch(`${gw.baseUrl}/v1/sessions/${session.id}/viewer?token=${otherToken}`);
    assert.equal(page403.status, 403);
    // The API's refusal of cross-origin requests holds.
    const foreign = await fetch(`${gw.baseUrl}/v1/sessions`, { headers: { Origin: 'http://evil.example' } });
    assert.equal(foreign.status, 403);
  } finally {
    await cdp.close().catch(() => {});
    await client.sessions.release(session.id).catch(() => {});
    await client.sessions.release(other.id).catch(() => {});
  }
}));

test('the console lists sessions with thumbnails, releases one, and charts usage', T, withGatewayLog(() => gw, async () => {
  const client = new Steel({ baseURL: gw.baseUrl, maxRetries: 0 });
  const { session, cdp } = await sessionWithPage(client);
  try {
    const ui = await viewerBrowser.newPage({ viewport: { width: 1280, height: 800 } });
    await ui.goto(`${gw.baseUrl}/ui`);
    const row = `#sessions tr[data-session-id="${session.id}"]`;
    await ui.waitForSelector(row, { timeout: 15_000 });
    await ui.waitForFunction((sel) => {
      const img = document.querySelector(`${sel} img.thumb`);
      return img && img.complete && img.naturalWidth > 0;
    }, row, { timeout: 15_000 });
    await ui.waitForFunction(() => document.querySelector('#usage-chart')?.dataset.rendered === 'true', null, { timeout: 15_000 });
    assert.equal(await ui.getAttribute('#usage-chart', 'data-bars'), '24');
    await ui.screenshot({ path: path.join(ARTIFACTS, 'console.png') });
    await ui.click(`${row} button.release`);
    const deadline = Date.now() + 15_000;
    while ((await client.sessions.retrieve(session.id)).status === 'live') {
      assert.ok(Date.now() < deadline, 'the console did not release the session');
      await sleep(100);
    }
    await ui.close();
  } finally {
    await cdp.close().catch(() => {});
    await client.sessions.release(session.id).catch(() => {});
  }
}));

test('the computer API through the SDK', T, withGatewayLog(() => gw, async () => {
  const client = new Steel({ baseURL: gw.baseUrl, maxRetries: 0 });
  const { session, cdp, page } = await sessionWithPage(client);
  try {
    await client.sessions.computer(session.id, { action: 'click_mouse', button: 'left', coordinates: [200, 140] });
    assert.equal(await page.title(), 'clicked');
    const shot = await client.sessions.computer(session.id, { action: 'take_screenshot' });
    const png = Buffer.from(shot.base64_image, 'base64');
    assert.deepEqual([png.readUInt32BE(16), png.readUInt32BE(20)], [800, 600]);
    await assert.rejects(
      client.sessions.computer(session.id, { action: 'move_mouse', coordinates: [5000, 1] }),
      (e) => e instanceof Steel.BadRequestError && /coordinates/.test(e.message),
    );
  } finally {
    await cdp.close().catch(() => {});
    await client.sessions.release(session.id).catch(() => {});
  }
}));
