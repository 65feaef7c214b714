// Kept apart from runner.ts, which starts loading node-pg-migrate when imported: the CLI needs only this.

/**
 * The statement in node-pg-migrate's "Error executing:\n<sql>\n<error>" (or, when the server gave a position,
 * "<sql up to that line>\n   ^^^^<rest of the sql>\n\n<message>").
 */
export function loggedStatement(message: string): string | undefined {
  const text = /^Error executing:\n([\s\S]*)$/.exec(message.trimEnd())?.[1];
  if (text === undefined) return undefined;
  const blank = text.lastIndexOf('\n\n');
  const sql = blank >= 0 ? text.slice(0, blank) : text.slice(0, Math.max(0, text.lastIndexOf('\n')));
  return sql.replace(/^ *\^\^\^\^/m, '');
}
