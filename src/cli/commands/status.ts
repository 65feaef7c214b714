import type { Command } from 'commander';
import { describeKey } from '../../key.js';
import { isLockAttempt } from '../../sql/waiters.js';
import { findMigrationLocks, getLockStatus, type Holder, type LockStatus } from '../../status.js';
import { formatMs } from '../../time.js';
import { describeActivity, describeProgress } from '../activity.js';
import { announceTarget, clientConfig, createContext, databaseUrl } from '../context.js';
import { ago, describeSession, holderProcess } from '../locking.js';
import type { Output } from '../output.js';
import { visibilityNote } from '../privileges.js';

export function registerStatus(program: Command, out: Output): Command {
  return program
    .command('status')
    .summary('show who holds the lock and who waits for it')
    .description(
      "Print LOCKED or UNLOCKED, the session holding the lock (pid, application_name, client address, since when, current query), the sessions waiting for it, and the work running under the holding's tag. Without --key or --name, also every other migration lock held here: node-pg-migrate's, kysely's and Prisma's own keys, and any key held or waited for through this tool. Exit 0 either way.",
    )
    .option(
      '--json',
      'print getLockStatus() as JSON (key as a string, dates as ISO 8601); without --key or --name, with `others`: the other migration locks held',
    )
    .addHelpText(
      'after',
      `
Examples:
  $ pg-migration-lock status
  $ pg-migration-lock status --name billing
  $ pg-migration-lock status --json | jq .holder.pid`,
    )
    .action(async (flags: { json?: boolean }, command: Command) => {
      const ctx = createContext(command, out);
      const connection = clientConfig(databaseUrl(command, out, true));
      announceTarget(out);
      const status = await getLockStatus(connection, ctx.key);
      // No key asked for: the default, and whatever other migration lock is held (a migrator's own key, a --name).
      const others = ctx.keyFlag ? undefined : await otherLocks(connection, ctx.key);
      if (flags.json) out.json(others ? { ...status, others } : status);
      else {
        const shown = (others ?? []).map((other) =>
          formatStatus(out, other, describeKey(other.key), keyFlagOf(other.key)),
        );
        // What is held comes first: a free default key below a held one, not above it, when nothing asked for it.
        const mine = formatStatus(out, status, ctx.keyLabel);
        if (status.locked || status.work.length > 0) shown.unshift(mine);
        else shown.push(mine);
        out.data(shown.join('\n\n'));
      }
      if (status.standby) {
        out.warn(
          "This server is a read-only standby: its locks are its own sessions', not the primary's, and pg-migration-lock refuses to lock here. Look at the primary to see a deploy.",
        );
      }
      const note = await visibilityNote(connection, status);
      if (note) out.warn(note);
    });
}

/** The other migration locks of this database that are held, waited for, or have tagged work running. */
async function otherLocks(connection: Parameters<typeof findMigrationLocks>[0], key: bigint): Promise<LockStatus[]> {
  return (await findMigrationLocks(connection)).filter(
    (found) => found.key !== key && (found.locked || found.waiters.length > 0 || found.work.length > 0),
  );
}

/** The flag that shows (or releases) this key. */
export const keyFlagOf = (key: bigint) => ` --key ${key}`;

export function formatStatus(out: Output, status: LockStatus, keyLabel: string, flag?: string): string {
  const c = out.out;
  const lines = [
    `${status.locked ? c.bold(c.red('LOCKED')) : c.bold(c.green('UNLOCKED'))}  migration lock ${keyLabel}${flag ? c.dim(`  (pg-migration-lock status${flag})`) : ''}`,
  ];
  if (status.holder) lines.push(...formatHolder(out, status.holder));
  if (status.work.length > 0) {
    const whose = status.holder ? "the holding's work" : "an earlier holding's work, still running";
    lines.push(`  ${'work'.padEnd(LABEL)}${whose}:`);
    for (const session of status.work) {
      const forged =
        session.canMigrate === false
          ? c.dim(" (not a holding's work: its role cannot change this database, so fencing leaves it alone)")
          : '';
      const activity = session.state === 'active' ? describeActivity(session) : '';
      lines.push(`    ${describeSession(session)}${session.state ? `, ${session.state}` : ''}${activity}${forged}`);
    }
  }
  lines.push(`  ${'waiters'.padEnd(LABEL)}${status.waiters.length === 0 ? c.dim('none') : status.waiters.length}`);
  for (const waiter of status.waiters) {
    const waited = waiter.waitingMs === undefined ? '' : `, waiting ${formatMs(waiter.waitingMs)}`;
    lines.push(`    ${describeSession(waiter)}${waited}`);
  }
  return lines.join('\n');
}

const LABEL = 'application  '.length;

export function formatHolder(out: Output, holder: Holder): string[] {
  const c = out.out;
  const row = (label: string, value: string) => `  ${label.padEnd(LABEL)}${value}`;
  const rows = [
    row('holder', c.bold(`pid ${holder.pid}`)),
    row('application', holder.applicationName || c.dim('(none)')),
  ];
  const owner = holderProcess(holder.applicationName);
  if (owner) rows.push(row('process', `pid ${owner.pid} on ${owner.host}`));
  rows.push(row('client', holder.clientAddr ?? c.dim('local socket (or not visible to this role)')));
  if (holder.backendStart) {
    rows.push(row('connected', `${holder.backendStart.toISOString()} (${ago(holder.backendStart)})`));
  }
  if (holder.state) rows.push(row('state', holder.state));
  // For an idle session pg_stat_activity shows the last query, often the lock acquisition itself.
  if (holder.query)
    rows.push(row(holder.state === 'active' ? 'query' : 'last query', describeQuery(out, holder.query)));
  if (holder.queryStart && holder.query && !isLockAttempt(holder.query)) {
    rows.push(
      row(
        holder.state === 'active' ? 'since' : 'ran at',
        `${holder.queryStart.toISOString()} (${ago(holder.queryStart)})`,
      ),
    );
  }
  if (holder.progress) {
    const { command, done, total } = holder.progress;
    const counts = done !== null && total !== null ? ` [${done} of ${total}]` : '';
    rows.push(row('progress', `${command} ${describeProgress(holder)}${counts}`));
  }
  return rows;
}

/** A query on one line: whitespace collapsed, long ones cut; our own lock acquisition named as such. */
function describeQuery(out: Output, query: string): string {
  if (isLockAttempt(query)) {
    return out.out.dim('taking this lock (pg_try_advisory_lock)');
  }
  const text = query.replace(/\s+/g, ' ').trim();
  return text.length > 160 ? `${text.slice(0, 159)}…` : text;
}
