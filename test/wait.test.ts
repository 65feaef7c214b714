// The waiting state machine on its own: a fake wire (the lock protocol as operations) and a fake clock, so
// each rule is checked exactly and at once. The real protocol is covered against PostgreSQL elsewhere.
import { describe, expect, test } from 'vitest';
import { MigrationLockError, MigrationLockTimeoutError } from '../src/errors.js';
import { DONE, Waiter, type WaitOptions, type WaitWire } from '../src/lock/wait.js';
import type { Logger } from '../src/logger.js';
import type { Holder } from '../src/status.js';
import type { Clock, Nap } from '../src/time.js';

const HOLDER: Holder = {
  pid: 7,
  applicationName: 'pg-migration-lock:1:abc123.1@host',
  clientAddr: null,
  backendStart: null,
  state: 'idle',
  query: null,
  queryStart: null,
};

/** Virtual time: a nap advances the clock by its length at once, unless a payload ends it first. */
function fakeClock() {
  let now = 0;
  const naps: number[] = [];
  const clock: Clock = {
    now: () => now,
    nap(ms): Nap {
      naps.push(ms);
      now += ms;
      return { done: Promise.resolve(), wake: () => {} };
    },
  };
  return { clock, naps, advance: (ms: number) => (now += ms) };
}

/** A lock that becomes free after `freeAfterTries` tries; records every operation. */
function fakeWire(freeAfterTries = Number.POSITIVE_INFINITY, onTry?: (tries: number) => void) {
  const calls: string[] = [];
  let tries = 0;
  const wire: WaitWire<'acquired'> = {
    register: async () => {
      calls.push('register');
      return { pid: 42, nowMs: 1_000 };
    },
    tryLock: async (prefix) => {
      calls.push(`try ${prefix.trim()}`);
      tries++;
      onTry?.(tries);
      return tries > freeAfterTries ? 'acquired' : undefined;
    },
    holder: async () => {
      calls.push('holder');
      return HOLDER;
    },
    passWakeUp: async () => {
      calls.push('pass');
    },
  };
  return { wire, calls, tries: () => tries };
}

const silent: Logger = { info() {}, warn() {}, error() {} };
const options = (extra: Partial<WaitOptions> = {}): WaitOptions => ({
  reportEveryMs: 10_000,
  pollIntervalMs: 1_000,
  logger: silent,
  hooks: {},
  ...extra,
});

