import { expect, test } from 'vitest';
import { createTestDatabase, expectSerialSections, fixture, resetSectionTables, spawnNode } from './helpers.js';

const url = await createTestDatabase();

test('12 OS processes contending: critical sections never overlap, no update is lost', async () => {
  await resetSectionTables(url);
  const replicas = Array.from({ length: 12 }, () =>
    spawnNode(fixture('lock-worker.mjs'), ['section', url, '71', '40']),
  );
  const exits = await Promise.all(replicas.map((r) => r.exited));
  expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));

  await expectSerialSections(url, 12);
});
