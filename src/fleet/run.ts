// One fleet run's scheduling: workers taking untried targets first and deferred ones after, each try's outcome, the counts.
import { MigrationLockBusyError } from '../errors.js';
import { describeKey } from '../key.js';
import { callSafely, errorMessage } from '../logger.js';
import { KEY_ATTRIBUTE, record, startSpan } from '../telemetry.js';
import { formatMs } from '../time.js';
import { FleetChecks } from './checks.js';
import type { FleetSetup } from './options.js';
import { FleetPools } from './pools.js';
import type { Entry, TargetQueue } from './queue.js';
import { Canary, type FleetStopReason, failureBudget } from './rollout.js';
import type { FleetCounts, FleetMigrator, FleetProgressEvent, FleetReport, FleetResult } from './types.js';

/** The field of FleetCounts a status is counted in: `up-to-date` → `upToDate`. */
const counted = (status: string) => status.replace(/-(\w)/g, (_, c: string) => c.toUpperCase()) as 'applied';

/** A result without what every result has. */
type Without<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
type Outcome = Without<FleetResult, 'target' | 'key' | 'durationMs'>;

/** A target taken just as the run stopped (a canary failed, the failure budget): it ends `not-run`. */
class NotStarted extends Error {}

export class FleetRun<M extends FleetMigrator> {
  readonly #startedAt = performance.now();
  readonly #deferred: Entry[] = [];
  readonly #pools: FleetPools;
  readonly #checks: FleetChecks;
  readonly #canary: Canary;
  /** The targets running as the canary. */
  readonly #canaries = new Set<Entry>();
  /** How many of the queue's entries the batched checks know of (an iterable's are planned as they are read). */
  #planned = 0;
  readonly counts: FleetCounts;
  #firstTries = 0;
  #stopped = false;
  #stoppedBy: FleetStopReason | undefined;
  /** Workers waiting for a try to end (it may defer its target). */
  #sleepers: (() => void)[] = [];

  constructor(
    readonly setup: FleetSetup<M>,
    readonly migrator: M,
    readonly queue: TargetQueue,
  ) {
    const zero = { done: 0, running: 0, deferred: 0, applied: 0, upToDate: 0, skipped: 0, failed: 0, notRun: 0 };
    this.counts = { total: queue.total, ...zero };
    this.#pools = new FleetPools(setup.concurrency, setup.lock.applicationName);
    this.#checks = new FleetChecks(migrator, this.#pools, setup.logger);
    this.#canary = new Canary(setup.canary);
    this.#plan();
  }

  /** Hands the targets read so far to the batched checks, in order. */
  #plan(): void {
    const { entries } = this.queue;
    if (this.#planned === entries.length) return;
    this.#checks.plan(entries.slice(this.#planned).map((entry) => entry.target));
    this.#planned = entries.length;
  }

