// Puppeteer (puppeteer-core) against ingot's CDP proxy.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  useGatewayAndSite,
  wsUpgradeStatus,
  assertPng,
  assertSessionShape,
  withGatewayLog,
} from './harness.mjs';
import { connect, disconnectQuietly } from './puppeteer-client.mjs';

const T = { timeout: 120_000 };

let gw;
let site;
useGatewayAndSite((g, s) => {
  gw = g;
  site = s;
});

test('create, connect, navigate, evaluate, screenshot, disconnect, reconnect, release', T, withGatewayLog(() => gw, async (t) => {
  const session = await gw.createSession({ timeout: 120_000 });
  let browser;
  try {
    assertSessionShape(session, gw);
    assert.equal(session.status, 'live');
    assert.equal(session.releaseReason, null);
    assert.equal(session.timeout, 120_000);

    // Connect and use the page the gateway opened for the session.
    browser = await connect(session.websocketUrl);
    assert.equal(browser.connected, true);
    const version = await browser.version();
    assert.match(version, /Chrom/i, `browser.version() = ${version}`);
    const pages = await browser.pages();
    assert.equal(pages.length, 1, `expected exactly one open page, got ${pages.map((p) => p.url())}`);
    const page = pages[0];

    const target = `${site.url}/`;
    const response = await page.goto(target, { waitUntil: 'load' });
    assert.equal(response.status(), 200);
    assert.equal(page.url(), target);
    assert.equal(await page.title(), 'ingot e2e');

    const h1 = await page.$eval('#greeting', (el) => el.textContent);
    assert.equal(h1, 'hello from 127.0.0.1');
    const marker = await page.evaluate(() => {
      window.__marker = 42;
      return window.__marker + 1;
    });
    assert.equal(marker, 43);

    const png = await page.screenshot({ type: 'png' });
    const info = assertPng(png);
    t.diagnostic(`screenshot ${info.width}x${info.height}, ${info.bytes} bytes`);

    // Disconnecting leaves the session and its browser running.
    await browser.disconnect();
    assert.equal(browser.connected, false);
    const afterDisconnect = await gw.getSession(session.id);
    assert.equal(afterDisconnect.status, 'live');
    assert.equal(afterDisconnect.releaseReason, null);

    // Reconnect with the same URL: the page and its JS state survived.
    browser = await connect(session.websocketUrl);
    const again = await browser.pages();
    const survivor = again.find((p) => p.url() === target);
    assert.ok(survivor, `page ${target} not found after reconnect; pages: ${again.map((p) => p.url())}`);
    assert.equal(await survivor.evaluate(() => window.__marker), 42);
    assert.equal(await survivor.$eval('#greeting', (el) => el.textContent), 'hello from 127.0.0.1');

    // A second navigation works over the reconnected socket too.
    await survivor.goto(`${site.url}/second`, { waitUntil: 'load' });
    assert.equal(await survivor.title(), 'ingot e2e second');
    await browser.disconnect();

    // Release ends the session for good.
    const rel = await gw.releaseSession(session.id);
    assert.equal(rel.status, 200, `release: ${rel.text}`);
    assert.equal(rel.body.success, true);
    assert.equal(typeof rel.body.message, 'string');

    const released = await gw.getSession(session.id);
    assert.equal(released.status, 'released');
    assert.equal(released.releaseReason, 'user_requested');

    const status = await wsUpgradeStatus(session.websocketUrl);
    assert.ok(status >= 400 && status < 500, `upgrade after release answered ${status}, want 4xx`);
    const status2 = await wsUpgradeStatus(`ws://127.0.0.1:${gw.port}/devtools/browser/${session.id}`);
    assert.ok(status2 >= 400 && status2 < 500, `devtools/browser upgrade after release answered ${status2}`);
    await assert.rejects(connect(session.websocketUrl), 'puppeteer.connect to a released session must fail');
  } finally {
    await disconnectQuietly(browser);
    await gw.releaseQuietly(session.id);
  }
}));

test('newPage() works and pages are listed across reconnects', T, withGatewayLog(() => gw, async () => {
  const session = await gw.createSession();
  let browser;
  try {
    browser = await connect(session.websocketUrl);
    const page = await browser.newPage();
    await page.goto(`${site.url}/second`, { waitUntil: 'load' });
    assert.equal(await page.$eval('#greeting', (el) => el.textContent), 'second page');
    const urls = (await browser.pages()).map((p) => p.url());
    assert.equal(urls.length, 2, `pages: ${urls}`);
    await browser.disconnect();

    browser = await connect(session.websocketUrl);
    const urlsAgain = (await browser.pages()).map((p) => p.url());
    assert.ok(urlsAgain.includes(`${site.url}/second`), `pages after reconnect: ${urlsAgain}`);
    assert.equal(urlsAgain.length, 2, `pages after reconnect: ${urlsAgain}`);
  } finally {
    await disconnectQuietly(browser);
    await gw.releaseQuietly(session.id);
  }
}));

test('browser.close() ends the session with releaseReason browser_closed', T, withGatewayLog(() => gw, async () => {
  const session = await gw.createSession();
  let browser;
  try {
    browser = await connect(session.websocketUrl);
    const [page] = await browser.pages();
    await page.goto(`${site.url}/`, { waitUntil: 'load' });
    await browser.close();

    const ended = await gw.waitForSession(session.id, (s) => s.status !== 'live', 3_000);
    assert.equal(ended.status, 'released', `session after browser.close(): ${JSON.stringify(ended)}`);
    assert.equal(ended.releaseReason, 'browser_closed');

    const status = await wsUpgradeStatus(session.websocketUrl);
    assert.ok(status >= 400 && status < 500, `upgrade after browser.close() answered ${status}, want 4xx`);
  } finally {
    await disconnectQuietly(browser);
    await gw.releaseQuietly(session.id);
  }
}));

test('unknown session ids are refused before the upgrade', T, withGatewayLog(() => gw, async () => {
  const unknown = '00000000-0000-4000-8000-000000000000';
  const s1 = await wsUpgradeStatus(`ws://127.0.0.1:${gw.port}/?sessionId=${unknown}`);
  assert.ok(s1 >= 400 && s1 < 500, `unknown ?sessionId= answered ${s1}`);
  const s2 = await wsUpgradeStatus(`ws://127.0.0.1:${gw.port}/devtools/browser/${unknown}`);
  assert.ok(s2 >= 400 && s2 < 500, `unknown /devtools/browser/ answered ${s2}`);
  const s3 = await wsUpgradeStatus(`ws://127.0.0.1:${gw.port}/`);
  assert.ok(s3 >= 400 && s3 < 500, `upgrade without a session id answered ${s3}`);
}));
