// Shared helpers for ingot's end-to-end tests.
//
// startGateway() runs the real `ingot` binary on a free loopback port with a fresh data
// dir; startPageServer() serves a couple of static pages on loopback so that tests never
// navigate off the machine. Everything here only uses Node's standard library.
//
// The gateway inherits this process's environment, so `INGOT_ENGINE=chromium node --test …`
// runs every file on full Chromium (tests/run.sh does, for the engine-relevant files); the
// engine a gateway reports in /healthz is then checked against it, so such a run cannot pass
// on the default engine by mistake.

import { before, after } from 'node:test';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
export const ingotBin = process.env.INGOT_BIN || path.join(repoRoot, 'target', 'debug', 'ingot');

/** Bytes every PNG file starts with. */
export const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const LOG_LINES_KEPT = 200;
const HEALTH_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Asks the kernel for a free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}

/**
 * Starts the gateway and waits until `GET /healthz` answers 200.
 *
 * @param {object} [opts]
 * @param {string[]} [opts.args] extra command-line arguments (e.g. ['--max-sessions', '4'])
 * @returns {Promise<Gateway>}
 */
export async function startGateway({ args = [] } = {}) {
  if (!fs.existsSync(ingotBin)) {
    throw new Error(`ingot binary not found at ${ingotBin}; run \`cargo build\` or set INGOT_BIN`);
  }
  const port = await freePort();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ingot-e2e-'));
  const gw = new Gateway(port, dataDir, args);
  try {
    await gw.waitHealthy();
  } catch (err) {
    await gw.kill();
    throw err;
  }
  return gw;
}

/** The gateway runs another engine than the one asked for (not retried). */
class EngineMismatch extends Error {}

