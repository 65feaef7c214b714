// The reconnect budget of a waiter, in virtual time: a fake session source whose server goes away twice, 90 s
// apart. (The real restarts are in faults.test.ts; 90 s of real waiting would say nothing more.)
import { describe, expect, test } from 'vitest';
import type { Session, SessionSource } from '../src/driver/types.js';
import { MigrationLockError } from '../src/errors.js';
import { acquire } from '../src/lock/acquire.js';
import { SKIPPED } from '../src/lock/holding.js';
import { resolveOptions } from '../src/lock/options.js';
import type { Clock, Nap } from '../src/time.js';

function virtualClock(): Clock {
  let now = 0;
  return {
    now: () => now,
    nap(ms): Nap {
      now += ms;
      return { done: Promise.resolve(), wake: () => {} };
    },
  };
}

const reset = () => Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
const refused = () => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });

/**
 * A server that is down during `outages` ([from, to) in ms), whose sessions break when one starts, and whose
 * lock another session holds until `freeAt`. It answers our statements by their shape.
 */
function flakyServer(clock: Clock, outages: [number, number][], freeAt: number) {
  const down = () => outages.some(([from, to]) => clock.now() >= from && clock.now() < to);
  let opened = 0;
  const source: SessionSource = {
    reopenable: true,
    async open() {
      if (down()) throw refused();
      const born = clock.now();
      // It breaks at the next outage after it was opened.
      const breaksAt = Math.min(
        ...outages.map(([from]) => from).filter((from) => from > born),
        Number.POSITIVE_INFINITY,
      );
      const pid = 100 + opened++;
      let lost: ((error: unknown) => void) | undefined;
      const session: Session = {
        client: {},
        kind: 'own',
        async query<R>(sql: string) {
          if (clock.now() >= breaksAt) {
            const error = reset();
            lost?.(error);
            throw error;
          }
          const row = sql.includes('AS in_tx')
            ? { locked: false, held: false, in_tx: false, pid, version: 'PostgreSQL 18.1', saved: '{}', stale: null }
            : sql.includes('pg_try_advisory_lock_shared')
              ? { registered: true, pid, now_ms: clock.now() }
              : sql.includes('WITH rows AS')
                ? undefined
                : sql.includes('pg_try_advisory_lock(')
                  ? { locked: clock.now() >= freeAt, pid, stale: null }
                  : {};
          return (row ? [row] : []) as R[];
        },
        onLost(callback) {
          lost = callback;
          return () => (lost = undefined);
        },
        release: async () => {},
        destroy: () => {},
      };
      return session;
    },
  };
  return { source, opened: () => opened };
}

describe('a waiter reconnects through any number of failovers', () => {
  test('two outages of 20 s, 90 s apart: the budget starts over after the healthy session between them', async () => {
    const clock = virtualClock();
    const server = flakyServer(
      clock,
      [
        [10_000, 30_000],
        [120_000, 140_000],
      ],
      200_000,
    );
    const warnings: string[] = [];
    const options = resolveOptions({ logger: { info() {}, warn: (m) => warnings.push(m), error() {} } });
    const held = await acquire({ source: server.source, key: 1n, options, tag: 't', clock });
    expect(held).not.toBe(SKIPPED);
    expect(clock.now()).toBeGreaterThanOrEqual(200_000);
    expect(server.opened()).toBe(3);
    expect(warnings.filter((w) => w.startsWith('Lost the connection while waiting')).length).toBeGreaterThanOrEqual(4);
  });

  test('without a healthy session for 60 s, it gives up (no timeoutMs): MigrationLockError naming how long', async () => {
    const clock = virtualClock();
    const server = flakyServer(clock, [[10_000, 1_000_000]], 2_000_000);
    const options = resolveOptions({ logger: null });
    const error = await acquire({ source: server.source, key: 1n, options, tag: 't', clock }).catch(
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(MigrationLockError);
    expect((error as Error).message).toMatch(/no session could be opened for (5\d\.\ds|1m\ds)/);
    expect(clock.now()).toBeLessThan(75_000);
  });
});
