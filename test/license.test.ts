import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { expect, test } from 'vitest';

const root = new URL('..', import.meta.url);

// package.json says MIT: the license text ships in the tarball, where users' license checkers look.
test('the tarball has the MIT LICENSE that package.json names', () => {
  // --ignore-scripts: prepack rebuilds dist/ from scratch, which would pull it from under parallel tests.
  const [pack] = JSON.parse(
    execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' }),
  ) as [{ files: { path: string }[] }];
  expect(pack.files.map((file) => file.path)).toContain('LICENSE');
  expect(JSON.parse(readFileSync(new URL('package.json', root), 'utf8')).license).toBe('MIT');
  const text = readFileSync(new URL('LICENSE', root), 'utf8');
  expect(text).toMatch(/^MIT License\n\nCopyright \(c\) 2026 pg-migration-lock contributors\n/);
});
