// Playwright (playwright-core, connectOverCDP) against ingot's CDP proxy.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

import {
  useGatewayAndSite,
  wsUpgradeStatus,
  assertPng,
  assertSessionShape,
  withGatewayLog,
} from './harness.mjs';

const T = { timeout: 120_000 };

let gw;
let site;
useGatewayAndSite((g, s) => {
  gw = g;
  site = s;
});

function connect(endpoint) {
  return chromium.connectOverCDP(endpoint, { timeout: 60_000 });
}

async function closeQuietly(browser) {
  if (browser?.isConnected()) {
    try {
      await browser.close();
    } catch {
      // cleanup only
    }
  }
}

/** The single page of the default context, which the gateway opens for every session. */
function defaultPage(browser) {
  const contexts = browser.contexts();
  assert.ok(contexts.length >= 1, 'connectOverCDP found no browser context');
  const pages = contexts[0].pages();
  assert.ok(pages.length >= 1, 'the default context has no page');
  return pages[0];
}

test('create, connect, navigate, evaluate, screenshot, disconnect, reconnect, release', T, withGatewayLog(() => gw, async (t) => {
  const session = await gw.createSession({ dimensions: { width: 1280, height: 800 } });
  let browser;
  try {
    assertSessionShape(session, gw);
    assert.equal(session.status, 'live');
    assert.equal(session.releaseReason, null);
    assert.deepEqual(session.dimensions, { width: 1280, height: 800 });

    browser = await connect(session.websocketUrl);
    assert.equal(browser.isConnected(), true);
    assert.match(browser.version(), /^\d+\./, `browser.version() = ${browser.version()}`);
    assert.equal(browser.contexts()[0].pages().length, 1, 'expected exactly one open page');
    const page = defaultPage(browser);

    const target = `${site.url}/`;
    const response = await page.goto(target, { waitUntil: 'load' });
    assert.equal(response.status(), 200);
    assert.equal(page.url(), target);
    assert.equal(await page.title(), 'ingot e2e');
    assert.equal(await page.locator('#greeting').textContent(), 'hello from 127.0.0.1');

    // The session's dimensions are the page's viewport.
    const size = await page.evaluate(() => ({ w: window.innerWidth, h: window.innerHeight }));
    assert.deepEqual(size, { w: 1280, h: 800 });

    assert.equal(
      await page.evaluate(() => {
        window.__marker = 42;
        return typeof window.__marker;
      }),
      'number',
    );

    const png = await page.screenshot({ type: 'png' });
    const info = assertPng(png);
    t.diagnostic(`screenshot ${info.width}x${info.height}, ${info.bytes} bytes`);

    // On a connectOverCDP browser, close() only disconnects.
    await browser.close();
    assert.equal(browser.isConnected(), false);
    const afterDisconnect = await gw.getSession(session.id);
    assert.equal(afterDisconnect.status, 'live');
    assert.equal(afterDisconnect.releaseReason, null);

    browser = await connect(session.websocketUrl);
    const pages = browser.contexts().flatMap((c) => c.pages());
    const survivor = pages.find((p) => p.url() === target);
    assert.ok(survivor, `page ${target} not found after reconnect; pages: ${pages.map((p) => p.url())}`);
    assert.equal(await survivor.evaluate(() => window.__marker), 42);
    assert.equal(await survivor.evaluate(() => window.innerWidth === 1280 && window.innerHeight === 800), true);
    await browser.close();

    const rel = await gw.releaseSession(session.id);
    assert.equal(rel.status, 200, `release: ${rel.text}`);
    assert.equal(rel.body.success, true);

    const released = await gw.getSession(session.id);
    assert.equal(released.status, 'released');
    assert.equal(released.releaseReason, 'user_requested');

    const status = await wsUpgradeStatus(session.websocketUrl);
    assert.ok(status >= 400 && status < 500, `upgrade after release answered ${status}, want 4xx`);
    await assert.rejects(connect(session.websocketUrl), 'connectOverCDP to a released session must fail');
  } finally {
    await closeQuietly(browser);
    await gw.releaseQuietly(session.id);
  }
}));

test('connectOverCDP with the HTTP endpoint form uses /json/version', T, withGatewayLog(() => gw, async () => {
  const session = await gw.createSession();
  let browser;
  try {
    const expectedWs = `ws://127.0.0.1:${gw.port}/devtools/browser/${session.id}`;
    for (const p of ['/json/version', '/json/version/']) {
      const res = await gw.request('GET', `${p}?sessionId=${session.id}`);
      assert.equal(res.status, 200, `${p}: ${res.status} ${res.text}`);
      assert.equal(res.body.webSocketDebuggerUrl, expectedWs, `${p} webSocketDebuggerUrl`);
      assert.match(res.body.Browser, /Chrom/i, `${p} Browser = ${res.body.Browser}`);
    }
    const unknown = await gw.request('GET', '/json/version?sessionId=00000000-0000-4000-8000-000000000000');
    assert.ok(
      unknown.status >= 400 && unknown.status < 500,
      `/json/version for an unknown session: ${unknown.status} ${unknown.text}`,
    );

    browser = await connect(`http://127.0.0.1:${gw.port}/?sessionId=${session.id}`);
    const page = defaultPage(browser);
    await page.goto(`${site.url}/second`, { waitUntil: 'load' });
    assert.equal(await page.locator('#greeting').textContent(), 'second page');
    await page.evaluate(() => {
      window.__marker = 42;
    });
    const png = await page.screenshot();
    assertPng(png);
    await browser.close();

    // The /devtools/browser/<id> form reaches the same browser.
    browser = await connect(expectedWs);
    const survivor = browser
      .contexts()
      .flatMap((c) => c.pages())
      .find((p) => p.url() === `${site.url}/second`);
    assert.ok(survivor, 'page not found via /devtools/browser/<id>');
    assert.equal(await survivor.evaluate(() => window.__marker), 42);
    await browser.close();

    const rel = await gw.releaseSession(session.id);
    assert.equal(rel.status, 200, `release: ${rel.text}`);
    const after = await gw.getSession(session.id);
    assert.equal(after.status, 'released');
    assert.equal(after.releaseReason, 'user_requested');
    await assert.rejects(
      connect(`http://127.0.0.1:${gw.port}/?sessionId=${session.id}`),
      'HTTP-form connect to a released session must fail',
    );
  } finally {
    await closeQuietly(browser);
    await gw.releaseQuietly(session.id);
  }
}));

test('a new context and page can be opened and used', T, withGatewayLog(() => gw, async () => {
  const session = await gw.createSession();
  let browser;
  try {
    browser = await connect(session.websocketUrl);
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${site.url}/`, { waitUntil: 'load' });
    assert.equal(await page.title(), 'ingot e2e');
    await page.click('#next');
    await page.waitForURL(`${site.url}/second`);
    assert.equal(await page.locator('#greeting').textContent(), 'second page');
    await context.close();
  } finally {
    await closeQuietly(browser);
    await gw.releaseQuietly(session.id);
  }
}));
