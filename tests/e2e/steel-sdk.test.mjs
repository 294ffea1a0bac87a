// Steel's official Node SDK (steel-sdk) against ingot's sessions API, with puppeteer-core
// driving the browser through the returned websocketUrl.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import Steel from 'steel-sdk';

import {
  useGatewayAndSite,
  wsUpgradeStatus,
  assertPng,
  assertSessionShape,
  withGatewayLog,
} from './harness.mjs';
import { connect, disconnectQuietly } from './puppeteer-client.mjs';

const T = { timeout: 120_000 };
const MAX_LISTED = 500; // a list() that yields more than this is not terminating

let gw;
let site;

// The SDK reads these when options are left out; keep the tests independent of the caller.
delete process.env.STEEL_API_KEY;
delete process.env.STEEL_BASE_URL;
useGatewayAndSite((g, s) => {
  gw = g;
  site = s;
});

/** A client whose HTTP requests are recorded in `client.requests` as {method, url, headers}. */
function makeClient(opts = {}) {
  const requests = [];
  const client = new Steel({
    baseURL: `http://127.0.0.1:${gw.port}`,
    maxRetries: 0,
    fetch: (url, init = {}) => {
      requests.push({ method: init.method, url: String(url), headers: { ...(init.headers || {}) } });
      return globalThis.fetch(url, init);
    },
    ...opts,
  });
  client.requests = requests;
  return client;
}

async function releaseQuietly(client, id) {
  try {
    await client.sessions.release(id);
  } catch {
    // cleanup only
  }
}

test('create, retrieve, drive with puppeteer, disconnect, reconnect, release', T, withGatewayLog(() => gw, async (t) => {
  const client = makeClient({ steelAPIKey: 'unused' });
  const session = await client.sessions.create({ timeout: 60000 });
  let browser;
  try {
    assertSessionShape(session, gw);
    assert.equal(session.status, 'live');
    assert.equal(session.timeout, 60000);
    assert.equal(session.releaseReason, null);
    // The SDK sent the key it was given.
    assert.equal(client.requests.at(-1).headers['steel-api-key'], 'unused');

    const fetched = await client.sessions.retrieve(session.id);
    assert.equal(fetched.id, session.id);
    assert.equal(fetched.status, 'live');
    assert.equal(fetched.websocketUrl, session.websocketUrl);
    assert.equal(fetched.createdAt, session.createdAt);

    // Steel's documented connect URL: websocketUrl plus the API key as a query parameter.
    const wsUrl = `${session.websocketUrl}&apiKey=unused`;
    browser = await connect(wsUrl);
    const [page] = await browser.pages();
    assert.ok(page, 'the session has no open page');
    const target = `${site.url}/`;
    await page.goto(target, { waitUntil: 'load' });
    assert.equal(await page.$eval('#greeting', (el) => el.textContent), 'hello from 127.0.0.1');
    await page.evaluate(() => {
      window.__marker = 42;
    });
    const info = assertPng(await page.screenshot({ type: 'png' }));
    t.diagnostic(`screenshot ${info.width}x${info.height}, ${info.bytes} bytes`);
    await browser.disconnect();

    const stillLive = await client.sessions.retrieve(session.id);
    assert.equal(stillLive.status, 'live');
    assert.equal(stillLive.releaseReason, null);

    browser = await connect(wsUrl);
    const survivor = (await browser.pages()).find((p) => p.url() === target);
    assert.ok(survivor, 'page not found after reconnect');
    assert.equal(await survivor.evaluate(() => window.__marker), 42);
    await browser.disconnect();

    const rel = await client.sessions.release(session.id);
    assert.equal(rel.success, true);
    assert.equal(typeof rel.message, 'string');

    const released = await client.sessions.retrieve(session.id);
    assert.equal(released.status, 'released');
    assert.equal(released.releaseReason, 'user_requested');

    const status = await wsUpgradeStatus(wsUrl);
    assert.ok(status >= 400 && status < 500, `upgrade after release answered ${status}, want 4xx`);
    await assert.rejects(connect(wsUrl), 'connecting to a released session must fail');
  } finally {
    await disconnectQuietly(browser);
    await releaseQuietly(client, session.id);
  }
}));

test('the SDK works without an API key', T, withGatewayLog(() => gw, async () => {
  const client = makeClient(); // no steelAPIKey and no STEEL_API_KEY in the environment
  assert.equal(client.steelAPIKey, null);
  const session = await client.sessions.create();
  try {
    assert.equal(session.status, 'live');
    for (const r of client.requests) {
      assert.equal(r.headers['steel-api-key'], undefined, `${r.method} ${r.url} sent a steel-api-key header`);
    }
    const fetched = await client.sessions.retrieve(session.id);
    assert.equal(fetched.id, session.id);

    // And the WebSocket accepts the documented URL with no apiKey at all.
    const browser = await connect(session.websocketUrl);
    try {
      const [page] = await browser.pages();
      await page.goto(`${site.url}/second`, { waitUntil: 'load' });
      assert.equal(await page.title(), 'ingot e2e second');
    } finally {
      await disconnectQuietly(browser);
    }

    const rel = await client.sessions.release(session.id);
    assert.equal(rel.success, true);
    assert.equal((await client.sessions.retrieve(session.id)).status, 'released');
  } finally {
    await releaseQuietly(client, session.id);
  }
}));

