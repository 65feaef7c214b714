// What a backend is doing, from the `pg_stat_progress_*` views: CREATE INDEX, VACUUM, ANALYZE, CLUSTER (and VACUUM
// FULL), COPY. The views' columns change across PostgreSQL 13–18, so each row is read through to_jsonb; COPY's view
// only exists from 14 on, so it is read through the function behind it, asked for 'COPY' only where it knows it.

/** A command's progress, as `pg_stat_progress_*` reports it. */
export interface Progress {
  /** e.g. 'CREATE INDEX CONCURRENTLY', 'VACUUM', 'ANALYZE', 'CLUSTER', 'VACUUM FULL', 'COPY FROM'. */
  command: string;
  /** The view's phase, e.g. 'building index: scanning table' (for COPY: its type, e.g. 'FILE', 'PIPE'). */
  phase: string;
  /** Units done (blocks, or tuples where blocks are not counted; bytes for COPY), when reported. */
  done: number | null;
  /** Units in all, when known. */
  total: number | null;
}

const n = (field: string) => `(j ->> '${field}')::float8`;
// Blocks when the phase counts them, else tuples (CREATE INDEX and CLUSTER count one or the other, per phase).
const blocksOrTuples = (blocks: string, tuples: string) => `
  CASE WHEN coalesce(${n(`${blocks}_total`)}, 0) > 0 THEN ${n(`${blocks}_done`)} ELSE ${n(`${tuples}_done`)} END,
  CASE WHEN coalesce(${n(`${blocks}_total`)}, 0) > 0 THEN ${n(`${blocks}_total`)} ELSE ${n(`${tuples}_total`)} END`;

/**
 * A CTE body: `pid, command, phase, done, total` for every backend some `pg_stat_progress_*` view lists.
 * COPY (14+): param1 bytes processed, param2 bytes total (0: unknown), param5 1 = FROM, 2 = TO, param6 the type (15+).
 */
export const progressSql = `
  SELECT x.pid, j ->> 'command', j ->> 'phase', ${blocksOrTuples('blocks', 'tuples')}
  FROM pg_stat_progress_create_index x, to_jsonb(x) j
  UNION ALL
  SELECT x.pid, 'VACUUM', j ->> 'phase', ${n('heap_blks_scanned')}, ${n('heap_blks_total')}
  FROM pg_stat_progress_vacuum x, to_jsonb(x) j
  UNION ALL
  SELECT x.pid, 'ANALYZE', j ->> 'phase', ${n('sample_blks_scanned')}, ${n('sample_blks_total')}
  FROM pg_stat_progress_analyze x, to_jsonb(x) j
  UNION ALL
  SELECT x.pid, j ->> 'command', j ->> 'phase',
    CASE WHEN coalesce(${n('heap_blks_total')}, 0) > 0 THEN ${n('heap_blks_scanned')} ELSE ${n('heap_tuples_scanned')} END,
    CASE WHEN coalesce(${n('heap_blks_total')}, 0) > 0 THEN ${n('heap_blks_total')} END
  FROM pg_stat_progress_cluster x, to_jsonb(x) j
  UNION ALL
  SELECT s.pid, CASE s.param5 WHEN 1 THEN 'COPY FROM' WHEN 2 THEN 'COPY TO' ELSE 'COPY' END,
    CASE s.param6 WHEN 1 THEN 'FILE' WHEN 2 THEN 'PROGRAM' WHEN 3 THEN 'PIPE' WHEN 4 THEN 'CALLBACK' ELSE '' END,
    s.param1::float8, nullif(s.param2, 0)::float8
  FROM pg_stat_get_progress_info(CASE WHEN current_setting('server_version_num')::int >= 140000 THEN 'COPY' ELSE 'VACUUM' END) s
  WHERE current_setting('server_version_num')::int >= 140000`;

/** The row's progress columns (`progress_command`, …), decoded; undefined when the backend is in no view. */
export function progressOf(row: {
  progress_command: string | null;
  progress_phase: string | null;
  progress_done: number | null;
  progress_total: number | null;
}): Progress | undefined {
  if (row.progress_command === null) return undefined;
  return {
    command: row.progress_command,
    phase: row.progress_phase ?? '',
    done: row.progress_done,
    total: row.progress_total,
  };
}
