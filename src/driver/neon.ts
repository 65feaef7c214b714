// Neon's serverless driver (`@neondatabase/serverless`). Its `Pool` and `Client` are node-postgres' own, over a
// WebSocket: pg.ts serves them as they are. Its HTTP `neon()` function has no session to hold a lock on, and
// is refused here, before any connection, with what to pass instead.

/**
 * The query function of Neon's `neon(url)`: a tagged-template function with `query`, `unsafe` and
 * `transaction`, and neither `reserve` nor `begin` (which a postgres.js or Bun `sql` has).
 */
export function isNeonHttp(source: unknown): boolean {
  const fn = source as Record<string, unknown>;
  return (
    typeof source === 'function' &&
    typeof fn.query === 'function' &&
    typeof fn.transaction === 'function' &&
    typeof fn.reserve !== 'function' &&
    typeof fn.begin !== 'function'
  );
}

export const NEON_HTTP_REFUSED =
  'Expected `client` to be a source with a session, got Neon\'s HTTP query function (`neon(url)`): over HTTP each query (or transaction) is a request of its own, so no session can hold a session advisory lock. Pass a `Pool` (or a connected `Client`) from @neondatabase/serverless instead, which keeps one WebSocket session, with your direct host (without "-pooler")';
