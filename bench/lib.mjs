// Helpers shared by the bench's sections: replica processes, statistics, tables.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The advisory-lock key of the hand-off, server-load and uncontended sections. */
export const BENCH_KEY = 4242n;
export const now = () => process.hrtime.bigint();
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const msBetween = (from, to) => Number(BigInt(to) - BigInt(from)) / 1e6;

const REPLICA = fileURLToPath(new URL('replica.mjs', import.meta.url));

/**
 * Starts one replica process (see replica.mjs). `next(kind)` resolves to its next `ready`, `waiting` or
 * `RESULT` line (a RESULT parsed), and rejects if the process exits first; `send(line)` writes to its
 * stdin; `closed` resolves to `{ code, at }` (at: hrtime when the parent saw it exit).
 */
export function startReplica(args) {
  const child = spawn(process.execPath, [REPLICA, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const queues = { ready: [], waiting: [], RESULT: [] };
  const takers = { ready: [], waiting: [], RESULT: [] };
  let stderr = '';
  let exit;
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  createInterface({ input: child.stdout }).on('line', (line) => {
    const [kind] = line.split(' ', 1);
    if (!queues[kind]) return;
    const value = kind === 'RESULT' ? JSON.parse(line.slice(7)) : kind;
    const taker = takers[kind].shift();
    if (taker) taker.resolve(value);
    else queues[kind].push(value);
  });
  const closed = new Promise((resolve) =>
    child.on('close', (code, signal) => {
      exit = { code, signal, at: now(), stderr };
      for (const list of Object.values(takers)) {
        for (const taker of list.splice(0))
          taker.reject(
            new Error(
              `replica ${args[0]} exited (${code ?? signal}): ${stderr.trim().split('\n').slice(-3).join(' | ')}`,
            ),
          );
      }
      resolve(exit);
    }),
  );
  child.stdin.on('error', () => {}); // a replica that already exited
  return {
    pid: child.pid,
    closed,
    send: (line) => child.stdin.write(`${line}\n`),
    next(kind) {
      if (queues[kind].length) return Promise.resolve(queues[kind].shift());
      if (exit)
        return Promise.reject(
          new Error(
            `replica ${args[0]} exited (${exit.code ?? exit.signal}): ${exit.stderr.trim().split('\n').slice(-3).join(' | ')}`,
          ),
        );
      return new Promise((resolve, reject) => takers[kind].push({ resolve, reject }));
    },
    kill: () => child.kill('SIGKILL'),
  };
}

/** Rejects after `ms` with `what` in the message: every wait of the bench is bounded. */
export function within(ms, promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: still not done after ${ms / 1000} s`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export function median(values) {
  return percentile(values, 50);
}

/** Nearest-rank percentile of unsorted numbers. */
export function percentile(values, p) {
  if (!values.length) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

export const fmtMs = (ms) =>
  Number.isNaN(ms) ? '–' : ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0);
export const fmtS = (ms) => `${(ms / 1000).toFixed(2)} s`;

/** A Markdown table with padded columns. */
export function table(headers, rows) {
  const cells = [headers, ...rows].map((row) => row.map(String));
  const widths = headers.map((_, i) => Math.max(...cells.map((row) => row[i].length)));
  const line = (row) => `| ${row.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [line(cells[0]), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.slice(1).map(line)].join(
    '\n',
  );
}
