export interface Postgres {
  url: string;
  version: string;
  stop(): Promise<void>;
  /** Embedded servers only: stop (`fast` = SIGINT, `immediate` = SIGQUIT), stay down `downMs`, start again. */
  restart?(mode?: 'fast' | 'immediate', downMs?: number): Promise<void>;
}
/**
 * Starts an embedded PostgreSQL, or uses the server at `url`; `durable: false` turns fsync off;
 * `listen` adds listen_addresses, `hba` adds pg_hba.conf lines.
 */
export function startPostgres(options?: {
  url?: string;
  durable?: boolean;
  listen?: string;
  hba?: string[];
}): Promise<Postgres>;
/** Creates a fresh database next to `url` and returns its URL. */
export function createDatabase(url: string, name: string): Promise<string>;
export function freePort(): Promise<number>;