test('list() pages with cursorId, terminates, and is newest first', T, withGatewayLog(() => gw, async () => {
  const client = makeClient({ steelAPIKey: 'unused' });
  const created = [];
  try {
    for (let i = 0; i < 3; i++) {
      created.push(await client.sessions.create({ timeout: 60000 }));
    }
    const createdIds = created.map((s) => s.id);

    client.requests.length = 0;
    const listed = [];
    for await (const s of client.sessions.list({ limit: 2 })) {
      listed.push(s);
      assert.ok(listed.length <= MAX_LISTED, `list() yielded more than ${MAX_LISTED} sessions; cursor not honoured?`);
    }
    const listCalls = client.requests.filter((r) => new URL(r.url).pathname === '/v1/sessions');
    assert.ok(listCalls.length >= 2, `expected several pages, got ${listCalls.length} request(s)`);
    for (const r of listCalls) {
      assert.equal(new URL(r.url).searchParams.get('limit'), '2');
    }

    const ids = listed.map((s) => s.id);
    assert.equal(new Set(ids).size, ids.length, `list() yielded duplicates: ${ids}`);
    for (const id of createdIds) {
      assert.equal(ids.filter((x) => x === id).length, 1, `${id} listed ${ids.filter((x) => x === id).length} times`);
    }
    // Newest first: the three appear in reverse creation order, and createdAt never increases.
    const positions = createdIds.map((id) => ids.indexOf(id));
    assert.ok(positions[2] < positions[1] && positions[1] < positions[0], `positions of created sessions: ${positions}`);
    for (let i = 1; i < listed.length; i++) {
      assert.ok(
        Date.parse(listed[i - 1].createdAt) >= Date.parse(listed[i].createdAt),
        `list not newest first at ${i}: ${listed[i - 1].createdAt} then ${listed[i].createdAt}`,
      );
    }

    // The raw API: a full page has a nextCursor, and following it reaches the same ids.
    const first = await gw.request('GET', '/v1/sessions?limit=2');
    assert.equal(first.status, 200, first.text);
    assert.equal(first.body.sessions.length, 2);
    assert.ok('nextCursor' in first.body, 'nextCursor missing from list response');
    assert.equal(typeof first.body.nextCursor, 'string', `nextCursor = ${first.body.nextCursor}`);
    const raw = first.body.sessions.map((s) => s.id);
    let cursor = first.body.nextCursor;
    for (let guard = 0; cursor && guard < MAX_LISTED; guard++) {
      const page = await gw.request('GET', `/v1/sessions?limit=2&cursorId=${encodeURIComponent(cursor)}`);
      assert.equal(page.status, 200, page.text);
      raw.push(...page.body.sessions.map((s) => s.id));
      cursor = page.body.nextCursor;
    }
    assert.equal(cursor ?? null, null, 'nextCursor never became null');
    assert.deepEqual(raw, ids, 'following nextCursor gives a different listing from the SDK');

    // status filter
    const live = [];
    for await (const s of client.sessions.list({ status: 'live', limit: 2 })) {
      live.push(s);
      assert.ok(live.length <= MAX_LISTED);
    }
    assert.ok(live.every((s) => s.status === 'live'), `status=live listed ${live.map((s) => s.status)}`);
    for (const id of createdIds) assert.ok(live.some((s) => s.id === id), `${id} missing from status=live`);

    await client.sessions.release(createdIds[0]);
    const liveAfter = [];
    for await (const s of client.sessions.list({ status: 'live' })) {
      liveAfter.push(s.id);
      assert.ok(liveAfter.length <= MAX_LISTED);
    }
    assert.ok(!liveAfter.includes(createdIds[0]), 'released session still listed with status=live');
    assert.ok(liveAfter.includes(createdIds[1]));

    const releasedList = [];
    for await (const s of client.sessions.list({ status: 'released' })) {
      releasedList.push(s);
      assert.ok(releasedList.length <= MAX_LISTED);
    }
    assert.ok(releasedList.every((s) => s.status === 'released'));
    assert.ok(releasedList.some((s) => s.id === createdIds[0]), 'released session missing from status=released');
  } finally {
    for (const s of created) await releaseQuietly(client, s.id);
  }
}));

