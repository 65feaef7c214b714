// How a fleet run shows on the command line: its progress (a live line, or a line per target) and its report.
import type { FleetProgressEvent, FleetReport, FleetResult } from '../fleet/types.js';
import { formatMs } from '../time.js';
import { describeFailure, sayFailure } from './database-error.js';
import type { Output } from './output.js';

/**
 * A target's failure in one line: the migration (when the migrator named it), the database's message and SQLSTATE
 * code, and the statement (all its lines, cut), wherever the migrator put them (drizzle's "Failed query: …" cause).
 */
export function failure(error: unknown): string {
  const described = describeFailure(error);
  return `${described.migration ? `migration ${described.migration}: ` : ''}${sayFailure(described)}`;
}

/** A failure in `--json` results: `{ message, code, migration, statement }` (null when not known). */
export function failureJson(error: unknown): {
  message: string;
  code: string | null;
  migration: string | null;
  statement: string | null;
} {
  const { message, code, migration, statement } = describeFailure(error);
  return { message, code: code ?? null, migration: migration ?? null, statement: statement ?? null };
}

export const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? '' : 's'}`;

/** How a finished target's line says its outcome. */
const SAID: Record<'applied' | 'up-to-date' | 'skipped', (result: FleetResult) => string> = {
  applied: (r) =>
    `applied ${plural((r as { applied: string[] }).applied.length, 'migration')} (${formatMs(r.durationMs)})`,
  'up-to-date': () => 'up to date',
  skipped: () => 'migrated by another run',
};

/** Why a run stopped starting targets, as the summary says it. */
const STOPPED: Record<NonNullable<FleetReport['stoppedBy']>, string> = {
  canary: 'a canary target failed',
  'max-failures': 'more targets failed than --max-failures allows',
  'stop-on-error': '--stop-on-error',
  signal: 'interrupted',
};

/** Progress: a live line (done, failed, running, ETA) on a terminal, else a line per finished target. */
export class Progress {
  readonly #startedAt = performance.now();
  #ticker: NodeJS.Timeout | undefined;
  #last: FleetProgressEvent['counts'] | undefined;

  constructor(readonly out: Output) {
    if (out.live) this.#ticker = setInterval(() => this.#render(), 1000);
  }

  on(event: FleetProgressEvent): void {
    this.#last = event.counts;
    if (event.type === 'finished' && (event.result.status === 'failed' || !this.out.live)) {
      this.#line(event.result);
    }
    this.#render();
  }

  done(): void {
    clearInterval(this.#ticker);
    this.out.clearStatus();
  }

  #line(result: FleetResult): void {
    const { out } = this;
    const name = result.target.name;
    if (result.status === 'failed') {
      out.warn(`${name}: failed after ${formatMs(result.durationMs)}: ${failure(result.error)}`);
    } else if (result.status !== 'not-run') {
      out.info(`${name}: ${SAID[result.status](result)}`);
    }
  }

  #render(): void {
    const counts = this.#last;
    if (!this.out.live || !counts) return;
    const elapsed = performance.now() - this.#startedAt;
    const total = counts.total === undefined ? '' : `/${counts.total}`;
    const failed = counts.failed > 0 ? this.out.err.red(`, ${counts.failed} failed`) : '';
    let eta = '';
    if (counts.total !== undefined && counts.done > 0 && counts.done < counts.total) {
      eta = `, ETA ${formatMs(((counts.total - counts.done) * elapsed) / counts.done)}`;
    }
    this.out.status(
      `⏳ ${counts.done}${total} done${failed}, ${counts.running} running${counts.deferred > 0 ? `, ${counts.deferred} held by another run` : ''}${eta}`,
    );
  }
}

/** The report: a summary (and each failure) on stdout, or the whole report as JSON. */
export function summarize(
  out: Output,
  migrator: string,
  report: FleetReport,
  json: boolean,
  /** A run stopped at once (a second signal): the targets that were running, and how many never started. */
  stopped?: { stopped: string[]; notStarted: number | undefined },
): void {
  const { counts, results } = report;
  if (json) {
    out.json({
      ok: report.ok,
      ...(stopped && { stopped: stopped.stopped, notStarted: stopped.notStarted ?? null }),
      migrator,
      durationMs: Math.round(report.durationMs),
      stoppedBy: report.stoppedBy ?? null,
      ...(report.canary && { canary: report.canary }),
      counts,
      results: results.map((r) => ({
        target: r.target.name,
        database: r.target.database ?? null,
        schema: r.target.schema ?? null,
        status: r.status,
        applied: r.status === 'failed' ? [] : r.applied,
        ...(r.status === 'failed' && { error: failureJson(r.error) }),
        key: r.key,
        durationMs: Math.round(r.durationMs),
      })),
    });
    return;
  }
  const parts = [
    `${counts.applied} applied`,
    `${counts.upToDate} up to date`,
    `${counts.skipped} migrated by another run`,
  ];
  if (counts.failed > 0) parts.push(`${counts.failed} failed`);
  if (counts.notRun > 0) parts.push(`${counts.notRun} not run`);
  const { canary, stoppedBy } = report;
  if (canary) {
    parts.push(`canary ${canary.passed ? 'passed' : 'failed'} (${canary.applied} of ${canary.size} applied)`);
  }
  if (stoppedBy) parts.push(`stopped: ${STOPPED[stoppedBy]}`);
  const mark = report.ok ? out.out.green('✔') : out.out.red('✖');
  const lines = [
    `${mark} ${migrator}: ${plural(results.length, 'target')} in ${formatMs(report.durationMs)}: ${parts.join(', ')}`,
  ];
  for (const r of results) if (r.status === 'failed') lines.push(`  ${r.target.name}: ${failure(r.error)}`);
  if (stopped) {
    const { stopped: names, notStarted } = stopped;
    if (names.length > 0) {
      lines.push(`  stopped while migrating (their open transactions roll back): ${names.join(', ')}`);
    }
    if (notStarted !== undefined && notStarted > 0) lines.push(`  not started: ${plural(notStarted, 'target')}`);
  }
  out.result(lines.join('\n'));
}
