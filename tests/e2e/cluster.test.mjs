// Cluster mode (--database-url): Puppeteer, Playwright and steel-sdk drive sessions through
// a node that does not own them. Two nodes (a, b) of one slot each share a PostgreSQL
// server this file starts; a create on a full node is placed on the other, and requests and
// CDP WebSockets for another node's session are forwarded to its owner.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Steel from 'steel-sdk';
import { chromium } from 'playwright-core';

import {
  startGateway,
  startPostgres,
  metricValue,
  sleep,
  wsUpgradeStatus,
  assertPng,
  assertSessionShape,
  withGatewayLog,
} from './harness.mjs';
import { connect, disconnectQuietly } from './puppeteer-client.mjs';

const T = { timeout: 120_000 };
const CLUSTER_FORM_TIMEOUT_MS = 20_000;
const ROOM_TIMEOUT_MS = 15_000;
const MAX_LISTED = 500;

delete process.env.STEEL_API_KEY;
delete process.env.STEEL_BASE_URL;

let pg;
let a;
let b;

/** Both nodes' last log lines (and the database's), for withGatewayLog. */
const bothLogs = () => ({
  log: (n) =>
    `--- node a ---\n${a?.log(n) ?? '(not started)'}\n--- node b ---\n${b?.log(n) ?? '(not started)'}` +
    `\n--- postgres ---\n${pg?.log(20) ?? '(not started)'}`,
});

function startNode(id) {
  return startGateway({
    args: ['--database-url', pg.url, '--node-id', id, '--max-sessions', '1', '--pool-size', '0'],
  });
}

/** Polls `GET /metrics` until `name` equals `want`; throws after `timeoutMs`. */
async function waitMetric(gw, name, want, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let value = await metricValue(gw, name);
  while (value !== want) {
    if (Date.now() > deadline) throw new Error(`${name} on ${gw.baseUrl} is ${value}, want ${want} after ${timeoutMs} ms`);
    await sleep(200);
    value = await metricValue(gw, name);
  }
}

/** Waits until a node has a free slot (`/readyz` 200 without atCapacity). */
async function waitRoom(gw) {
  const deadline = Date.now() + ROOM_TIMEOUT_MS;
  let last;
  for (;;) {
    last = await gw.request('GET', '/readyz');
    if (last.status === 200 && !last.body?.atCapacity) return;
    if (Date.now() > deadline) throw new Error(`${gw.baseUrl} has no free slot after ${ROOM_TIMEOUT_MS} ms: ${last.text}`);
    await sleep(100);
  }
}

/** The node that runs (or ran) session `id`, from the shared database. */
function ownerInDb(id) {
  return pg.query(`SELECT node FROM ingot_sessions WHERE session_id = '${id}'`);
}

/** `url` (http or ws) with its port replaced by node b's. */
function viaB(url) {
  const u = new URL(url);
  u.port = String(b.port);
  return u.toString();
}

/** Creates a session directly on node a and checks that a owns it. */
async function createOnA(params = {}) {
  await waitRoom(a);
  const session = await a.createSession(params);
  assertSessionShape(session, a);
  assert.equal(await ownerInDb(session.id), 'a', 'a create sent to a with a free slot ran elsewhere');
  return session;
}

before(async () => {
  pg = await startPostgres({ database: 'ingot_cluster' });
  a = await startNode('a');
  b = await startNode('b');
  assert.equal((await a.request('GET', '/healthz')).body?.node, 'a');
  assert.equal((await b.request('GET', '/healthz')).body?.node, 'b');
  try {
    await waitMetric(a, 'ingot_cluster_nodes', 2, CLUSTER_FORM_TIMEOUT_MS);
    await waitMetric(b, 'ingot_cluster_nodes', 2, CLUSTER_FORM_TIMEOUT_MS);
  } catch (err) {
    err.message += `\n${bothLogs().log(60)}`;
    throw err;
  }
});

after(async () => {
  const errors = [];
  for (const gw of [b, a]) {
    try {
      await gw?.stop();
    } catch (err) {
      errors.push(err);
    }
  }
  try {
    await pg?.stop();
  } catch (err) {
    errors.push(err);
  }
  if (errors.length) throw errors[0];
});

test('steel-sdk via node b: a create on full b is placed on a; retrieve, list, release via b', T, withGatewayLog(bothLogs, async () => {
  const client = new Steel({ baseURL: b.baseUrl, steelAPIKey: 'unused', maxRetries: 0 });
  await waitRoom(a);
  await waitRoom(b);
  // Fill b's only slot with a raw create sent to b.
  const occupant = await b.createSession();
  let session;
  let browser;
  try {
    assert.equal(await ownerInDb(occupant.id), 'b');

    session = await client.sessions.create({ timeout: 60_000 });
    // The links point at b, which received the create; the browser runs on a.
    assertSessionShape(session, b);
    assert.equal(session.status, 'live');
    assert.equal(session.timeout, 60_000);
    assert.equal(await ownerInDb(session.id), 'a', 'the create was not placed on node a');
    assert.equal(await metricValue(a, 'ingot_sessions_live'), 1);

    const fetched = await client.sessions.retrieve(session.id);
    assert.equal(fetched.id, session.id);
    assert.equal(fetched.status, 'live');
    assert.equal(fetched.websocketUrl, session.websocketUrl, 'retrieve via b links elsewhere than the create did');

    const listed = [];
    for await (const s of client.sessions.list({ status: 'live' })) {
      listed.push(s);
      assert.ok(listed.length <= MAX_LISTED, 'list() does not terminate');
    }
    const ids = listed.map((s) => s.id);
    assert.ok(ids.includes(session.id), `list via b lacks the session on a: ${ids}`);
    assert.ok(ids.includes(occupant.id), `list via b lacks b's own session: ${ids}`);

    // The returned websocketUrl (node b) reaches the browser on node a.
    browser = await connect(session.websocketUrl);
    const [page] = await browser.pages();
    assert.ok(page, 'the session has no open page');
    assert.equal(await page.evaluate(() => 6 * 7), 42);
    await browser.disconnect();

    const rel = await client.sessions.release(session.id);
    assert.equal(rel.success, true);
    const released = await client.sessions.retrieve(session.id);
    assert.equal(released.status, 'released');
    assert.equal(released.releaseReason, 'user_requested');
    assert.equal((await a.getSession(session.id)).status, 'released');
    assert.equal(await pg.query(`SELECT status FROM ingot_sessions WHERE session_id = '${session.id}'`), 'released');
    const status = await wsUpgradeStatus(session.websocketUrl);
    assert.ok(status >= 400 && status < 500, `upgrade via b after release answered ${status}, want 4xx`);
  } finally {
    await disconnectQuietly(browser);
    if (session) await a.releaseQuietly(session.id);
    await b.releaseQuietly(occupant.id);
  }
}));