test('releaseAll() releases every live session', T, withGatewayLog(() => gw, async () => {
  const client = makeClient({ steelAPIKey: 'unused' });
  const created = [];
  try {
    created.push(await client.sessions.create());
    created.push(await client.sessions.create());
    const res = await client.sessions.releaseAll();
    assert.deepEqual({ ...res }, { success: true, message: 'All sessions released successfully' });
    for (const s of created) {
      const after = await client.sessions.retrieve(s.id);
      assert.equal(after.status, 'released', `${s.id} after releaseAll: ${after.status}`);
      assert.equal(typeof after.releaseReason, 'string');
      const status = await wsUpgradeStatus(s.websocketUrl);
      assert.ok(status >= 400 && status < 500, `upgrade after releaseAll answered ${status}`);
    }
    const live = [];
    for await (const s of client.sessions.list({ status: 'live' })) {
      live.push(s.id);
      assert.ok(live.length <= MAX_LISTED);
    }
    assert.deepEqual(live, [], 'live sessions remain after releaseAll');
  } finally {
    for (const s of created) await releaseQuietly(client, s.id);
  }
}));

test('errors map to the SDK error classes', T, withGatewayLog(() => gw, async () => {
  const client = makeClient({ steelAPIKey: 'unused' });

  const missing = '00000000-0000-4000-8000-000000000000';
  const notFound = await client.sessions.retrieve(missing).then(
    () => null,
    (err) => err,
  );
  assert.ok(notFound instanceof Steel.NotFoundError, `retrieve(unknown) threw ${notFound}`);
  assert.equal(notFound.status, 404);

  const releaseMissing = await client.sessions.release(missing).then(
    () => null,
    (err) => err,
  );
  assert.ok(releaseMissing instanceof Steel.NotFoundError, `release(unknown) threw ${releaseMissing}`);

  for (const timeout of [10, 86_400_001]) {
    const bad = await client.sessions.create({ timeout }).then(
      (s) => s,
      (err) => err,
    );
    if (!(bad instanceof Error)) await releaseQuietly(client, bad.id);
    assert.ok(bad instanceof Steel.BadRequestError, `create({timeout: ${timeout}}) gave ${JSON.stringify(bad)}`);
    assert.equal(bad.status, 400);
    assert.match(bad.message, /timeout/, `message: ${bad.message}`);
    assert.equal(typeof bad.error?.error?.code, 'string', `error body: ${JSON.stringify(bad.error)}`);
  }

  // A failed create leaves nothing behind.
  const live = [];
  for await (const s of client.sessions.list({ status: 'live' })) {
    live.push(s.id);
    assert.ok(live.length <= MAX_LISTED);
  }
  assert.deepEqual(live, []);
}));

test('session files: upload, list, download, archive, delete; a URL is refused', T, withGatewayLog(() => gw, async () => {
  // The SDK's own fetch: multipart bodies are built for it.
  const client = new Steel({ baseURL: `http://127.0.0.1:${gw.port}`, maxRetries: 0 });
  const session = await client.sessions.create({ timeout: 60000 });
  const files = client.sessions.files;
  try {
    const file = await files.upload(session.id, {
      file: new File(['hello from node'], 'hello.txt', { type: 'text/plain' }),
      path: 'dir/hello.txt',
    });
    assert.ok(file.path.startsWith('/') && file.path.endsWith(`/${session.id}/dir/hello.txt`), file.path);
    assert.equal(file.size, 15);
    assert.ok(!Number.isNaN(Date.parse(file.lastModified)), file.lastModified);
    assert.deepEqual((await files.list(session.id)).data.map((f) => f.path), [file.path]);
    // By the name relative to the session's files, and by the path as the SDK returned it.
    for (const name of ['dir/hello.txt', file.path]) {
      const response = await files.download(session.id, name);
      assert.equal(await response.text(), 'hello from node', name);
    }
    const archive = Buffer.from(await (await files.downloadArchive(session.id)).arrayBuffer());
    assert.equal(archive.subarray(0, 2).toString(), 'PK', 'a zip archive');
    assert.ok(archive.includes(Buffer.from('dir/hello.txt')), 'named inside the archive');

    await assert.rejects(
      files.upload(session.id, { file: 'http://127.0.0.1:9/secret', path: 'x.txt' }),
      (e) => e instanceof Steel.BadRequestError && /URL/.test(e.message),
    );
    await assert.rejects(
      files.download(session.id, 'missing.txt'),
      (e) => e instanceof Steel.NotFoundError,
    );
    await files.delete(session.id, 'dir/hello.txt');
    assert.deepEqual((await files.list(session.id)).data, []);
    await files.upload(session.id, { file: new File(['a'], 'a.txt') });
    await files.upload(session.id, { file: new File(['b'], 'b.txt') });
    assert.equal((await files.list(session.id)).data.length, 2);
    await files.deleteAll(session.id);
    assert.deepEqual((await files.list(session.id)).data, []);
  } finally {
    await releaseQuietly(client, session.id);
  }
}));
