// API keys as Steel's clients use them, unchanged: steel-sdk sends its key in the
// steel-api-key header, Puppeteer connects to websocketUrl with `&apiKey=` appended (as
// Steel's examples do), and Playwright's connectOverCDP follows the HTTP discovery form,
// whose advertised WebSocket URL carries the key. Another tenant sees none of it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Steel from 'steel-sdk';
import { chromium } from 'playwright-core';

import { startGateway, startPageServer, wsUpgradeStatus, withGatewayLog } from './harness.mjs';
import { connect, disconnectQuietly } from './puppeteer-client.mjs';

const T = { timeout: 120_000 };
const ALICE = 'alice-e2e-key-0123456789abcdef';
const BOB = 'bob-e2e-key-0123456789abcdef';

let gw;
let site;
let keysDir;

delete process.env.STEEL_API_KEY;
delete process.env.STEEL_BASE_URL;

before(async () => {
  keysDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ingot-e2e-keys-'));
  const keys = path.join(keysDir, 'keys');
  fs.writeFileSync(keys, `alice:${ALICE}\nbob:${BOB}\n`);
  site = await startPageServer();
  gw = await startGateway({ args: ['--api-keys-file', keys] });
});
after(async () => {
  try {
    await gw?.stop();
  } finally {
    await site?.close();
    fs.rmSync(keysDir, { recursive: true, force: true });
  }
});

const client = (key) => new Steel({ baseURL: gw.baseUrl, steelAPIKey: key, maxRetries: 0 });

test('steel-sdk with a key, puppeteer with &apiKey=, playwright through discovery', T, withGatewayLog(() => gw, async () => {
  const alice = client(ALICE);
  const bob = client(BOB);
  const session = await alice.sessions.create();
  let browser;
  let pw;
  try {
    // Without the key the WebSocket is refused; with Bob's it is as unknown as a random id.
    assert.equal(await wsUpgradeStatus(session.websocketUrl), 401);
    assert.equal(await wsUpgradeStatus(`${session.websocketUrl}&apiKey=${BOB}`), 404);

    browser = await connect(`${session.websocketUrl}&apiKey=${ALICE}`);
    const [page] = await browser.pages();
    await page.goto(`${site.url}/`);
    assert.equal(await page.evaluate(() => 6 * 7), 42);
    await disconnectQuietly(browser);

    // Playwright fetches <endpoint>/json/version/ with the same query, then follows the
    // webSocketDebuggerUrl it is given.
    const endpoint = `${gw.baseUrl}/?sessionId=${session.id}&apiKey=${ALICE}`;
    pw = await chromium.connectOverCDP(endpoint, { timeout: 60_000 });
    const pwPage = pw.contexts()[0].pages()[0];
    assert.equal(await pwPage.evaluate(() => 1 + 1), 2);
    await pw.close();

    // Bob: not found, not listed, cannot release it; a bad key is a 401 the SDK surfaces.
    await assert.rejects(bob.sessions.retrieve(session.id), (err) => err.status === 404);
    await assert.rejects(bob.sessions.release(session.id), (err) => err.status === 404);
    const bobs = [];
    for await (const s of bob.sessions.list()) bobs.push(s.id);
    assert.deepEqual(bobs, []);
    await assert.rejects(client('wrong-key-0123456789abcdef').sessions.list(), (err) => {
      assert.equal(err.status, 401);
      assert.equal(err.constructor.name, 'AuthenticationError');
      return true;
    });
    assert.equal((await alice.sessions.retrieve(session.id)).status, 'live');
  } finally {
    await disconnectQuietly(browser);
    await alice.sessions.release(session.id).catch(() => {});
  }
  assert.equal((await alice.sessions.retrieve(session.id)).status, 'released');
}));
