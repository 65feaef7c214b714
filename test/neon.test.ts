// Neon's serverless driver (@neondatabase/serverless): its Pool and Client over a WebSocket, through a
// WebSocket-to-TCP proxy of the test's own (as Neon runs in front of its servers), in Node processes; its
// HTTP neon() function refused. See test/runtimes.ts for the tests every runtime and driver gets.
import { neon, Pool } from '@neondatabase/serverless';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { getLockStatus, withMigrationLock } from '../src/index.js';
import { startWsProxy } from './fixtures/runtimes/ws-proxy.mjs';
import { spawnNode } from './helpers.js';
import { runtimeTests, WORKER } from './runtimes.js';

let proxy: Awaited<ReturnType<typeof startWsProxy>>;
beforeAll(async () => {
  proxy = await startWsProxy();
});
afterAll(() => proxy?.stop());

runtimeTests(
  {
    spawn: (args, env) => spawnNode(WORKER, args, { PGML_NEON_PROXY: proxy.address, ...env }),
    race: ['neon-pool', 'neon-pool', 'neon-pool', 'neon-client'],
    restartForms: ['neon-pool', 'neon-pool'],
  },
  false,
);

test("neon()'s HTTP query function is refused with a TypeError naming its Pool, before any connection", async () => {
  // A host that does not exist: any request would fail differently.
  const sql = neon('postgres://user:password@ep-x-pooler.us-east-2.aws.neon.tech.invalid/db');
  const expected =
    /^Expected `client` to be a source with a session, got Neon's HTTP query function \(`neon\(url\)`\): over HTTP each query .* is a request of its own, so no session can hold a session advisory lock\. Pass a `Pool` \(or a connected `Client`\) from @neondatabase\/serverless instead/;
  await expect(withMigrationLock(sql as never, 1, () => 'ran')).rejects.toThrow(TypeError);
  await expect(withMigrationLock(sql as never, 1, () => 'ran')).rejects.toThrow(expected);
  await expect(getLockStatus(sql as never, 1)).rejects.toThrow(expected);
});

test("a Neon Pool is taken as the pg.Pool it is: fn gets the pool's client", async () => {
  const pool = new Pool({ connectionString: 'postgres://user:password@127.0.0.1:1/db' });
  // Connecting fails (nothing listens on port 1, and no WebSocket is configured in this process): the source
  // itself was accepted, and the failure is the connection's.
  const error = await withMigrationLock(pool, 1, () => 'ran', { logger: null, timeoutMs: 100 }).catch((e) => e);
  expect(error).not.toBeInstanceOf(TypeError);
  await pool.end();
});
