// The shapes of a fleet run: the migrator it drives, its options, its progress events and its report.
import type pg from 'pg';
import type { LockKeyInput } from '../key.js';
import type { KeyedLockOptions } from '../keyed.js';
import type { MigrationLockOptions } from '../lock/options.js';
import type { Logger } from '../logger.js';
import type { AppliedRead } from '../sql/fleet-check.js';
import type { CanaryOutcome, FleetStopReason, MaxFailures } from './rollout.js';
import type { FleetTarget } from './target.js';

/** The lock options a fleet hands its migrator for one target: the key (settled), plus every option of `withMigrationLock`. */
export interface FleetLockOptions extends KeyedLockOptions {
  key: bigint;
}

/**
 * One migrator, as a fleet drives it: each adapter's `fleet(config)` makes one (`pg-migration-lock/knex`, …).
 * A migrator of your own fits too: `run` takes the lock with `withMigrationLock(pool ?? target.connection, lock.key, fn, lock)`.
 */
export interface FleetMigrator {
  /** Names the migrator in default keys and messages: `knex`, `node-pg-migrate`, `drizzle`, `kysely`, `typeorm`. */
  readonly name: string;
  /**
   * The key a single run of this migrator takes on a database: a database target's default key.
   * @default the migrator's default from the key table (`DEFAULT_LOCK_KEY` for a name it does not know)
   */
  readonly key?: LockKeyInput;
  /** The names of the migrations not yet applied to `target`, without taking the lock. */
  pending(target: FleetTarget): Promise<string[]>;
  /**
   * Migrates `target` under the lock `lock` describes (pass every option on: the fleet sets `wait`, `signal`
   * and `logger` there), and resolves to the names of the migrations it applied (`[]` when none). It checks
   * what is pending first, on the session it locks with, and takes no lock when nothing is: the adapters' do.
   * With `wait: false` and the lock held elsewhere, it rejects with `MigrationLockBusyError`.
   *
   * `pool`, for a schema target, is a `pg.Pool` on the target's database that the run shares among the schemas
   * of that database (each checkout is reset: role, settings, temporary tables): a migrator that can lock and
   * migrate on a connection of it opens none of its own (it must not end it). Undefined for a database target.
   */
  run(target: FleetTarget, lock: FleetLockOptions, pool?: pg.Pool): Promise<string[]>;
  /**
   * Optional: what the migrator's own pending check compares, so that a fleet checks the schema targets of one
   * database in batches (a few statements for many schemas) and sends only those it cannot find up to date to
   * `run`. Asked once per run, with the first schema target (the migration list is read then); undefined (or a
   * rejection) turns batching off for the run.
   */
  appliedRule?(target: FleetTarget): Promise<FleetAppliedRule | undefined>;
}

/** What "up to date" means to a migrator, in the tables it keeps in each schema (see `FleetMigrator.appliedRule`). */
export interface FleetAppliedRule {
  /** The tables read in each schema; a missing one makes the schema undecided (it goes to `run`) unless `optional`. */
  reads: readonly (AppliedRead & { optional?: boolean })[];
  /**
   * Whether a schema whose tables hold `values` (one per read, in the read's order; undefined for a missing
   * optional table) is up to date as the migrator would find it. True only when certain: anything else
   * (something pending, rows the migrator would reject) goes to `run`, which decides as always.
   */
  upToDate(values: readonly (readonly (string | null)[] | undefined)[]): boolean;
}

/** How a target ended. */
export type FleetStatus = 'applied' | 'up-to-date' | 'skipped' | 'failed' | 'not-run';

interface ResultBase {
  target: FleetTarget;
  /** The lock key the target was migrated under. */
  key: bigint;
  /** Time spent on this target (its tries, not the time it sat deferred), in milliseconds. */
  durationMs: number;
}

/**
 * One target's outcome:
 * - `applied`: this run applied `applied` (in order) under the target's lock;
 * - `up-to-date`: nothing was pending (no lock was taken);
 * - `skipped`: another run held the target's lock when this one came to it, and left nothing pending;
 * - `failed`: `error` is the migrator's (or the lock's) error; what the migrator applied before it failed is in
 *   its own table;
 * - `not-run`: the fleet stopped (`stopOnError`, `signal`) before the target ran.
 */
export type FleetResult =
  | (ResultBase & { status: 'applied'; applied: string[] })
  | (ResultBase & { status: 'up-to-date' | 'skipped' | 'not-run'; applied: [] })
  | (ResultBase & { status: 'failed'; error: unknown });

