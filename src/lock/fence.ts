// Fencing: work done under the lock carries the holding's tag, so the next holder can stop what an earlier
// holding left running (an orphaned command, a statement still executing after its client died, fn's extra
// connections) before it starts, and a holding that loses its session can stop its own.
import { type Query, type SessionSource, withSession } from '../driver/index.js';
import { MigrationLockError } from '../errors.js';
import { errorMessage, type Logger } from '../logger.js';
import { currentUser, stillThere, type TaggedRow, taggedBackends, terminateTagged } from '../sql/fencing.js';
import { formatMs, nap } from '../time.js';

// pg_terminate_backend only signals: a backend leaves at its next interrupt check, at once unless the
// kernel holds it (a write to a dead peer ends within tcp_user_timeout). Past this, refuse rather than overlap.
const FENCE_BOUND_MS = 30_000;

/** `pid 4242 of role "ci" (idle for 3m12s; pg-migration-lock:42:abc123.api)`: how messages name a tagged backend. */
function describe(rows: TaggedRow[]): string {
  return rows
    .map(({ pid, tag, role, state, since_ms }) => {
      const since = since_ms === null ? '' : ` for ${formatMs(Math.max(0, Date.now() - since_ms))}`;
      return `pid ${pid}${role ? ` of role "${role}"` : ''} (${state ? `${state}${since}; ` : ''}${tag})`;
    })
    .join(', ');
}

/**
 * Terminates every backend of this database that carries another holding's tag of `key` and whose role could have
 * been doing that holding's work, and waits until they are gone, before the new holder starts; logged with which
 * pids and whose tags. A backend whose role cannot change the database only wears the tag: it is logged and left
 * alone. A role that may not terminate the others (or backends that do not leave) make it throw: never run beside them.
 */
export async function fenceStale(
  query: Query,
  key: bigint,
  tag: string,
  { logger }: { logger: Logger },
  label: string,
): Promise<void> {
  const tagged = await taggedBackends(query, key, tag, false);
  const ignored = tagged.filter((row) => !row.can_migrate);
  if (ignored.length > 0) {
    logger.warn(
      `Migration lock ${label}: ignoring ${describe(ignored)}: ${ignored.length === 1 ? 'it wears' : 'they wear'} a holding's tag, but ${ignored.length === 1 ? 'its role' : 'their roles'} cannot change this database, so ${ignored.length === 1 ? 'it is' : 'they are'} not a holding's work`,
    );
  }
  const stale = tagged.filter((row) => row.can_migrate);
  if (stale.length === 0) return;
  logger.warn(
    `Migration lock ${label}: an earlier holder's work is still running on ${stale.length} backend${stale.length === 1 ? '' : 's'}: ${describe(stale)}; terminating ${stale.length === 1 ? 'it' : 'them'} before this holder starts`,
  );
  const startedAt = performance.now();
  const seen = new Map(stale.map((backend) => [backend.pid, backend]));
  for (;;) {
    let left: TaggedRow[];
    try {
      // Signals every such backend (again, if it has not left yet), and any that appeared since.
      left = (await taggedBackends(query, key, tag, true)).filter((row) => row.can_migrate);
    } catch (err) {
      if ((err as { code?: string }).code !== '42501') throw err;
      const me = await currentUser(query).catch(() => '');
      throw new MigrationLockError(
        `Migration lock ${label} was free, but an earlier holder's work still runs on ${describe([...seen.values()])}, and role "${me}" may not terminate it (${errorMessage(err)}). Running beside it could apply a migration twice, so this holder does not start. Grant the right: GRANT pg_signal_backend TO "${me}" (a superuser's sessions need a superuser), or stop that work.`,
        key,
        null,
        { cause: err },
      );
    }
    if (left.length === 0) break;
    for (const backend of left) seen.set(backend.pid, backend);
    if (performance.now() - startedAt > FENCE_BOUND_MS) {
      throw new MigrationLockError(
        `Migration lock ${label}: ${describe(left)} still ran ${formatMs(FENCE_BOUND_MS)} after pg_terminate_backend, so this holder does not start beside it`,
        key,
      );
    }
    await nap(20).done;
  }
  logger.info(
    `Migration lock ${label}: terminated ${[...seen.keys()].map((pid) => `pid ${pid}`).join(', ')}; starting`,
  );
}

/**
 * A holding lost its session: terminate whatever still runs under its tag (a command's statements, fn's
 * extra connections), from a new session, since the lock no longer protects it. Best effort, bounded, logged.
 */
export async function fenceOwn(source: SessionSource, tag: string, logger: Logger): Promise<void> {
  if (!source.reopenable) return;
  const work = withSession(source, async (session) => {
    const pids = await terminateTagged(session.query, tag);
    if (pids.length === 0) return;
    logger.warn(
      `Terminated the work still running under this holding's tag ${tag}: ${pids.map((pid) => `pid ${pid}`).join(', ')}`,
    );
    for (const deadline = performance.now() + 5_000; performance.now() < deadline; ) {
      if ((await stillThere(session.query, pids)).length === 0) return;
      await nap(20).done;
    }
  });
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([work, new Promise((resolve) => (timer = setTimeout(resolve, 15_000)))])
    .catch((err) => logger.warn(`Could not terminate the work under this holding's tag ${tag}: ${errorMessage(err)}`))
    .finally(() => clearTimeout(timer));
}