  async finish(): Promise<FleetReport> {
    const { signal, concurrency, logger } = this.setup;
    const stop = () => this.#stop('signal');
    signal?.addEventListener('abort', stop, { once: true });
    if (signal?.aborted) this.#stop('signal');
    try {
      await Promise.all(Array.from({ length: concurrency }, () => this.#worker()));
    } finally {
      signal?.removeEventListener('abort', stop);
      await Promise.all([this.queue.close(), this.#pools.end()]);
    }
    const { entries, error } = this.queue;
    for (const entry of entries) if (!entry.result) this.#settle(entry, { status: 'not-run', applied: [] });
    if (error) throw error.error;
    const { counts } = this;
    const durationMs = performance.now() - this.#startedAt;
    logger.debug?.(
      `Fleet of ${this.migrator.name}: ${counts.done} targets in ${formatMs(durationMs)}: ${counts.applied} applied, ${counts.upToDate} up to date, ${counts.skipped} skipped, ${counts.failed} failed, ${counts.notRun} not run${this.#stoppedBy ? ` (stopped: ${this.#stoppedBy})` : ''}`,
    );
    const canary = this.#canary.outcome();
    return {
      results: entries.map((e) => e.result!),
      counts: { ...counts },
      ok: counts.failed === 0 && counts.notRun === 0,
      durationMs,
      ...(this.#stoppedBy && counts.notRun > 0 && { stoppedBy: this.#stoppedBy }),
      ...(canary && { canary }),
    };
  }

  async #worker(): Promise<void> {
    for (;;) {
      if (this.#stopped) return;
      const fresh = await this.queue.next(() => this.#stopped);
      this.counts.total = this.queue.total;
      if (this.queue.error) this.#stop();
      this.#plan();
      if (fresh) {
        await this.#attempt(fresh, false);
        continue;
      }
      if (this.#stopped) return;
      const later = this.#deferred.shift();
      if (later) {
        this.counts.deferred--;
        await this.#attempt(later, true);
        continue;
      }
      // Tries still running may defer their target yet: wait for one to end, else this worker is done.
      if (this.#firstTries === 0) return;
      await new Promise<void>((resolve) => this.#sleepers.push(resolve));
    }
  }

  /** A first try (`wait: false`: a lock held elsewhere defers the target), or a deferred target's second (waiting). */
  async #attempt(entry: Entry, again: boolean): Promise<void> {
    if (!again) this.#firstTries++;
    this.counts.running++;
    this.#emit(again ? 'resumed' : 'started', entry);
    // pg_migration_lock.fleet.target: one try of a target, ending with its status (or `deferred`).
    const span = startSpan('fleet.target', { ...this.#attributes(entry), 'pg_migration_lock.fleet.retry': again });
    let applied: string[];
    try {
      applied = await span.within(() => this.#try(entry, again));
    } catch (error) {
      this.counts.running--;
      const canary = this.#canaries.delete(entry);
      if (error instanceof NotStarted) {
        if (canary) this.#canary.leave('other');
        this.#settle(entry, { status: 'not-run', applied: [] });
        span.end();
      } else if (again || !(error instanceof MigrationLockBusyError)) {
        this.#fail(entry, error, canary);
        span.set({ 'pg_migration_lock.fleet.status': entry.result?.status });
        span.end(entry.result?.status === 'failed' ? error : undefined);
      } else {
        if (canary) this.#canary.leave('other');
        span.set({ 'pg_migration_lock.fleet.status': 'deferred' });
        span.end();
        this.#deferred.push(entry);
        this.counts.deferred++;
        this.queue.jump();
        this.setup.logger.debug?.(`${entry.target.name}: ${error.message}; coming back to it after the others`);
        this.#emit('deferred', entry);
      }
      return;
    } finally {
      if (!again) {
        this.#firstTries--;
        this.#wake();
      }
    }
    this.counts.running--;
    if (this.#canaries.delete(entry)) this.#canary.leave(applied.length > 0 ? 'applied' : 'other');
    if (applied.length > 0) this.#settle(entry, { status: 'applied', applied });
    else this.#settle(entry, { status: again ? 'skipped' : 'up-to-date', applied: [] });
    span.set({ 'pg_migration_lock.fleet.status': entry.result?.status, 'pg_migration_lock.applied': applied.length });
    span.end();
  }

  /** What a target's span and metric carry: the key, the migrator, the target. */
  #attributes(entry: Entry) {
    return {
      [KEY_ATTRIBUTE]: String(entry.key),
      'pg_migration_lock.migrator': this.migrator.name,
      'pg_migration_lock.fleet.target': entry.target.name,
    };
  }

  async #try(entry: Entry, wait: boolean): Promise<string[]> {
    const { lock, signal, logger } = this.setup;
    let startedAt = performance.now();
    // Up to date by the batched check of its database: no lock, no migrator.
    if (!wait && (await this.#checks.upToDate(entry.target))) {
      entry.spent += performance.now() - startedAt;
      return [];
    }
    // During the canary, wait for a place in it; the wait is not time spent on the target.
    if (await this.#canary.enter(() => this.#stopped)) this.#canaries.add(entry);
    if (this.#stopped) throw new NotStarted();
    startedAt = performance.now();
    try {
      const keyLabel = `${describeKey(entry.key)} of ${entry.target.name}`;
      const pool = this.#pools.for(entry.target);
      // A first try of a target another run holds: found busy on the run's own connection, cheaply.
      if (!wait && pool && (await FleetPools.held(pool, entry.key))) {
        throw new MigrationLockBusyError(`Migration lock ${keyLabel} is held by another session`, entry.key);
      }
      const options = { ...lock, key: entry.key, wait, signal, logger, keyLabel };
      const applied = await this.migrator.run(entry.target, options, pool);
      if (!Array.isArray(applied) || applied.some((name) => typeof name !== 'string')) {
        throw new TypeError(`${this.migrator.name}: run() must resolve to the names of the migrations it applied`);
      }
      return applied;
    } finally {
      entry.spent += performance.now() - startedAt;
    }
  }

  #fail(entry: Entry, error: unknown, canary: boolean): void {
    const { signal, stopOnError, logger, maxFailures } = this.setup;
    if (signal?.aborted && error === signal.reason) {
      if (canary) this.#canary.leave('other');
      this.#settle(entry, { status: 'not-run', applied: [] });
      return;
    }
    logger.warn(`Migrating ${entry.target.name} with ${this.migrator.name} failed: ${errorMessage(error)}`);
    if (canary) this.#canary.leave('failed');
    this.#settle(entry, { status: 'failed', error });
    if (canary) this.#stop('canary');
    else if (stopOnError) this.#stop('stop-on-error');
    else if (this.counts.failed > failureBudget(maxFailures, this.counts.total ?? this.queue.entries.length)) {
      this.#stop('max-failures');
    }
  }

  #settle(entry: Entry, outcome: Outcome): void {
    entry.result = { target: entry.target, key: entry.key, durationMs: entry.spent, ...outcome } as FleetResult;
    this.counts.done++;
    this.counts[counted(entry.result.status)]++;
    record('targets', 1, { ...this.#attributes(entry), 'pg_migration_lock.fleet.status': entry.result.status });
    this.setup.logger.debug?.(`${entry.target.name}: ${entry.result.status} in ${formatMs(entry.spent)}`);
    this.#emit('finished', entry);
  }

  #emit(type: FleetProgressEvent['type'], { target, result }: Entry): void {
    const event = { type, target, ...(type === 'finished' && { result }), counts: { ...this.counts } };
    callSafely(this.setup.logger, 'onProgress', this.setup.onProgress, event as FleetProgressEvent);
  }

  #stop(reason?: FleetStopReason): void {
    if (!this.#stopped && reason) {
      this.#stoppedBy = reason;
      const why = {
        canary: 'a canary target failed',
        'max-failures': `more than the failure budget failed`,
        'stop-on-error': 'a target failed (stopOnError)',
        signal: 'the signal aborted',
      }[reason];
      this.setup.logger.debug?.(`Fleet of ${this.migrator.name}: ${why}: starting no further target`);
    }
    this.#stopped = true;
    this.#canary.wake();
    this.#wake();
  }

  #wake(): void {
    for (const resolve of this.#sleepers.splice(0)) resolve();
  }
}
