// The shape every migrator of the CLI has: its flags, its help, and what `migrate`, `pending` and a fleet do with it.
import type { Command } from 'commander';
import type pg from 'pg';
import type { FleetMigrator } from '../../fleet/types.js';
import type { KeyedLockOptions } from '../../keyed.js';
import type { Output } from '../output.js';

/** What a migrator run applied, for the summary the CLI prints. */
export interface Applied {
  migrator: string;
  /** Names of the migrations this run applied, in order (empty: already up to date). */
  applied: string[];
  /** Extra detail for the summary, e.g. knex's batch number. */
  note?: string;
}

/**
 * A migrator's pending check, set up once (config loaded, migrator imported) and asked as often as
 * `pending --wait` needs. Each migrator's `pending` returns one.
 */
export interface PendingCheck {
  migrator: string;
  /** The names of the migrations `migrate <migrator>` would apply now, in order (the adapter's `pending`). */
  check(): Promise<string[]>;
  /** The database, for the connection `--wait` listens on for the lock's releases. */
  database: pg.ClientConfig;
  /** Closes what the check opened. */
  close(): Promise<void>;
}

/** The two commands a migrator appears under. */
export type Verb = 'migrate' | 'pending';

/** One subcommand's help: the line under its name, and the text after its options (examples, notes). */
export interface CommandHelp {
  description: string;
  after: string;
}

/**
 * One migrator of the CLI: `migrate <name>` and `pending <name>`, single runs and fleets. `F` is its parsed
 * flags. Adding a migrator is a file of its own implementing this, and one line in MIGRATORS (./index.ts).
 */
export interface CliMigrator<F = object> {
  /** The subcommand's name, also the tool whose default key the lock takes (`knex`, `node-pg-migrate`, …). */
  readonly name: string;
  /** Adds its flags to `migrate <name>` or `pending <name>` (some only to one of them). */
  flags(command: Command, verb: Verb): Command;
  readonly help: Record<Verb, CommandHelp>;
  /** Runs the pending migrations under `lock`, on the session that holds it. */
  migrate(command: Command, out: Output, flags: F, lock: KeyedLockOptions): Promise<Applied>;
  /** Sets up the check of what `migrate` would apply. */
  pending(command: Command, out: Output, flags: F): Promise<PendingCheck>;
  /** The migrator a fleet (`migrate <name> --each-…`) runs on each target. */
  fleet(command: Command, out: Output, flags: F): Promise<FleetMigrator>;
}
