/** What a migrator run applied, for the summary the CLI prints. */
export interface Applied {
  migrator: string;
  /** Names of the migrations this run applied, in order (empty: already up to date). */
  applied: string[];
  /** Extra detail for the summary, e.g. knex's batch number. */
  note?: string;
}

/** The lock options a migrator passes to its adapter. */
export type AdapterLock = import('../../lock.js').MigrationLockOptions & { key: bigint };