/** Where a fleet run stands. */
export interface FleetCounts {
  /** How many targets there are: known for an array, for an iterable once read to the end (one target ahead). */
  total: number | undefined;
  /** Targets finished, whatever their status. */
  done: number;
  /** Targets being migrated, checked or waited for right now. */
  running: number;
  /** Targets another run held when this one came to them, to be tried again after the others. */
  deferred: number;
  applied: number;
  upToDate: number;
  skipped: number;
  failed: number;
  notRun: number;
}

/**
 * What `onProgress` receives, umzug-style:
 * - `started`: a target's first try begins;
 * - `deferred`: another run holds its lock: it is tried again once no untried target is left;
 * - `resumed`: a deferred target is tried again (waiting for the lock if it is still held);
 * - `finished`: the target has its `result`.
 */
export type FleetProgressEvent =
  | { type: 'started' | 'deferred' | 'resumed'; target: FleetTarget; counts: FleetCounts }
  | { type: 'finished'; target: FleetTarget; result: FleetResult; counts: FleetCounts };

/** The lock options a fleet passes through to every target's lock (it sets `key`, `wait`, `signal` and `logger`). */
export type FleetTargetLockOptions = Pick<
  MigrationLockOptions,
  'timeoutMs' | 'reportEveryMs' | 'pollIntervalMs' | 'applicationName' | 'hooks'
>;

export interface MigrateEachOptions<M extends FleetMigrator = FleetMigrator> {
  /**
   * How many targets are migrated (or checked, or waited for) at once: each takes one connection, plus what the
   * migrator opens.
   * @default 4
   */
  concurrency?: number;
  /**
   * The lock key of a target.
   * @default fleetKey(migrator, target.schema): the migrator's own key on a database target, one key per schema
   *   and migrator on a schema target
   * @example { keyOf: (target) => lockKey(`billing:${target.schema}`) }
   */
  keyOf?: (target: FleetTarget, migrator: M) => LockKeyInput;
  /** Called at each step of each target; a callback that throws is logged and never fails the run. */
  onProgress?: (event: FleetProgressEvent) => void;
  /**
   * After a failure, start no further target; the ones running finish, the rest end as `not-run`.
   * @default false: every target is tried, a failure does not stop the others
   */
  stopOnError?: boolean;
  /**
   * A staged rollout: the first `canary` targets that have something to apply migrate alone (at most that many
   * at once, no other target starting meanwhile); once they all applied, the rest follow at full concurrency.
   * A failure among them stops the run: no further target starts, the rest end `not-run` (run again after the
   * fix: what is done is `up-to-date`). Targets found up to date pass meanwhile and do not count.
   * @default 0: no canary
   */
  canary?: number;
  /**
   * A failure budget: once more targets than this have failed, start no further target (the ones running
   * finish, the rest end `not-run`). A number of targets, or a share of the fleet (`'5%'`: of the targets
   * read so far, for an iterable). `stopOnError` is `maxFailures: 0`.
   * @default unlimited
   */
  maxFailures?: MaxFailures;
  /**
   * Stop starting targets and stop waiting when this signal aborts; migrations already running finish. The
   * targets left end as `not-run`, and the call resolves as usual.
   */
  signal?: AbortSignal;
  /**
   * Where the fleet and the locks report (a failure at warn, each step at debug): `console`, a pino logger, or
   * `null` for silence.
   * @default console, each line prefixed with `[pg-migration-lock]`
   */
  logger?: Logger | null;
  /** Options for every target's lock, e.g. `{ timeoutMs: 10 * 60_000 }` to bound waiting for another run. */
  lock?: FleetTargetLockOptions;
}

/** What `migrateEach` resolves to. */
export interface FleetReport {
  /** One result per target read, in the order the targets came. */
  results: FleetResult[];
  counts: FleetCounts;
  /** Every target read is migrated: none failed, none left `not-run`. */
  ok: boolean;
  /** Wall time of the whole run, in milliseconds. */
  durationMs: number;
  /** Why the run started no further target, when it stopped early: a canary failed, the failure budget, `stopOnError`, `signal`. */
  stoppedBy?: FleetStopReason;
  /** With `canary`: its size, how many of its targets applied, and whether it passed (the rest were let through). */
  canary?: CanaryOutcome;
}
