import { describe, expect, test } from 'vitest';
import { connectionStringSecrets, Output, redact } from '../../src/cli/output.js';
import { createTestDatabase } from '../helpers.js';
import { cli, fixture } from './cli.js';

// Passwords never appear in output, however the URL is written. The password is the one pg itself would
// send (found by pg's own parser, pg-connection-string); the patterns catch URLs the CLI was never given.

/** [what, text as the user wrote it, secrets that must not show, what must show]. */
const SHAPES: [string, string, string[], string][] = [
  [
    'a raw @ in the password',
    'postgres://weird:ab@LEAKMEx@host/db',
    ['LEAKMEx', 'ab@'],
    'postgres://weird:***@host/db',
  ],
  ['two raw @', 'postgres://u:a@b@CsecretC@host:5433/db', ['CsecretC', 'a@b'], 'postgres://u:***@host:5433/db'],
  ['a : in the password', 'postgres://u:pa:SECRETss@host/db', ['SECRETss', 'pa:'], 'postgres://u:***@host/db'],
  ['a / in the password', 'postgres://u:pa/SECRETss@host/db', ['SECRETss', 'pa/'], 'postgres://u:***@host/db'],
  ['percent-encoded', 'postgres://u:p%40SECRET%2Fx@host/db', ['SECRET', 'p@'], 'postgres://u:***@host/db'],
  ['postgresql:// and IPv6', 'postgresql://u:S3CRET@[::1]:5432/db', ['S3CRET'], 'postgresql://u:***@[::1]:5432/db'],
  ['?password=', 'postgres://u@host/db?sslmode=require&password=QUERYsecret', ['QUERYsecret'], 'password=***'],
  [
    'key=value',
    'host=db port=5432 password=KVsecret dbname=app',
    ['KVsecret'],
    'host=db port=5432 password=*** dbname=app',
  ],
  ['key=value, quoted', "host=db password='KV spaced secret' dbname=app", ['KV spaced', 'secret'], "password='***'"],
  ['a config object', `{ host: 'db', password: 'OBJsecret' }`, ['OBJsecret'], "password: '***'"],
  ['SQL', "ALTER ROLE app PASSWORD 'SQLsecret'", ['SQLsecret'], "PASSWORD '***'"],
  ['unparseable', 'postgres://u:UNPARSE able@@/', ['UNPARSE'], 'postgres://u:***@'],
  ['a space in the password', 'postgres://u:SP ACE@host/db', ['SP ACE'], '@host/db'],
];

describe('redact(), with the secrets pg would send', () => {
  test.each(SHAPES)('%s', (_what, text, secrets, shown) => {
    // As part of a larger message, as a driver's error would echo it.
    const message = `connecting to ${text} failed`;
    const result = redact(message, connectionStringSecrets(text));
    for (const secret of secrets) expect(result).not.toContain(secret);
    expect(result).toContain(shown);
  });

  test('pg’s parser finds the password as pg sends it', () => {
    expect(connectionStringSecrets('postgres://weird:ab@LEAKMEx@host/db')).toEqual(['ab@LEAKMEx']);
    expect(connectionStringSecrets('postgres://u:p%40ss@h/db')).toEqual(['p@ss']);
    expect(connectionStringSecrets('postgres://u@h/db?password=q')).toEqual(['q']);
    // It would read certificate files; it must not (and must not throw) just to redact.
    expect(connectionStringSecrets('postgres://u:pw@h/db?sslcert=/no/such/file')).toEqual(['pw']);
    expect(connectionStringSecrets('postgres://u:a/b@h/db')).toEqual([]); // pg cannot parse it either
  });

  test('a known password is erased wherever it appears, however encoded, but not inside other words', () => {
    const out = new Output();
    out.addConnectionString('postgres://app:s3cr3t@db/app');
    expect(out.scrub('auth failed for s3cr3t; s3cr3t%21 s3cr3tive')).toBe('auth failed for ***; ***%21 s3cr3tive');
    const weak = new Output();
    weak.addConnectionString('postgres://postgres:postgres@db/app');
    expect(weak.scrub('postgres://postgres:postgres@db/app: password postgres')).toBe(
      'postgres://postgres:***@db/app: password ***',
    );
  });
});

