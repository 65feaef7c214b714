// What the holder of a lock is doing, in few words, for the waiting line, `status` and `pending --wait`:
// "for 3m12s: CREATE INDEX CONCURRENTLY orders_created_at… (building index: scanning table, 61 %)".
import { isLockAttempt } from '../sql/waiters.js';
import type { Holder } from '../status.js';
import { formatMs } from '../time.js';

/** A query on one line: whitespace collapsed, cut to `max` characters (with an ellipsis). */
export function oneLine(query: string, max: number): string {
  const text = query.replace(/\s+/g, ' ').trim();
  return text.length > max ? `${text.slice(0, Math.max(0, max - 1))}…` : text;
}

/** "(building index: scanning table, 61 %)", or '' when the holder's command reports no progress. */
export function describeProgress(holder: Holder | null): string {
  const progress = holder?.progress;
  if (!progress) return '';
  const what = progress.phase || progress.command;
  if (progress.done === null) return `(${what})`;
  if (progress.total !== null && progress.total > 0) {
    return `(${what}, ${Math.min(100, Math.floor((progress.done / progress.total) * 100))} %)`;
  }
  return `(${what}, ${progress.done} done)`;
}

/**
 * What the holder runs, to follow its name: " for 3m12s: <statement> (<progress>)" while a statement runs (the
 * statement cut to `maxQuery` characters), " idle for 5.0s" (or its other state) between statements, '' when
 * pg_stat_activity does not show it (another role's session, without pg_read_all_stats), or the session is
 * only taking the lock.
 */
export function describeActivity(holder: Holder | null, maxQuery = 60, now = Date.now()): string {
  if (!holder?.state || holder.query === null || isLockAttempt(holder.query)) return '';
  const since = holder.queryStart ? ` for ${formatMs(Math.max(0, now - holder.queryStart.getTime()))}` : '';
  if (holder.state !== 'active') return holder.state === 'idle' ? '' : `, ${holder.state}${since}`;
  const progress = describeProgress(holder);
  return `${since}: ${oneLine(holder.query, maxQuery)}${progress ? ` ${progress}` : ''}`;
}

/**
 * {@link describeActivity} in at most `room` characters: the statement cut to what is left after the rest, left
 * out when fewer than 12 characters of it would show, and nothing at all when even that does not fit.
 */
export function describeActivityToFit(holder: Holder | null, room: number, now = Date.now()): string {
  const bare = describeActivity(holder, 0, now);
  const full = describeActivity(holder, Math.min(60, Math.max(0, room - bare.length + 1)), now);
  if (full.length <= room && room - bare.length + 1 >= 12) return full;
  if (!holder?.query || holder.state !== 'active') return bare.length <= room ? bare : '';
  // The statement left out: " for 3m12s (building index: scanning table, 61 %)".
  const progress = describeProgress(holder);
  const since = bare.slice(0, bare.indexOf(':'));
  const short = `${since}${progress ? ` ${progress}` : ''}`;
  return short.length <= room ? short : since.length <= room ? since : '';
}

/**
 * Whose statement to show for a holding: the holder's while it runs one, else its work's (a `run` command's
 * connection) — `who` then names it (", its work (backend pid 4300)"); undefined when neither runs anything.
 */
export function busySession(holder: Holder | null, work: Holder[] = []): { session: Holder; who: string } | undefined {
  if (holder?.state === 'active' && describeActivity(holder)) return { session: holder, who: '' };
  const busy = work.find((session) => session.state === 'active' && describeActivity(session));
  return busy ? { session: busy, who: `, its work (backend pid ${busy.pid})` } : undefined;
}
