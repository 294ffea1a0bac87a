// Admission control as the official Node SDK meets it: at the session limit a create gets
// 429 with Retry-After, and steel-sdk's own retry turns that into a session once a slot frees.

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import Steel from 'steel-sdk';

import { startGateway, sleep, withGatewayLog } from './harness.mjs';

const T = { timeout: 60_000 };
let gw;

delete process.env.STEEL_API_KEY;
delete process.env.STEEL_BASE_URL;

before(async () => {
  gw = await startGateway({ args: ['--max-sessions', '1', '--pool-size', '0', '--queue-timeout-ms', '0'] });
});
after(async () => {
  await gw?.stop();
});

test('steel-sdk retries a 429 after Retry-After and gets the freed slot', T, withGatewayLog(() => gw, async () => {
  const statuses = [];
  const client = new Steel({
    baseURL: gw.baseUrl,
    steelAPIKey: 'unused',
    fetch: async (url, init) => {
      const response = await globalThis.fetch(url, init);
      statuses.push([init?.method, String(url), response.status, response.headers.get('retry-after')]);
      return response;
    },
  });
  const first = await client.sessions.create();
  // The slot frees while the SDK waits out Retry-After.
  const second = client.sessions.create();
  await sleep(300);
  await client.sessions.release(first.id);
  const session = await second;
  assert.equal(session.status, 'live');
  const creates = statuses.filter(([method, url]) => method === 'POST' && url.endsWith('/v1/sessions'));
  assert.deepEqual(creates.map(([, , status]) => status), [200, 429, 200], JSON.stringify(statuses));
  assert.equal(creates[1][3], '1', 'the 429 carries Retry-After: 1');
  await client.sessions.release(session.id);
}));

test('steel-sdk without retries surfaces the 429 as RateLimitError', T, withGatewayLog(() => gw, async () => {
  const client = new Steel({ baseURL: gw.baseUrl, steelAPIKey: 'unused', maxRetries: 0 });
  const first = await client.sessions.create();
  try {
    await assert.rejects(client.sessions.create(), (err) => {
      assert.equal(err.status, 429);
      assert.equal(err.constructor.name, 'RateLimitError');
      assert.match(err.message, /slots/);
      return true;
    });
  } finally {
    await client.sessions.release(first.id);
  }
}));
