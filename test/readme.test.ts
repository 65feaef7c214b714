import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, test } from 'vitest';
import { createTestDatabase } from './helpers.js';

// The README's TypeScript blocks are part of the suite: each ```ts block is type-checked (strict) against
// the package's own published types (dist/, imported as `pg-migration-lock` like a user would), and run
// against a test database unless it says why it cannot. What a block elides is declared in an HTML
// comment right above it, invisible on GitHub:
//
//   <!-- readme-test prelude: import type { Knex } from 'knex'; declare const db: Knex; -->
//   <!-- readme-test no-run: serves HTTP until stopped -->
//
// A block with a `declare` in its prelude is type-checked only (there is nothing real to run it with).

const root = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

interface Block {
  /** 1-based line of the opening fence in README.md. */
  line: number;
  code: string;
  prelude: string[];
  /** Why the block is type-checked only; undefined: it runs. */
  noRun?: string;
}

const DIRECTIVE = /^<!--\s*readme-test\s+(prelude|no-run):\s*([\s\S]*?)\s*-->$/;

/** Every ```ts block of a markdown text, with its directives; unclosed blocks and unknown directives throw. */
function extractTsBlocks(markdown: string, file = 'README.md'): Block[] {
  const lines = markdown.split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const fence = /^(\s*)(`{3,}|~{3,})\s*(\S*)/.exec(lines[i]!);
    if (!fence) continue;
    const [, indent, marker, lang] = fence;
    let end = i + 1;
    while (end < lines.length && !new RegExp(`^${indent}${marker![0]}{${marker!.length},}\\s*$`).test(lines[end]!))
      end++;
    if (end >= lines.length) throw new Error(`${file}:${i + 1}: a ${marker}${lang} block is never closed`);
    if (/^(ts|typescript|tsx|mts)$/i.test(lang!)) {
      const block: Block = { line: i + 1, code: lines.slice(i + 1, end).join('\n'), prelude: [] };
      // Directives: the HTML comments right above the fence (blank lines between are fine).
      for (let j = i - 1; j >= 0 && (lines[j]!.trim() === '' || lines[j]!.trim().startsWith('<!--')); j--) {
        const text = lines[j]!.trim();
        if (text === '') continue;
        if (!/^<!--\s*readme-test/.test(text)) break;
        const directive = DIRECTIVE.exec(text);
        if (!directive) {
          throw new Error(
            `${file}:${j + 1}: unknown readme-test directive (expected "<!-- readme-test prelude: CODE -->" or "<!-- readme-test no-run: WHY -->")`,
          );
        }
        if (directive[1] === 'prelude') block.prelude.unshift(directive[2]!);
        else block.noRun = directive[2]!;
      }
      if (block.noRun === undefined && block.prelude.some((code) => /\bdeclare\b/.test(code))) {
        block.noRun = 'its prelude declares what the README elides';
      }
      blocks.push(block);
    }
    i = end;
  }
  return blocks;
}

describe('extractTsBlocks', () => {
  test('finds ts blocks with their line and directives; other languages are skipped', () => {
    const md = [
      '# x', // 1
      '```sh', // 2
      'echo hi', // 3
      '```', // 4
      '<!-- readme-test prelude: declare const a: number; -->', // 5
      '', // 6
      '```ts', // 7
      'a + 1;', // 8
      '```', // 9
      '<!-- readme-test no-run: forever -->', // 10
      '```typescript', // 11
      'for (;;) {}', // 12
      '```', // 13
    ].join('\n');
    expect(extractTsBlocks(md)).toEqual([
      {
        line: 7,
        code: 'a + 1;',
        prelude: ['declare const a: number;'],
        noRun: 'its prelude declares what the README elides',
      },
      { line: 11, code: 'for (;;) {}', prelude: [], noRun: 'forever' },
    ]);
  });

  test('an unclosed block or a misspelt directive names its line', () => {
    expect(() => extractTsBlocks('text\n```ts\nconst a = 1;\n')).toThrow('README.md:2: a ```ts block is never closed');
    expect(() => extractTsBlocks('<!-- readme-test prelud: x -->\n```ts\n1;\n```\n')).toThrow(
      'README.md:1: unknown readme-test directive',
    );
  });
});

describe('README.md', async () => {
  const blocks = extractTsBlocks(readFileSync(join(root, 'README.md'), 'utf8'));
  // Inside the package, so `pg-migration-lock` resolves to this package (its exports: dist/) for tsc and node.
  const dir = join(root, '.tmp', `readme-${randomBytes(4).toString('hex')}`);
  mkdirSync(join(dir, 'migrations'), { recursive: true }); // the (empty) migrations folder snippets point at
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const fileOf = (block: Block) => `readme-L${block.line}.ts`;
  for (const block of blocks) {
    // One prelude per line, then the block as written; `export {}` makes it a module (top-level await).
    writeFileSync(join(dir, fileOf(block)), `${[...block.prelude, block.code].join('\n')}\nexport {};\n`);
  }
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        lib: ['ES2023'],
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        esModuleInterop: true,
        skipLibCheck: true,
        types: ['node'],
        outDir: 'out',
        rootDir: '.',
      },
      include: ['*.ts'],
    }),
  );

  test('has TypeScript blocks, and the package is built', () => {
    expect(blocks.length).toBeGreaterThan(3);
    expect(existsSync(join(root, 'dist', 'index.d.ts')), 'build first: npm run build').toBe(true);
  });

  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  // One compiler run for all blocks: diagnostics, and the JavaScript the runnable blocks run as.
  const compiled = run(process.execPath, [tsc, '-p', dir, '--pretty', 'false'], { timeout: 120_000 }).then(
    () => '',
    (err: { stdout?: string; message: string }) => err.stdout || err.message,
  );

  test('every ```ts block type-checks (strict, against the package’s own types)', async () => {
    const errors = (await compiled)
      .split('\n')
      .filter((line) => line.trim())
      .map((line) => {
        const match = /(?:^|[\\/])readme-L(\d+)\.ts\((\d+),(\d+)\): (.*)$/.exec(line.trim());
        if (!match) return line;
        const block = blocks.find((b) => b.line === Number(match[1]))!;
        const codeLine = Number(match[2]) - block.prelude.length;
        const where = codeLine >= 1 ? `README.md:${block.line + codeLine}:${match[3]}` : 'its prelude';
        return `${where} (the \`\`\`ts block at line ${block.line}): ${match[4]}`;
      });
    expect(errors, errors.join('\n')).toEqual([]);
  }, 180_000);

  const runnable = blocks.filter((block) => block.noRun === undefined);
  test.each(runnable.map((block) => [block.line, block] as const))(
    'the block at README.md:%i runs against a test database',
    async (_line, block) => {
      await compiled;
      const url = await createTestDatabase();
      const script = join(dir, 'out', fileOf(block).replace(/\.ts$/, '.js'));
      const result = await run(process.execPath, [script], {
        cwd: dir,
        env: { ...process.env, DATABASE_URL: url },
        timeout: 60_000,
      }).catch((err: { code?: number; stderr?: string; message: string }) => ({
        stdout: '',
        stderr: `exit ${err.code}: ${err.stderr || err.message}`,
        failed: true,
      }));
      expect(
        'failed' in result ? result.stderr : '',
        `README.md:${block.line}: the block failed when run (if it cannot run, say why above it: <!-- readme-test no-run: WHY -->)`,
      ).toBe('');
    },
    90_000,
  );
});
