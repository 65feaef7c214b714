// Batched checks: the schema targets of one database found up to date a few hundred at a time, on the run's
// pool, before any of them gets a migrator (or a connection) of its own.
import type pg from 'pg';
import { pgQuery } from '../driver/pg.js';
import { errorMessage, type Logger } from '../logger.js';
import { appliedIn, tablesIn } from '../sql/fleet-check.js';
import { FleetPools } from './pools.js';
import type { FleetTarget } from './target.js';
import type { FleetAppliedRule, FleetMigrator } from './types.js';

/**
 * Schemas per batch: a catalog query, then the tables read in statements of 50 (see appliedIn). Large enough that
 * 10,000 schemas take a few dozen batches; smaller ones (100) or more of them in flight (3) measured no faster.
 */
export const BATCH_SCHEMAS = 250;

/** Batches of one database being checked at once: one being read while the run works through the one before. */
const AHEAD = 2;

interface Waiting {
  /** The schema targets of this database not yet in a batch, in the order they were planned. */
  unbatched: Set<FleetTarget>;
  inFlight: number;
}

/**
 * Which schema targets are up to date, asked a batch at a time: `upToDate(target)` resolves to true only when
 * the migrator's own rule ({@link FleetAppliedRule}) finds the schema up to date; false (go to the migrator)
 * for anything else: something pending, a table missing, a batch that failed, a migrator without a rule.
 */
export class FleetChecks {
  readonly #verdicts = new Map<FleetTarget, Promise<boolean>>();
  readonly #waiting = new Map<pg.Pool, Waiting>();
  #rule: Promise<FleetAppliedRule | undefined> | undefined;

  constructor(
    readonly migrator: FleetMigrator,
    readonly pools: FleetPools,
    readonly logger: Logger,
  ) {}

  /** Adds targets to check (in order: a batch is the next targets of one database not yet checked). */
  plan(targets: Iterable<FleetTarget>): void {
    if (!this.migrator.appliedRule) return;
    for (const target of targets) {
      const pool = this.pools.for(target);
      if (!pool) continue;
      const waiting = this.#waiting.get(pool) ?? { unbatched: new Set<FleetTarget>(), inFlight: 0 };
      this.#waiting.set(pool, waiting);
      waiting.unbatched.add(target);
    }
  }

  /** Whether `target` (planned) is up to date for certain; asked once per target. */
  async upToDate(target: FleetTarget): Promise<boolean> {
    const pool = this.pools.for(target);
    const waiting = pool && this.#waiting.get(pool);
    if (!pool || !waiting) return false;
    if (waiting.unbatched.has(target)) this.#batch(pool, waiting, target);
    // The next batch is read while the run works through this one.
    if (waiting.inFlight < AHEAD && waiting.unbatched.size > 0) this.#batch(pool, waiting);
    const verdict = this.#verdicts.get(target);
    this.#verdicts.delete(target);
    return (await verdict) ?? false;
  }

  /** Starts a batch: `first` (when given) and the next targets of that database not yet in one. */
  #batch(pool: pg.Pool, waiting: Waiting, first?: FleetTarget): void {
    const targets: FleetTarget[] = [];
    if (first) {
      waiting.unbatched.delete(first);
      targets.push(first);
    }
    for (const target of waiting.unbatched) {
      if (targets.length >= BATCH_SCHEMAS) break;
      waiting.unbatched.delete(target);
      targets.push(target);
    }
    waiting.inFlight++;
    const verdicts = this.#check(pool, targets).finally(() => waiting.inFlight--);
    targets.forEach((target, i) => {
      this.#verdicts.set(
        target,
        verdicts.then((all) => all[i] === true),
      );
    });
  }

  async #check(pool: pg.Pool, targets: FleetTarget[]): Promise<boolean[]> {
    try {
      this.#rule ??= this.#loadRule(targets[0]!);
      const rule = await this.#rule;
      if (!rule) return [];
      return await checkBatch(pool, rule, targets);
    } catch (error) {
      // The migrators decide these targets one by one, as without batches.
      this.logger.debug?.(`Fleet of ${this.migrator.name}: a batched check failed: ${errorMessage(error)}`);
      return [];
    }
  }

  async #loadRule(target: FleetTarget): Promise<FleetAppliedRule | undefined> {
    try {
      return await this.migrator.appliedRule!(target);
    } catch (error) {
      this.logger.debug?.(
        `Fleet of ${this.migrator.name}: no batched checks (its migrations could not be listed: ${errorMessage(error)})`,
      );
      return undefined;
    }
  }
}

/** One batch: which of the targets' schemas hold every table the rule reads, what those hold, and the rule's verdict. */
async function checkBatch(pool: pg.Pool, rule: FleetAppliedRule, targets: FleetTarget[]): Promise<boolean[]> {
  const client = await pool.connect();
  try {
    const query = pgQuery(client);
    const schemas = targets.map((target) => target.schema!);
    const present = await tablesIn(query, [...new Set(schemas)], [...new Set(rule.reads.map((r) => r.table))]);
    // Only schemas with every required table are read; the others go to the migrator (it creates its tables).
    const decidable = schemas.map((schema) =>
      rule.reads.every((read) => read.optional || present.get(schema)?.has(read.table)),
    );
    const asks = schemas.flatMap((schema, i) =>
      decidable[i]
        ? rule.reads.filter((read) => present.get(schema)?.has(read.table)).map((read) => ({ schema, read }))
        : [],
    );
    const values = await appliedIn(query, asks);
    let next = 0;
    return schemas.map((schema, i) => {
      if (!decidable[i]) return false;
      const read = rule.reads.map((r) => (present.get(schema)?.has(r.table) ? values[next++] : undefined));
      return rule.upToDate(read);
    });
  } finally {
    client.release();
  }
}

/**
 * For a dry run (`pending --each-schema`): which of `targets` are up to date for certain, by the batched checks on
 * pools of its own (at most `concurrency` connections), ended before it resolves. The others are for the
 * migrator's own `pending`.
 */
export async function upToDateTargets(
  migrator: FleetMigrator,
  targets: readonly FleetTarget[],
  concurrency: number,
  logger: Logger,
): Promise<boolean[]> {
  if (!migrator.appliedRule) return targets.map(() => false);
  const pools = new FleetPools(concurrency, undefined);
  try {
    const checks = new FleetChecks(migrator, pools, logger);
    checks.plan(targets);
    return await Promise.all(targets.map((target) => checks.upToDate(target)));
  } finally {
    await pools.end();
  }
}