test('puppeteer via node b drives a session that node a runs', T, withGatewayLog(bothLogs, async (t) => {
  const session = await createOnA({ timeout: 60_000 });
  let browser;
  try {
    const wsUrl = viaB(session.websocketUrl);
    assert.equal(wsUrl, `ws://127.0.0.1:${b.port}/?sessionId=${session.id}`);

    browser = await connect(wsUrl);
    assert.match(await browser.version(), /Chrom/i);
    const [page] = await browser.pages();
    assert.ok(page, 'the session has no open page');
    await page.setContent('<title>cluster</title><h1>hi</h1>');
    assert.equal(await page.title(), 'cluster');
    assert.equal(await page.evaluate(() => document.querySelector('h1').textContent), 'hi');
    await page.evaluate(() => {
      window.__marker = 42;
    });
    const info = assertPng(await page.screenshot({ type: 'png' }));
    t.diagnostic(`screenshot ${info.width}x${info.height}, ${info.bytes} bytes`);
    await browser.disconnect();
    assert.equal((await b.getSession(session.id)).status, 'live');

    // The /devtools/browser/<id> form on b reaches the same browser.
    browser = await connect(`ws://127.0.0.1:${b.port}/devtools/browser/${session.id}`);
    const pages = await browser.pages();
    const survivor = pages.find((p) => p.url() === 'about:blank') ?? pages[0];
    assert.equal(await survivor.evaluate(() => window.__marker), 42);
    await browser.disconnect();

    const rel = await b.releaseSession(session.id);
    assert.equal(rel.status, 200, `release via b: ${rel.text}`);
    assert.equal(rel.body.success, true);
    const released = await a.getSession(session.id);
    assert.equal(released.status, 'released');
    assert.equal(released.releaseReason, 'user_requested');
    const status = await wsUpgradeStatus(wsUrl);
    assert.ok(status >= 400 && status < 500, `upgrade via b after release answered ${status}, want 4xx`);
  } finally {
    await disconnectQuietly(browser);
    await a.releaseQuietly(session.id);
  }
}));

test('playwright connectOverCDP via node b drives a session that node a runs', T, withGatewayLog(bothLogs, async () => {
  const session = await createOnA();
  let browser;
  try {
    // /json/version on b answers for a's browser, with a WebSocket URL on b.
    const version = await b.request('GET', `/json/version?sessionId=${session.id}`);
    assert.equal(version.status, 200, `/json/version via b: ${version.status} ${version.text}`);
    assert.equal(version.body.webSocketDebuggerUrl, `ws://127.0.0.1:${b.port}/devtools/browser/${session.id}`);
    assert.match(version.body.Browser, /Chrom/i);

    // The HTTP endpoint form, as playwright.test.mjs uses it, but on node b.
    browser = await chromium.connectOverCDP(`http://127.0.0.1:${b.port}/?sessionId=${session.id}`, { timeout: 60_000 });
    const page = browser.contexts()[0]?.pages()[0];
    assert.ok(page, 'connectOverCDP via b found no page');
    await page.setContent('<title>cluster</title><h1 id="h">hi</h1>');
    assert.equal(await page.title(), 'cluster');
    assert.equal(await page.locator('#h').textContent(), 'hi');
    assert.equal(await page.evaluate(() => navigator.userAgent.length > 0), true);
    await browser.close(); // only disconnects
    assert.equal((await b.getSession(session.id)).status, 'live');

    // The websocketUrl form, on b.
    browser = await chromium.connectOverCDP(viaB(session.websocketUrl), { timeout: 60_000 });
    const again = browser.contexts().flatMap((c) => c.pages());
    assert.ok(again.length >= 1, 'no page after reconnecting via b');
    assert.equal(await again[0].evaluate(() => document.title), 'cluster');
    await browser.close();

    const rel = await b.releaseSession(session.id);
    assert.equal(rel.status, 200, `release via b: ${rel.text}`);
    assert.equal((await b.getSession(session.id)).status, 'released');
    await assert.rejects(
      chromium.connectOverCDP(`http://127.0.0.1:${b.port}/?sessionId=${session.id}`, { timeout: 10_000 }),
      'connectOverCDP via b to a released session must fail',
    );
  } finally {
    if (browser?.isConnected()) await browser.close().catch(() => {});
    await a.releaseQuietly(session.id);
  }
}));