describe('the CLI never prints a password', () => {
  const SECRET = 'LEAKMEx';

  test.each([
    [
      '--database-url, raw @, unreachable',
      ['status', '--database-url', `postgres://weird:ab@${SECRET}@127.0.0.1:1/db`],
      {},
      1,
    ],
    ['DATABASE_URL, ?password=', ['status'], { DATABASE_URL: `postgres://u@127.0.0.1:1/db?password=${SECRET}` }, 1],
    ['an invalid URL (a / in the password)', ['status', '--database-url', `postgres://u:a/${SECRET}@host/db`], {}, 2],
    ['a URL without a scheme', ['status', '--database-url', `u:${SECRET}@host/db`], {}, 2],
    ['--json', ['status', '--json', '--database-url', `postgres://weird:ab@${SECRET}@127.0.0.1:1/db`], {}, 1],
  ])('%s', async (_what, args, env, exitCode) => {
    const { code, stdout, stderr } = await cli(args, { env });
    expect(code, stderr).toBe(exitCode);
    expect(stdout + stderr).not.toContain(SECRET);
    // One error, after at most the line naming the database (masked).
    expect(stderr).toMatch(/^(\[pg-migration-lock\] Database: .*\n)?error: /);
  });

  test('a wrong password: the server’s answer names the user, not the password', async () => {
    const url = new URL(await createTestDatabase());
    url.username = 'pgml_nobody';
    url.password = `ab@${SECRET}`;
    const raw = url.toString().replace('%40', '@'); // as a user would type it
    const { code, stderr } = await cli(['status', '--database-url', raw]);
    expect(code).toBe(1);
    expect(stderr).toContain('pgml_nobody');
    expect(stderr).not.toContain(SECRET);
  });

  test('migrate knex: the knexfile’s connection is used and named (raw @ masked); DATABASE_URL is said to be unused', async () => {
    const { code, stderr } = await cli(['migrate', 'knex', '--knexfile', fixture('knex-own-connection/knexfile.cjs')], {
      env: {
        KNEXFILE_CONNECTION: `postgres://weird:ab@${SECRET}@127.0.0.1:1/fromknexfile`,
        DATABASE_URL: 'postgres://other@127.0.0.1:2/fromenv',
      },
    });
    expect(code).toBe(1);
    expect(stderr).not.toContain(SECRET);
    expect(stderr).toContain(
      'Database: postgres://weird:***@127.0.0.1:1/fromknexfile (from knexfile.cjs, environment "development"; DATABASE_URL is set but not used',
    );
    expect(stderr).toMatch(/error: .*ECONNREFUSED 127\.0\.0\.1:1/);
  });

  test('migrate knex with --database-url: the flag wins and is named', async () => {
    const { stderr } = await cli(
      [
        'migrate',
        'knex',
        '--knexfile',
        fixture('knex-own-connection/knexfile.cjs'),
        '--database-url',
        `postgres://u:${SECRET}@127.0.0.1:1/fromflag`,
      ],
      { env: { KNEXFILE_CONNECTION: 'postgres://k@127.0.0.1:2/fromknexfile' } },
    );
    expect(stderr).toContain('Database: postgres://u:***@127.0.0.1:1/fromflag (from --database-url)');
    expect(stderr).not.toContain(SECRET);
  });

  test('an error from a migration that echoes a URL with a raw @ in its password', async () => {
    const url = await createTestDatabase();
    const { code, stderr } = await cli(['migrate', 'node-pg-migrate', '-m', fixture('echo-url')], {
      env: { DATABASE_URL: url, ECHO_URL: `postgres://report:ab@${SECRET}@reports.internal/db` },
    });
    expect(code).toBe(1);
    expect(stderr).toMatch(
      /error: node-pg-migrate: migration .*1700000000001_echo-url\.cjs:4 failed: could not reach the reporting database at postgres:\/\/report:\*\*\*@reports\.internal\/db\n$/,
    );
    expect(stderr).not.toContain(SECRET);
  });

  test('migrate node-pg-migrate names DATABASE_URL as the source', async () => {
    const url = await createTestDatabase();
    const { code, stderr } = await cli(['migrate', 'node-pg-migrate', '-m', fixture('node-pg-migrate-slow')], {
      env: { DATABASE_URL: url },
    });
    expect(code, stderr).toBe(0);
    const shown = new URL(url);
    if (shown.password) shown.password = '***';
    expect(stderr).toContain(`Database: ${shown.toString().replace('%2A%2A%2A', '***')} (from DATABASE_URL)`);
  });
});