export class Gateway {
  constructor(port, dataDir, args) {
    this.port = port;
    this.dataDir = dataDir;
    this.baseUrl = `http://127.0.0.1:${port}`;
    this.lines = [];
    this.exited = null; // {code, signal} once the process has exited
    this.args = args;
    this.health = null; // the first 200 answer of /healthz
    const argv = ['--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, ...args];
    this.child = spawn(ingotBin, argv, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { RUST_LOG: 'info', ...process.env, NO_COLOR: '1' },
    });
    this.exitPromise = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exited = { code, signal };
        resolve(this.exited);
      });
      this.child.on('error', (err) => {
        this.#push(`[harness] spawn error: ${err.message}`);
        this.exited = { code: null, signal: null, error: err };
        resolve(this.exited);
      });
    });
    this.#capture(this.child.stdout, 'out');
    this.#capture(this.child.stderr, 'err');
  }

  #push(line) {
    this.lines.push(line);
    if (this.lines.length > LOG_LINES_KEPT) this.lines.splice(0, this.lines.length - LOG_LINES_KEPT);
  }

  #capture(stream, tag) {
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop();
      // eslint-disable-next-line no-control-regex
      for (const line of parts) this.#push(`[${tag}] ${line.replace(/\x1b\[[0-9;]*m/g, '')}`);
      if (process.env.INGOT_E2E_VERBOSE) process.stderr.write(chunk);
    });
    stream.on('end', () => {
      if (partial) this.#push(`[${tag}] ${partial}`);
      partial = '';
    });
  }

  /** The last `n` lines the gateway printed, for failure messages. */
  log(n = LOG_LINES_KEPT) {
    return this.lines.slice(-n).join('\n');
  }

  async waitHealthy() {
    const deadline = Date.now() + HEALTH_TIMEOUT_MS;
    let last = 'no attempt';
    while (Date.now() < deadline) {
      if (this.exited) {
        throw new Error(
          `ingot exited before becoming healthy (code ${this.exited.code}, signal ${this.exited.signal})\n${this.log()}`,
        );
      }
      try {
        const res = await fetch(`${this.baseUrl}/healthz`, { signal: AbortSignal.timeout(2_000) });
        const text = await res.text();
        if (res.status === 200) {
          this.health = JSON.parse(text);
          this.#checkEngine();
          return;
        }
        last = `status ${res.status}`;
      } catch (err) {
        if (err instanceof EngineMismatch) throw err;
        last = err.cause?.code || err.message;
      }
      await sleep(100);
    }
    throw new Error(`ingot not healthy after ${HEALTH_TIMEOUT_MS} ms (last: ${last})\n${this.log()}`);
  }

  /** The engine this gateway was asked for: its `--engine` argument, else INGOT_ENGINE. */
  requestedEngine() {
    const i = this.args.indexOf('--engine');
    if (i >= 0) return this.args[i + 1];
    const eq = this.args.find((a) => a.startsWith('--engine='));
    if (eq) return eq.slice('--engine='.length);
    return process.env.INGOT_ENGINE || null;
  }

  /** The engine of headless sessions, as /healthz reports it (null before the engines). */
  get engine() {
    return this.health?.engines?.default ?? null;
  }

  #checkEngine() {
    const want = this.requestedEngine();
    if (want && this.engine !== want) {
      throw new EngineMismatch(
        `asked for engine ${want}, /healthz reports engines ${JSON.stringify(this.health?.engines)}\n${this.log()}`,
      );
    }
  }

  /**
   * Sends a JSON request to the gateway. Returns {status, headers, body, text};
   * body is the parsed JSON or null.
   */
  async request(method, urlPath, body) {
    const init = { method, headers: {}, signal: AbortSignal.timeout(60_000) };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
    }
    const res = await fetch(`${this.baseUrl}${urlPath}`, init);
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    return { status: res.status, headers: res.headers, body: json, text };
  }

  /** POST /v1/sessions, asserting 200; returns the Session. */
  async createSession(params = {}) {
    const res = await this.request('POST', '/v1/sessions', params);
    assert.equal(res.status, 200, `create session: ${res.status} ${res.text}\n${this.log()}`);
    return res.body;
  }

  /** GET /v1/sessions/{id}, asserting 200; returns the Session. */
  async getSession(id) {
    const res = await this.request('GET', `/v1/sessions/${id}`);
    assert.equal(res.status, 200, `get session ${id}: ${res.status} ${res.text}`);
    return res.body;
  }

  /** POST /v1/sessions/{id}/release; returns the raw response. */
  async releaseSession(id) {
    return this.request('POST', `/v1/sessions/${id}/release`, {});
  }

  /** Releases a session and ignores any error (for cleanup paths). */
  async releaseQuietly(id) {
    if (!id || this.exited) return;
    try {
      await this.releaseSession(id);
    } catch {
      // cleanup only
    }
  }

  /** Polls GET /v1/sessions/{id} until predicate(session) holds; returns the last session. */
  async waitForSession(id, predicate, timeoutMs = 3_000) {
    const deadline = Date.now() + timeoutMs;
    let session = await this.getSession(id);
    while (!predicate(session) && Date.now() < deadline) {
      await sleep(100);
      session = await this.getSession(id);
    }
    return session;
  }

  /**
   * Sends SIGTERM, waits for exit (SIGKILL after 15 s), asserts exit code 0 and removes
   * the data dir.
   */
  async stop() {
    if (!this.exited) {
      this.child.kill('SIGTERM');
      let timer;
      const timeout = new Promise((resolve) => {
        timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS);
      });
      const result = await Promise.race([this.exitPromise, timeout]);
      clearTimeout(timer);
      if (result === 'timeout') {
        this.child.kill('SIGKILL');
        await this.exitPromise;
        this.#removeDataDir();
        throw new Error(`ingot did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM; killed\n${this.log()}`);
      }
    }
    const leftovers = processesMentioning(this.dataDir);
    this.#removeDataDir();
    const { code, signal } = this.exited;
    assert.equal(code, 0, `ingot exit: code ${code}, signal ${signal}\n${this.log()}`);
    assert.deepEqual(leftovers, [], `processes still running after ingot exited:\n${leftovers.join('\n')}`);
  }

  /** Immediate SIGKILL without assertions, for failed start-ups. */
  async kill() {
    if (!this.exited) {
      this.child.kill('SIGKILL');
      await this.exitPromise;
    }
    this.#removeDataDir();
  }

  #removeDataDir() {
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/**
 * Processes (other than this one) whose command line contains `needle`, as "pid: cmdline"
 * strings. Used to check that no browser outlives the gateway. Linux only; [] elsewhere.
 */
