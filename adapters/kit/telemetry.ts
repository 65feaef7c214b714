// The migrate span of an adapter's run (pg_migration_lock.migrate), and the migrations-applied metric.
import type { LockContext } from '../../src/lock/options.js';
import { databaseAttributes, KEY_ATTRIBUTE, record, startSpan, telemetryOn } from '../../src/telemetry.js';

export { MIGRATOR } from '../../src/telemetry.js';

/** `migrate`, traced when OpenTelemetry is there (else `migrate` itself). */
export function traceMigrate<C, T>(
  key: bigint,
  tool: string | undefined,
  migrate: (ctx: LockContext<C>) => T | Promise<T>,
): (ctx: LockContext<C>) => T | Promise<T> {
  if (!telemetryOn()) return migrate;
  // pg_migration_lock.migrate: the migrator's run under the lock, with how many migrations it applied.
  return async (ctx: LockContext<C>) => {
    const attributes = { [KEY_ATTRIBUTE]: String(key), 'pg_migration_lock.migrator': tool };
    const span = startSpan('migrate', { ...attributes, ...databaseAttributes(ctx.client) });
    try {
      const result = await span.within(() => migrate(ctx));
      const applied = appliedCount(result);
      span.set({ 'pg_migration_lock.applied': applied, 'pg_migration_lock.outcome': 'ok' });
      span.end();
      if (applied) record('applied', applied, attributes);
      return result;
    } catch (err) {
      span.set({ 'pg_migration_lock.outcome': 'failed' });
      span.end(err);
      throw err;
    }
  };
}

/**
 * How many migrations a migrator's result says it applied: knex's `[batch, names]`, kysely's result set (its
 * successes), or the list of what ran (every other migrator).
 */
function appliedCount(result: unknown): number | undefined {
  if (Array.isArray(result)) {
    return result.length === 2 && typeof result[0] === 'number' && Array.isArray(result[1])
      ? result[1].length
      : result.length;
  }
  const results = (result as { results?: unknown } | undefined)?.results;
  if (Array.isArray(results)) return results.filter((r) => (r as { status?: unknown })?.status === 'Success').length;
  return result === undefined ? 0 : undefined;
}