describe('Waiter', () => {
  test('registers, reports, then polls with a jittered nap between tries until the lock is free', async () => {
    const { clock, naps } = fakeClock();
    const { wire, calls } = fakeWire(3);
    const waiter = new Waiter({ wire, key: 1n, options: options(), clock, startedAt: 0 });
    expect(await waiter.run()).toBe('acquired');
    expect(calls[0]).toBe('register');
    expect(calls[1]).toBe('holder');
    // Every try carries the waiting breadcrumb with the server's clock at registration.
    expect(calls.filter((c) => c.startsWith('try'))).toEqual(
      Array(4).fill('try /* pg-migration-lock: waiting for 1 since 1000 */'),
    );
    expect(naps).toHaveLength(3);
    for (const ms of naps) {
      expect(ms).toBeGreaterThanOrEqual(900);
      expect(ms).toBeLessThan(1_300);
    }
    expect(waiter.pid).toBe(42);
  });

  test('a release naming it (or everyone) during a try: the next try comes at once, no nap', async () => {
    const { clock, naps } = fakeClock();
    let waiter!: Waiter<'acquired'>;
    const { wire } = fakeWire(2, (tries) => {
      if (tries === 1) waiter.onPayload('42');
      if (tries === 2) waiter.onPayload('');
    });
    waiter = new Waiter({ wire, key: 1n, options: options(), clock, startedAt: 0 });
    expect(await waiter.run()).toBe('acquired');
    expect(naps).toEqual([]);
  });

  test('a release naming another waiter is not for it', async () => {
    const { clock, naps } = fakeClock();
    let waiter!: Waiter<'acquired'>;
    const { wire } = fakeWire(1, () => waiter.onPayload('43'));
    waiter = new Waiter({ wire, key: 1n, options: options(), clock, startedAt: 0 });
    await waiter.run();
    expect(naps).toHaveLength(1);
    expect(waiter.released).toBe(false);
  });

  test('timeoutMs: MigrationLockTimeoutError naming the holder, after the last try', async () => {
    const { clock } = fakeClock();
    const { wire } = fakeWire();
    const waiter = new Waiter({ wire, key: 1n, options: options({ timeoutMs: 2_500 }), clock, startedAt: 0 });
    const error = await waiter.run().catch((err: unknown) => err);
    expect(error).toBeInstanceOf(MigrationLockTimeoutError);
    expect((error as MigrationLockTimeoutError).holder).toEqual(HOLDER);
    expect((error as MigrationLockTimeoutError).waitedMs).toBe(2_500);
  });

  test('reports every reportEveryMs, through the hook (and the logger at debug then)', async () => {
    const { clock } = fakeClock();
    const { wire } = fakeWire(30);
    const reports: number[] = [];
    const lines: string[] = [];
    const logger: Logger = { ...silent, debug: (m) => lines.push(m), info: (m) => lines.push(`info ${m}`) };
    const waiter = new Waiter({
      wire,
      key: 1n,
      options: options({ reportEveryMs: 5_000, logger, hooks: { onWaiting: (info) => reports.push(info.waitedMs) } }),
      clock,
      startedAt: 0,
    });
    await waiter.run();
    expect(reports.length).toBeGreaterThanOrEqual(5);
    for (let i = 1; i < reports.length; i++) expect(reports[i]! - reports[i - 1]!).toBeGreaterThanOrEqual(5_000);
    expect(lines.every((line) => !line.startsWith('info'))).toBe(true);
  });

  test('isDone: asked at a release; true ends the wait (DONE), passing on a wake-up that picked it', async () => {
    const { clock } = fakeClock();
    let waiter!: Waiter<'acquired'>;
    const { wire, calls } = fakeWire(Number.POSITIVE_INFINITY, (tries) => tries === 2 && waiter.onPayload('42'));
    let asked = 0;
    waiter = new Waiter({
      wire,
      key: 1n,
      options: options(),
      clock,
      startedAt: 0,
      isDone: async () => ++asked === 1,
    });
    expect(await waiter.run()).toBe(DONE);
    expect(asked).toBe(1);
    expect(calls.at(-1)).toBe('pass');
  });

  test('isDone with recheckEveryMs: asked that often without any release (a session that cannot LISTEN)', async () => {
    const { clock, naps } = fakeClock();
    const { wire, calls } = fakeWire();
    const askedAt: number[] = [];
    const waiter = new Waiter({
      wire,
      key: 1n,
      options: options(),
      clock,
      startedAt: 0,
      isDone: async () => askedAt.push(clock.now()) === 3,
      recheckEveryMs: 2_000,
    });
    expect(await waiter.run()).toBe(DONE);
    expect(askedAt).toHaveLength(3);
    expect(askedAt[1]! - askedAt[0]!).toBeGreaterThanOrEqual(2_000);
    // Not picked by a release: nothing to pass on. Naps never overshoot the next re-check.
    expect(calls).not.toContain('pass');
    expect(Math.max(...naps)).toBeLessThanOrEqual(2_000);
  });

  test('a holder that is the call this one is nested in: refused at once, not waited for forever', async () => {
    const { clock } = fakeClock();
    const { wire, tries } = fakeWire();
    const waiter = new Waiter({
      wire,
      key: 1n,
      options: options(),
      clock,
      startedAt: 0,
      enclosing: new Set([HOLDER.applicationName!]),
    });
    const error = await waiter.run().catch((err: unknown) => err);
    expect(error).toBeInstanceOf(MigrationLockError);
    expect((error as Error).message).toMatch(/held by the very call this one runs inside/);
    expect(tries()).toBe(0);
  });

  test('an aborted signal ends the wait with its reason', async () => {
    const { clock } = fakeClock();
    const controller = new AbortController();
    const { wire } = fakeWire(Number.POSITIVE_INFINITY, (tries) => tries === 3 && controller.abort('stop'));
    const waiter = new Waiter({ wire, key: 1n, options: options({ signal: controller.signal }), clock, startedAt: 0 });
    expect(await waiter.run().catch((err: unknown) => err)).toBe('stop');
  });
});
