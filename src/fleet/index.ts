// migrateEach: many databases or schemas, each under its own lock, a few at a time; runs started together share the work.

import { parseKey } from '../key.js';
import { checkFleetArguments, type FleetTargets } from './options.js';
import { type Entry, TargetQueue } from './queue.js';
import { FleetRun } from './run.js';
import { type FleetTargetInput, fleetKey, toFleetTarget } from './target.js';
import type { FleetMigrator, FleetReport, MigrateEachOptions } from './types.js';

/**
 * Migrates every target (a database, or a schema of one) under a lock of its own, `concurrency` at a time,
 * and reports each target's outcome. Each target is tried with `wait: false` first: the migrator checks
 * what is pending on the session it locks with (an up-to-date target costs one connection and no lock);
 * a target whose lock another run holds is deferred and tried again once no untried target is left, when that
 * run has usually finished it (`skipped`), waiting for its lock otherwise. Targets are taken in the order
 * given; after a busy one, from a random untried one on, so that two runs of one fleet started together (two
 * replicas, two pods) work apart: they split the targets, each migrated once, and finish about as fast as one
 * run with twice the concurrency. No lock is waited for while another is held: no deadlock.
 *
 * @param targets connection strings, `pg` configs or `{ url, schema?, name? }`: an array (checked before any
 *   connection) or an (async) iterable, e.g. rows read from a tenants table (read as slots free up, one target ahead).
 * @param migrator what each adapter's `fleet(config)` returns, e.g. `fleet({ directory })` from `pg-migration-lock/knex`.
 * @param options `concurrency` (default 4), `keyOf`, `onProgress`, `stopOnError`, `signal`, `logger`, `lock`.
 * @returns `{ results, counts, ok, durationMs }`: it resolves when a target fails too (`ok` is false then).
 *   It rejects only for bad arguments (TypeError, before any connection) or when an iterable of targets
 *   throws or yields a bad target (after the targets running have finished).
 *
 * @example
 * import { migrateEach } from 'pg-migration-lock';
 * import { fleet } from 'pg-migration-lock/knex';
 *
 * const schemas = ['tenant_1', 'tenant_2'].map((schema) => ({ url: process.env.DATABASE_URL!, schema }));
 * const report = await migrateEach(schemas, fleet({ migrations: { directory: './migrations' } }), { concurrency: 8 });
 * if (!report.ok) process.exitCode = 1;
 */
export async function migrateEach<M extends FleetMigrator>(
  targets: FleetTargets,
  migrator: M,
  options: MigrateEachOptions<M> = {},
): Promise<FleetReport> {
  const setup = checkFleetArguments(targets, migrator, options);
  const entry = (input: unknown, where: string): Entry => {
    const target = toFleetTarget(input, where);
    const key = parseKey(setup.keyOf ? setup.keyOf(target, migrator) : fleetKey(migrator, target.schema));
    return { target, key, spent: 0 };
  };
  // An array is checked whole, before any connection; an iterable as it is read.
  const entries: Entry[] = Array.isArray(targets) ? targets.map((t, i) => entry(t, `targets[${i}]`)) : [];
  const queue = new TargetQueue(entries, Array.isArray(targets) ? undefined : iterate(targets), entry);
  return new FleetRun(setup, migrator, queue).finish();
}

async function* iterate(targets: FleetTargets): AsyncGenerator<FleetTargetInput> {
  yield* targets as AsyncIterable<FleetTargetInput>;
}
