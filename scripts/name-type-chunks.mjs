// After tsup: the declaration chunks shared by the entries (rollup names them `<name>-<hash>.d.ts`, and tsup
// offers no option for it) get stable names that say what they hold, e.g. `dist/core-types.d.cts`, so that a
// type error in them (a missing @types/pg) points at a file a user can make sense of. Entries' imports follow.
import { readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dist = new URL('../dist/', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

/** The declaration files package.json points at: the entries. */
const entries = new Set();
for (const conditions of Object.values(pkg.exports)) {
  if (typeof conditions !== 'object') continue;
  for (const target of Object.values(conditions)) entries.add(target.types.replace(/^\.\/dist\//, ''));
}

/** What a chunk holds, by a declaration only it has. */
const NAMES = [
  ['interface FleetMigrator', 'core-types'],
  ['PostgresJsReservedSql', 'driver-types'],
];

const declarations = readdirSync(dist).filter((file) => /\.d\.c?ts$/.test(file));
const chunks = declarations.filter((file) => !entries.has(file));
const referenced = new Set();
for (const file of declarations.filter((f) => entries.has(f))) {
  for (const match of readFileSync(join(dist, file), 'utf8').matchAll(/from '\.\/([^']+)\.(c?js)'/g)) {
    referenced.add(`${match[1]}.d.${match[2] === 'cjs' ? 'cts' : 'ts'}`);
  }
}

const renames = new Map();
for (const chunk of chunks) {
  if (!referenced.has(chunk)) {
    // a chunk of an earlier build (dist is never cleaned, see tsup.config.ts)
    if (/-[A-Za-z0-9_-]{8}\.d\.c?ts$/.test(chunk)) rmSync(join(dist, chunk), { force: true });
    continue;
  }
  const text = readFileSync(join(dist, chunk), 'utf8');
  const name = NAMES.find(([marker]) => text.includes(marker))?.[1];
  if (!name) continue;
  const cts = chunk.endsWith('.d.cts');
  const to = `${name}.d.${cts ? 'cts' : 'ts'}`;
  renames.set(`./${chunk.replace(/\.d\.c?ts$/, cts ? '.cjs' : '.js')}`, `./${name}.${cts ? 'cjs' : 'js'}`);
  renameSync(join(dist, chunk), join(dist, to));
}

for (const file of readdirSync(dist).filter((f) => /\.d\.c?ts$/.test(f))) {
  const path = join(dist, file);
  const text = readFileSync(path, 'utf8');
  let renamed = text;
  for (const [from, to] of renames) renamed = renamed.replaceAll(`'${from}'`, `'${to}'`);
  if (renamed !== text) writeFileSync(path, renamed);
}
