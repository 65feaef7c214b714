import { type Command, Option } from 'commander';
import { describeHolder } from '../errors.js';
import type { MigrationLockOptions } from '../lock/options.js';
import type { Logger } from '../logger.js';
import type { Holder } from '../status.js';
import { formatMs } from '../time.js';
import { busySession, describeActivity, describeActivityToFit } from './activity.js';
import { type Context, parseDurationArg } from './context.js';
import { InterruptedError, ParentGoneError } from './errors.js';
import { type LockTimeoutFlags, lockTimeoutOptions } from './lock-timeout.js';
import type { Output } from './output.js';

export interface LockFlags extends LockTimeoutFlags {
  /** Milliseconds, parsed from a duration. */
  timeout?: number;
  wait: boolean;
}

export function addLockFlags(command: Command): Command {
  return command
    .addOption(
      new Option(
        '--timeout <duration>',
        'give up waiting for the lock after this long (exit 75), e.g. 30s, 5m',
      ).argParser(parseDurationArg),
    )
    .option('--no-wait', 'do not wait: exit 75 at once if another process holds the lock');
}

/** "backend pid 4242 (application_name app) from 10.0.0.5, connected 3m10s ago": how the CLI names a session. */
export function describeSession(holder: Holder | null): string {
  if (!holder) return 'another session (not visible to this role)';
  let text = describeHolder(holder);
  if (holder.clientAddr) text += ` from ${holder.clientAddr}`;
  if (holder.backendStart) text += `, connected ${ago(holder.backendStart)}`;
  return text;
}

/**
 * ", running for 3m12s: CREATE INDEX … (building index: scanning table, 61 %)" after a holder's description (its
 * work's statement when the holder itself is idle: a `run` command's), or its state (", idle in transaction for 5s").
 */
function runningOf(holder: Holder | null, work: Holder[]): string {
  const busy = busySession(holder, work);
  if (busy) return `${busy.who}, running${describeActivity(busy.session)}`;
  return describeActivity(holder);
}

/**
 * The holder in few characters: a pg-migration-lock holder's OS process and host, from its tag or name
 * (`pid 3651 on web-1 (backend pid 3662)`), else its backend pid and application_name.
 */
export function describeHolderShort(holder: Holder | null): string {
  const owner = holderProcess(holder?.applicationName);
  return holder && owner ? `pid ${owner.pid} on ${owner.host} (backend pid ${holder.pid})` : describeHolder(holder);
}

/**
 * The OS process behind a holder, when its application_name says it (a pg-migration-lock session): a holding's
 * tag `pg-migration-lock:<key>:<token>.<pid>@<host>`, or a session's name `pg-migration-lock:<host>:<pid>`.
 * (PostgreSQL keeps 63 bytes of a name: a host cut short is shown as it is.)
 */
export function holderProcess(applicationName: string | null | undefined): { pid: number; host: string } | undefined {
  if (!applicationName) return undefined;
  const tagged = /^pg-migration-lock:-?\d+:[0-9a-z]+\.(\d+)@(.+)$/.exec(applicationName);
  if (tagged) return { pid: Number(tagged[1]), host: tagged[2]! };
  const named = /^pg-migration-lock:(.+):(\d+)$/.exec(applicationName);
  return named ? { pid: Number(named[2]), host: named[1]! } : undefined;
}

export function ago(date: Date): string {
  return `${formatMs(Math.max(0, Date.now() - date.getTime()))} ago`;
}

/**
 * The options for `withMigrationLock` (or an adapter's `lock`) that make the wait visible: a live line
 * on a terminal, a plain line every 10 s otherwise (CI logs), library messages through the CLI's output.
 * SIGINT/SIGTERM while waiting abort the wait; `onSignalWhileLocked` decides what they do after.
 */