export function processesMentioning(needle) {
  if (!fs.existsSync('/proc')) return [];
  const found = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let cmdline;
    try {
      cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
    } catch {
      continue; // exited meanwhile
    }
    if (cmdline.includes(needle)) found.push(`${entry}: ${cmdline.slice(0, 200)}`);
  }
  return found;
}

/**
 * Every running (non-zombie) process: {pid, ppid, pgid, uid, argv0, cmdline}. Linux only;
 * [] elsewhere.
 */
export function processTable() {
  if (!fs.existsSync('/proc')) return [];
  const table = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The command name may hold spaces and parentheses: fields resume after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] === 'Z') continue;
      const argv = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      const uidLine = fs.readFileSync(`/proc/${entry}/status`, 'utf8').match(/^Uid:\s+(\d+)/m);
      table.push({
        pid: Number(entry),
        ppid: Number(fields[1]),
        pgid: Number(fields[2]),
        uid: uidLine ? Number(uidLine[1]) : -1,
        argv0: argv[0],
        cmdline: argv.join(' ').trim(),
      });
    } catch {
      // exited meanwhile
    }
  }
  return table;
}

/** The pids of `root`'s descendants (children, their children, …) in a process table. */
export function descendantsOf(root, table = processTable()) {
  const found = new Set();
  let frontier = [root];
  while (frontier.length) {
    const next = table.filter((p) => frontier.includes(p.ppid) && !found.has(p.pid)).map((p) => p.pid);
    next.forEach((pid) => found.add(pid));
    frontier = next;
  }
  return found;
}

/**
 * Wraps a test function so that a failure carries the gateway's last log lines.
 * `getGateway` is called at failure time (the gateway is usually started in `before`).
 */
export function withGatewayLog(getGateway, fn) {
  return async (t) => {
    try {
      return await fn(t);
    } catch (err) {
      const gw = getGateway();
      if (gw && err && typeof err === 'object') {
        try {
          err.message = `${err.message}\n--- last ingot log lines ---\n${gw.log(80)}`;
        } catch {
          // a frozen error keeps its message
        }
      }
      throw err;
    }
  };
}

/**
 * Attempts a WebSocket upgrade on `wsUrl` with a plain HTTP request and resolves with the
 * HTTP status the server answered (101 when the upgrade was accepted).
 */
export function wsUpgradeStatus(wsUrl, timeoutMs = 10_000) {
  const url = new URL(wsUrl);
  assert.equal(url.protocol, 'ws:', `expected a ws: URL, got ${wsUrl}`);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: url.hostname,
      port: url.port,
      path: url.pathname + url.search,
      method: 'GET',
      agent: false,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Key': crypto.randomBytes(16).toString('base64'),
        'Sec-WebSocket-Version': '13',
      },
      timeout: timeoutMs,
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer to upgrade on ${wsUrl} within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** Asserts that `buf` is a PNG of a plausible size for a rendered page. */
export function assertPng(buf, label = 'screenshot') {
  assert.ok(Buffer.isBuffer(buf) || buf instanceof Uint8Array, `${label} is not a buffer`);
  const b = Buffer.from(buf);
  assert.ok(b.subarray(0, 8).equals(PNG_SIGNATURE), `${label} does not start with the PNG signature`);
  assert.ok(b.length > 1_000, `${label} is only ${b.length} bytes`);
  // IHDR: width and height are big-endian u32 at bytes 16..24.
  const width = b.readUInt32BE(16);
  const height = b.readUInt32BE(20);
  assert.ok(width > 100 && height > 100, `${label} is ${width}x${height}`);
  return { width, height, bytes: b.length };
}

