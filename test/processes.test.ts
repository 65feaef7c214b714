import { expect, test } from 'vitest';
import { createTestDatabase, fixture, spawnNode, withClient } from './helpers.js';

const url = await createTestDatabase();

test('12 OS processes contending: critical sections never overlap, no update is lost', async () => {
  await withClient(url, (client) =>
    client.query(`CREATE TABLE counter (n int NOT NULL); INSERT INTO counter VALUES (0);
                  CREATE TABLE sections (pid int, started_at timestamptz, ended_at timestamptz)`),
  );
  const replicas = Array.from({ length: 12 }, () =>
    spawnNode(fixture('lock-worker.mjs'), ['section', url, '71', '40']),
  );
  const exits = await Promise.all(replicas.map((r) => r.exited));
  expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));

  await withClient(url, async (client) => {
    expect((await client.query('SELECT n FROM counter')).rows[0].n).toBe(12);
    const { rows } = await client.query<{ started_at: Date; ended_at: Date }>(
      'SELECT started_at, ended_at FROM sections ORDER BY started_at',
    );
    expect(rows).toHaveLength(12);
    for (let i = 1; i < rows.length; i++) {
      expect(rows[i]!.started_at.getTime()).toBeGreaterThanOrEqual(rows[i - 1]!.ended_at.getTime());
    }
  });
});