export function lockOptions(
  ctx: Context,
  flags: LockFlags,
  onSignalWhileLocked: (signal: NodeJS.Signals, why: StopReason) => void,
): { options: MigrationLockOptions; dispose: () => void } {
  const { out, keyLabel } = ctx;
  const timeoutMs = flags.timeout;
  const abort = new AbortController();
  let locked = false;
  let waitStart = 0;
  let holder: Holder | null = null;
  let work: Holder[] = [];
  let ticker: NodeJS.Timeout | undefined;

  const render = () => {
    const waited = Math.floor((performance.now() - waitStart) / 1000);
    const clock = waited < 60 ? `${waited}s` : `${Math.floor(waited / 60)}m${String(waited % 60).padStart(2, '0')}s`;
    const limit = timeoutMs === undefined ? '' : ` of ${formatMs(timeoutMs)}`;
    // The holder first: the line is cut to the terminal's width, and who holds the lock is what matters; then
    // what it runs, its statement cut so that the waiting clock still shows.
    const busy = busySession(holder, work);
    const who = `${describeHolderShort(holder)}${busy?.who ?? ''}`;
    const tail = `: waiting ${clock}${limit} for the migration lock`;
    const room = (process.stderr.columns || 80) - 1 - `⏳ Held by ${who}`.length - tail.length;
    const activity = describeActivityToFit(busy?.session ?? holder, room);
    out.status(
      `${out.err.yellow('⏳')} Held by ${activity || !busy ? who : describeHolderShort(holder)}${activity}${tail}`,
    );
  };

  const stopTicker = () => {
    clearInterval(ticker);
    ticker = undefined;
    out.clearStatus();
  };

  let interrupted: { signal: NodeJS.Signals; why: StopReason } | undefined;
  const stop = (signal: NodeJS.Signals, why: StopReason) => {
    if (locked) return onSignalWhileLocked(signal, why);
    interrupted ??= { signal, why };
    abort.abort(why === 'parent-gone' ? new ParentGoneError() : new InterruptedError(signal));
  };
  const disposeSignals = trapSignals((signal) => stop(signal, 'signal'));
  // Nobody would forward a signal any more (an npx wrapper or CI runner SIGKILLed, a script that ended): a wait
  // stops as if sent SIGTERM; a migration or CMD already under way finishes, and the CLI exits with its result.
  const disposeWatch = watchParent(() => {
    const gone = `The process that started pg-migration-lock is gone (now a child of pid ${process.ppid})`;
    if (!locked) {
      out.warn(`${gone}: stopping the wait for the lock`);
      stop('SIGTERM', 'parent-gone');
      return;
    }
    out.warn(`${gone}: letting what runs under the lock finish, then exiting with its result`);
    process.once('exit', (code) => out.warn(`${gone}: exiting with code ${code}`));
  });

  const options: MigrationLockOptions = {
    wait: flags.wait,
    timeoutMs,
    ...lockTimeoutOptions(flags),
    signal: abort.signal,
    // On a terminal the holder shown in the live line is refreshed every 2 s; CI logs get a line every 10 s.
    reportEveryMs: out.live ? 2000 : 10_000,
    logger: cliLogger(out),
    keyLabel,
    hooks: {
      onWaiting(info) {
        holder = info.holder;
        work = info.work;
        if (!out.live) {
          out.info(
            `Waiting for migration lock ${keyLabel}, held by ${describeSession(info.holder)}${runningOf(info.holder, info.work)} (waited ${formatMs(info.waitedMs)}${timeoutMs === undefined ? '' : ` of ${formatMs(timeoutMs)}`})`,
          );
          return;
        }
        if (!ticker) {
          waitStart = performance.now() - info.waitedMs;
          ticker = setInterval(render, 1000);
        }
        render();
      },
      onAcquired(info) {
        locked = true;
        stopTicker();
        const waited = info.waitedMs > 0 ? ` after waiting ${formatMs(info.waitedMs)}` : '';
        out.info(`Acquired migration lock ${keyLabel}${waited} (session pid ${info.pid})`, {
          event: 'lock.acquired',
          pid: info.pid,
          waitedMs: Math.round(info.waitedMs),
        });
        // A signal that came while connecting (before the wait could be aborted) still counts.
        if (interrupted) onSignalWhileLocked(interrupted.signal, interrupted.why);
      },
      onReleased(info) {
        out.info(`Released migration lock ${keyLabel} (held ${formatMs(info.heldMs)})`, {
          event: 'lock.released',
          pid: info.pid,
          heldMs: Math.round(info.heldMs),
        });
      },
    },
  };
  return {
    options,
    dispose: () => {
      stopTicker();
      disposeSignals();
      disposeWatch();
    },
  };
}

/** Routes library messages through the CLI's output (stderr; --quiet keeps warnings and errors). */
export function cliLogger(out: Output): Logger {
  return {
    info: (message) => out.info(message),
    warn: (message) => out.warn(message),
    error: (message) => out.error(message),
  };
}

/** Why the CLI is asked to stop: a signal, or the process that started it went away. */
export type StopReason = 'signal' | 'parent-gone';

/** How often the parent is checked: it is gone within half a second, well inside the SPEC's 15 s. */
const PARENT_POLL_MS = 500;

/**
 * Calls `onGone` once when the process that started this one exits (the CLI is then re-parented, to init
 * or a subreaper, so `process.ppid` changes). Polling is the portable way: no signal tells a child that
 * its parent died (Linux's PR_SET_PDEATHSIG is not reachable from Node), and stdin may be a terminal or
 * /dev/null. A parent that is pid 1 already (`exec` in a container) is the container itself: not watched.
 */
export function watchParent(onGone: () => void): () => void {
  const parent = process.ppid;
  if (parent <= 1) return () => {};
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    onGone();
  }, PARENT_POLL_MS);
  timer.unref();
  return () => clearInterval(timer);
}

/** Handles SIGINT and SIGTERM instead of dying at once; returns the function that restores the default. */
export function trapSignals(handler: (signal: NodeJS.Signals) => void): () => void {
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  for (const signal of signals) process.on(signal, handler);
  return () => {
    for (const signal of signals) process.off(signal, handler);
  };
}