/** Asserts the shape of a Session object from the REST API. */
export function assertSessionShape(session, gw) {
  assert.equal(typeof session.id, 'string');
  assert.match(session.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.ok(['live', 'released', 'failed'].includes(session.status), `status ${session.status}`);
  assert.ok(!Number.isNaN(Date.parse(session.createdAt)), `createdAt ${session.createdAt}`);
  assert.equal(typeof session.timeout, 'number');
  assert.equal(typeof session.duration, 'number');
  assert.equal(typeof session.eventCount, 'number');
  assert.equal(typeof session.creditsUsed, 'number');
  assert.equal(typeof session.proxyBytesUsed, 'number');
  assert.equal(typeof session.optimizeBandwidth, 'object', 'optimizeBandwidth is an object in Steel\'s API');
  assert.notEqual(session.optimizeBandwidth, null, 'optimizeBandwidth is null');
  assert.ok('proxySource' in session, 'proxySource missing');
  assert.ok('releaseReason' in session, 'releaseReason missing');
  assert.equal(typeof session.debugUrl, 'string');
  assert.equal(typeof session.sessionViewerUrl, 'string');
  assert.equal(typeof session.dimensions?.width, 'number');
  assert.equal(typeof session.dimensions?.height, 'number');
  if (gw) {
    assert.equal(session.websocketUrl, `ws://127.0.0.1:${gw.port}/?sessionId=${session.id}`);
  }
}

const PAGES = {
  '/': `<!doctype html>
<html>
<head><meta charset="utf-8"><title>ingot e2e</title>
<style>body{font-family:sans-serif;background:#f4efe6;margin:40px}h1{color:#7a3e12}</style></head>
<body>
<h1 id="greeting">hello from 127.0.0.1</h1>
<p>Static page served by the ingot end-to-end tests.</p>
<a id="next" href="/second">second page</a>
</body>
</html>
`,
  '/second': `<!doctype html>
<html>
<head><meta charset="utf-8"><title>ingot e2e second</title></head>
<body>
<h1 id="greeting">second page</h1>
</body>
</html>
`,
};

/**
 * Serves the static test pages on 127.0.0.1 (a free port).
 * Returns {port, url, close()} where url is the base `http://127.0.0.1:PORT`.
 */
export async function startPageServer() {
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, 'http://127.0.0.1').pathname;
    const body = PAGES[pathname];
    if (body === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(body);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/**
 * Starts one loopback page server and one gateway before a test file's tests and stops
 * both after them. `onStarted(gw, site)` hands them to the file.
 */
export function useGatewayAndSite(onStarted) {
  let gw;
  let site;
  before(async () => {
    site = await startPageServer();
    gw = await startGateway();
    onStarted(gw, site);
  });
  after(async () => {
    try {
      if (gw) await gw.stop();
    } finally {
      if (site) await site.close();
    }
  });
}

/**
 * The newest PostgreSQL server installed under /usr/lib/postgresql (Debian's layout), as
 * the directory holding initdb, pg_ctl, createdb and psql; null when none is installed.
 */
export function postgresBinDir() {
  const root = '/usr/lib/postgresql';
  if (!fs.existsSync(root)) return null;
  const versions = fs
    .readdirSync(root)
    .filter((v) => /^\d+(\.\d+)?$/.test(v) && fs.existsSync(path.join(root, v, 'bin', 'pg_ctl')))
    .sort((x, y) => Number(y) - Number(x));
  return versions.length ? path.join(root, versions[0], 'bin') : null;
}

/**
 * Starts a throwaway PostgreSQL server on a free loopback port (trust auth, user `ingot`,
 * no fsync) with one database, and resolves with a Postgres handle. PostgreSQL refuses to
 * run as root, so under root the server runs as the `postgres` user (via runuser).
 *
 * @param {object} [opts]
 * @param {string} [opts.database] name of the database to create
 * @returns {Promise<Postgres>}
 */
export async function startPostgres({ database = 'ingot' } = {}) {
  const bin = postgresBinDir();
  if (!bin) {
    throw new Error(
      'PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/pg_ctl); ' +
        'run `apt-get install postgresql` (tests/run.sh installs it)',
    );
  }
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ingot-e2e-pg-'));
  const pg = new Postgres(bin, dir, port, database);
  try {
    if (process.getuid?.() === 0) {
      const { uid, gid } = userIds('postgres');
      fs.chownSync(dir, uid, gid);
      pg.asUser = 'postgres';
    }
    await pg.run('initdb', ['-D', pg.dataDir, '-A', 'trust', '-U', 'ingot', '--no-sync', '-E', 'UTF8', '--locale=C']);
    pg.started = true; // from here on, stop() tries pg_ctl stop
    await pg.run('pg_ctl', [
      '-D', pg.dataDir, '-l', pg.logFile, '-w', '-t', '30',
      '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
      'start',
    ]);
    await pg.run('createdb', ['-h', '127.0.0.1', '-p', String(port), '-U', 'ingot', database]);
  } catch (err) {
    await pg.stop().catch(() => {});
    throw err;
  }
  return pg;
}

/** uid and gid of a local user, from /etc/passwd. */
function userIds(name) {
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`no user ${name} in /etc/passwd; PostgreSQL cannot run as root`);
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

const PG_COMMAND_TIMEOUT_MS = 60_000;

export class Postgres {
  constructor(bin, dir, port, database) {
    this.bin = bin;
    this.dir = dir;
    this.dataDir = path.join(dir, 'data');
    this.logFile = path.join(dir, 'server.log');
    this.port = port;
    this.database = database;
    this.url = `postgres://ingot@127.0.0.1:${port}/${database}`;
    this.asUser = null; // 'postgres' when this process is root
    this.started = false;
  }

  /**
   * Runs one of PostgreSQL's programs (as the postgres user under root) and resolves with
   * its stdout; rejects with its output when it fails or takes longer than a minute.
   */
  run(program, args) {
    const exe = path.join(this.bin, program);
    const [cmd, argv] = this.asUser ? ['runuser', ['-u', this.asUser, '--', exe, ...args]] : [exe, args];
    return new Promise((resolve, reject) => {
      // stdin ignored and output to pipes that pg_ctl's server never inherits (-l).
      const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], cwd: this.dir });
      let out = '';
      let err = '';
      child.stdout.setEncoding('utf8').on('data', (d) => (out += d));
      child.stderr.setEncoding('utf8').on('data', (d) => (err += d));
      const timer = setTimeout(() => child.kill('SIGKILL'), PG_COMMAND_TIMEOUT_MS);
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) resolve(out);
        else reject(new Error(`${program} ${args.join(' ')}: code ${code}, signal ${signal}\n${out}${err}\n${this.log()}`));
      });
    });
  }

  /** Runs one SQL statement with psql and resolves with its unaligned, tuples-only output. */
  async query(sql) {
    const out = await this.run('psql', [
      '-h', '127.0.0.1', '-p', String(this.port), '-U', 'ingot', '-d', this.database, '-v', 'ON_ERROR_STOP=1', '-Atc', sql,
    ]);
    return out.trim();
  }

  /** The server log's last lines, for failure messages. */
  log(n = 40) {
    try {
      return fs.readFileSync(this.logFile, 'utf8').split('\n').slice(-n).join('\n');
    } catch {
      return '(no server log)';
    }
  }

  /** Stops the server (fast shutdown) and removes its directory. */
  async stop() {
    try {
      if (this.started) await this.run('pg_ctl', ['-D', this.dataDir, '-m', 'fast', '-w', '-t', '30', 'stop']);
      this.started = false;
    } finally {
      fs.rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** GET /metrics of a gateway; resolves with the value of `name` (no labels), or null. */
export async function metricValue(gw, name) {
  const res = await fetch(`${gw.baseUrl}/metrics`, { signal: AbortSignal.timeout(5_000) });
  const text = await res.text();
  const m = text.match(new RegExp(`^${name}(?:\\{\\})? (\\S+)$`, 'm'));
  return m ? Number(m[1]) : null;
}
