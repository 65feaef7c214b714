export interface Postgres {
  url: string;
  version: string;
  stop(): Promise<void>;
}
/** Starts an embedded PostgreSQL, or uses the server at `url`; `durable: false` turns fsync off. */
export function startPostgres(options?: { url?: string; durable?: boolean }): Promise<Postgres>;
/** Creates a fresh database next to `url` and returns its URL. */
export function createDatabase(url: string, name: string): Promise<string>;
export function freePort(): Promise<number>;
