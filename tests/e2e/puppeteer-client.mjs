// Puppeteer as the end-to-end tests drive ingot with it: one place for the connect options.

import puppeteer from 'puppeteer-core';

/** Connects to a session's CDP WebSocket and keeps the browser's own window size. */
export function connect(wsUrl) {
  return puppeteer.connect({ browserWSEndpoint: wsUrl, defaultViewport: null, protocolTimeout: 60_000 });
}

/** Disconnects if still connected; for cleanup, so it never throws. */
export async function disconnectQuietly(browser) {
  if (browser?.connected) {
    try {
      await browser.disconnect();
    } catch {
      // cleanup only
    }
  }
}
