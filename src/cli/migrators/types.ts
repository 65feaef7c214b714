/** What a migrator run applied, for the summary the CLI prints. */
export interface Applied {
  migrator: string;
  /** Names of the migrations this run applied, in order (empty: already up to date). */
  applied: string[];
  /** Extra detail for the summary, e.g. knex's batch number. */
  note?: string;
}

/** The lock options a migrator passes to its adapter. */
export type AdapterLock = import('../../options.js').MigrationLockOptions & { key: bigint };

/**
 * A migrator's pending check, set up once (config loaded, migrator imported) and asked as often as
 * `pending --wait` needs. Each migrator's `pending…` function returns one.
 */
export interface PendingCheck {
  migrator: string;
  /** The names of the migrations `migrate <migrator>` would apply now, in order (the adapter's `pending`). */
  check(): Promise<string[]>;
  /** The database, for the connection `--wait` listens on for the lock's releases. */
  database: import('pg').ClientConfig;
  /** Closes what the check opened. */
  close(): Promise<void>;
}
