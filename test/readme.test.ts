import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, test } from 'vitest';
import { createTestDatabase } from './helpers.js';

// The code blocks of README.md and of every docs/*.md page are part of the suite.
//
// Each ```ts block is type-checked (strict) against the package's own published types (dist/, imported as
// `pg-migration-lock` like a user would), and run against a fresh test database unless it says why it
// cannot. What a block elides is declared in an HTML comment right above it, invisible on GitHub:
//
//   <!-- readme-test prelude: import type { Knex } from 'knex'; declare const db: Knex; -->
//   <!-- readme-test no-run: serves HTTP until stopped -->
//
// A block with a `declare` in its prelude is type-checked only (there is nothing real to run it with).
//
// A ```js block marked `<!-- readme-test mjs -->` is a plain ES module a reader copies as it is: it is
// written to a .mjs file and run with plain `node` (no compiler), with DATABASE_URL set to a fresh test
// database, and what it prints on stdout must be exactly the ```text block that comes next (the next
// fenced block of the page; prose may come between). The only normalisation: line ends, and blank lines
// at the end. So such a block must print no timings, pids or other values that change from run to run.
// Every ```js block must be marked so: a JavaScript snippet nobody runs is not allowed.

const root = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

interface Block {
  /** 1-based line of the opening fence in its markdown file. */
  line: number;
  code: string;
  prelude: string[];
  /** Why the block is type-checked only; undefined: it runs. */
  noRun?: string;
  /** A `<!-- readme-test mjs -->` block: run as a .mjs file, its stdout compared with `expected`. */
  mjs?: { expected: string; expectedLine: number };
}

const DIRECTIVE = /^<!--\s*readme-test\s+(?:(prelude|no-run):\s*([\s\S]*?)|(mjs))\s*-->$/;
const DIRECTIVES =
  '"<!-- readme-test prelude: CODE -->", "<!-- readme-test no-run: WHY -->" or "<!-- readme-test mjs -->"';
const TS = /^(ts|typescript|tsx|mts)$/i;
const JS = /^(js|javascript|mjs)$/i;

/**
 * The tested blocks of a markdown text: every ```ts block, and every ```js block (which must be marked
 * `<!-- readme-test mjs -->` and followed by its ```text output), with their directives. Unclosed blocks,
 * unknown or misplaced directives, unmarked ```js blocks and mjs blocks without their output throw.
 */
function extractTsBlocks(markdown: string, file = 'README.md'): Block[] {
  const lines = markdown.split('\n');
  const fences: { line: number; lang: string; code: string }[] = [];
  for (let i = 0; i < lines.length; i++) {
    const fence = /^(\s*)(`{3,}|~{3,})\s*(\S*)/.exec(lines[i]!);
    if (!fence) continue;
    const [, indent, marker, lang] = fence;
    let end = i + 1;
    while (end < lines.length && !new RegExp(`^${indent}${marker![0]}{${marker!.length},}\\s*$`).test(lines[end]!))
      end++;
    if (end >= lines.length) throw new Error(`${file}:${i + 1}: a ${marker}${lang} block is never closed`);
    fences.push({ line: i + 1, lang: lang!, code: lines.slice(i + 1, end).join('\n') });
    i = end;
  }

  const blocks: Block[] = [];
  for (const [index, fence] of fences.entries()) {
    const isTs = TS.test(fence.lang);
    const isJs = JS.test(fence.lang);
    const block: Block = { line: fence.line, code: fence.code, prelude: [] };
    let mjs = false;
    // Directives: the HTML comments right above the fence (blank lines between are fine).
    for (let j = fence.line - 2; j >= 0 && (lines[j]!.trim() === '' || lines[j]!.trim().startsWith('<!--')); j--) {
      const text = lines[j]!.trim();
      if (text === '') continue;
      if (!/^<!--\s*readme-test/.test(text)) break;
      const directive = DIRECTIVE.exec(text);
      if (!directive) throw new Error(`${file}:${j + 1}: unknown readme-test directive (expected ${DIRECTIVES})`);
      if (directive[3]) {
        if (!isJs) {
          throw new Error(
            `${file}:${j + 1}: <!-- readme-test mjs --> belongs above a \`\`\`js block, not a ${fence.lang}`,
          );
        }
        mjs = true;
      } else if (!isTs) {
        throw new Error(
          `${file}:${j + 1}: <!-- readme-test ${directive[1]}: … --> belongs above a \`\`\`ts block, not a ${fence.lang || 'plain'} one`,
        );
      } else if (directive[1] === 'prelude') block.prelude.unshift(directive[2]!);
      else block.noRun = directive[2]!;
    }
    if (isJs) {
      if (!mjs) {
        throw new Error(
          `${file}:${fence.line}: a \`\`\`${fence.lang} block must be tested: mark it <!-- readme-test mjs --> and follow it with a \`\`\`text block of what it prints (or write it as \`\`\`ts)`,
        );
      }
      const output = fences[index + 1];
      if (output?.lang !== 'text') {
        throw new Error(
          `${file}:${fence.line}: the mjs block must be followed by a \`\`\`text block of what it prints (its expected stdout)`,
        );
      }
      block.mjs = { expected: output.code, expectedLine: output.line };
      blocks.push(block);
    } else if (isTs) {
      if (block.noRun === undefined && block.prelude.some((code) => /\bdeclare\b/.test(code))) {
        block.noRun = 'its prelude declares what the README elides';
      }
      blocks.push(block);
    }
  }
  return blocks;
}

/** What an mjs block's output is compared as: line ends unified, trailing blank lines and spaces dropped. */
const normalise = (text: string) =>
  text
    .replace(/\r\n/g, '\n')
    .split('\n')
    .map((line) => line.trimEnd())
    .join('\n')
    .replace(/\n+$/, '');

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

  test('a ```js block marked mjs comes with the ```text block that follows it, prose between allowed', () => {
    const md = [
      '<!-- readme-test mjs -->', // 1
      '```js', // 2
      "console.log('hi');", // 3
      '```', // 4
      'Run it with `node hi.mjs`; it prints:', // 5
      '```text', // 6
      'hi', // 7
      '```', // 8
    ].join('\n');
    expect(extractTsBlocks(md, 'docs/x.md')).toEqual([
      { line: 2, code: "console.log('hi');", prelude: [], mjs: { expected: 'hi', expectedLine: 6 } },
    ]);
  });

  test('an unmarked ```js block, an mjs block without its output, and a misplaced directive name their line', () => {
    expect(() => extractTsBlocks('x\n```js\n1;\n```\n', 'docs/x.md')).toThrow(
      'docs/x.md:2: a ```js block must be tested: mark it <!-- readme-test mjs -->',
    );
    expect(() => extractTsBlocks('<!-- readme-test mjs -->\n```js\n1;\n```\n```sh\nnode x.mjs\n```\n')).toThrow(
      'README.md:2: the mjs block must be followed by a ```text block',
    );
    expect(() => extractTsBlocks('<!-- readme-test mjs -->\n```ts\n1;\n```\n')).toThrow(
      'README.md:1: <!-- readme-test mjs --> belongs above a ```js block',
    );
    expect(() => extractTsBlocks('<!-- readme-test no-run: x -->\n```js\n1;\n```\n')).toThrow(
      'README.md:1: <!-- readme-test no-run: … --> belongs above a ```ts block',
    );
  });

  test('an mjs block’s output is compared without trailing blanks and with unified line ends', () => {
    expect(normalise('a  \r\nb\n\n')).toBe(normalise('a\nb'));
    expect(normalise('a\n\nb')).not.toBe(normalise('a\nb'));
  });
});

// README.md first, then docs/ in name order.
const pages = [
  'README.md',
  ...readdirSync(join(root, 'docs'))
    .filter((name) => name.endsWith('.md'))
    .sort()
    .map((name) => `docs/${name}`),
];

/** The lines of a markdown text outside fenced code blocks, inline code spans blanked out. */
function proseLines(markdown: string): string[] {
  const lines: string[] = [];
  let fence: RegExp | null = null;
  for (const line of markdown.split('\n')) {
    const marker = /^\s*(`{3,}|~{3,})/.exec(line)?.[1];
    if (fence) {
      if (fence.test(line)) fence = null;
      lines.push('');
    } else if (marker) {
      fence = new RegExp(`^\\s*${marker[0]}{${marker.length},}\\s*$`);
      lines.push('');
    } else lines.push(line.replace(/(`+)[\s\S]*?\1/g, (code) => (/\]\(/.test(code) ? '``' : code)));
  }
  return lines;
}

/** The anchors GitHub gives a page's headings: lower case, punctuation dropped, each space a hyphen; repeats get -1, -2… */
function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  for (const line of proseLines(markdown)) {
    const heading = /^#{1,6}\s+(.*?)\s*$/.exec(line)?.[1];
    if (heading === undefined) continue;
    const text = heading.replace(/\[([^\]]*)\]\([^)]*\)/g, '$1');
    const base = text
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    let anchor = base;
    for (let n = 1; anchors.has(anchor); n++) anchor = `${base}-${n}`;
    anchors.add(anchor);
  }
  return anchors;
}

describe('links', () => {
  test('anchors are GitHub’s', () => {
    expect([
      ...anchorsOf('# A `b` (c.d)\n## Troubleshooting: x → `y`\n```\n# not a heading\n```\n## A b (c.d)\n'),
    ]).toEqual(['a-b-cd', 'troubleshooting-x--y', 'a-b-cd-1']);
  });

  test('every relative link of README.md and docs/*.md points at a file, and a heading, that exist', () => {
    const broken: string[] = [];
    for (const page of pages) {
      const lines = proseLines(readFileSync(join(root, page), 'utf8'));
      for (const [index, line] of lines.entries()) {
        for (const [, target] of line.matchAll(/\]\(([^)\s]+)\)/g)) {
          if (/^[a-z][a-z0-9+.-]*:/i.test(target!)) continue; // https:, mailto:
          const [path = '', anchor] = target!.split('#');
          const file = path === '' ? page : join(page, '..', path);
          const where = `${page}:${index + 1}: ${target}`;
          if (!existsSync(join(root, file))) broken.push(`${where} (no file ${file})`);
          else if (anchor !== undefined && file.endsWith('.md')) {
            if (!anchorsOf(readFileSync(join(root, file), 'utf8')).has(anchor)) {
              broken.push(`${where} (no heading #${anchor} in ${file})`);
            }
          }
        }
      }
    }
    expect(broken, broken.join('\n')).toEqual([]);
  });
});

describe('the code blocks of README.md and docs/*.md', async () => {
  // Inside the package, so `pg-migration-lock` resolves to this package (its exports: dist/) for tsc and node.
  const dir = join(root, '.tmp', `readme-${randomBytes(4).toString('hex')}`);
  mkdirSync(join(dir, 'migrations'), { recursive: true }); // the (empty) migrations folder snippets point at
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  interface Located {
    page: string;
    block: Block;
    /** The file the block is written to in `dir`: README-L37.ts, docs-api-L12.mjs. */
    file: string;
  }
  const located: Located[] = pages.flatMap((page) =>
    extractTsBlocks(readFileSync(join(root, page), 'utf8'), page).map((block) => ({
      page,
      block,
      file: `${page.replace(/\.md$/, '').replace(/[^\w]+/g, '-')}-L${block.line}.${block.mjs ? 'mjs' : 'ts'}`,
    })),
  );
  const tsBlocks = located.filter(({ block }) => !block.mjs);
  const mjsBlocks = located.filter(({ block }) => block.mjs);
  for (const { block, file } of tsBlocks) {
    // One prelude per line, then the block as written; `export {}` makes it a module (top-level await).
    writeFileSync(join(dir, file), `${[...block.prelude, block.code].join('\n')}\nexport {};\n`);
  }
  for (const { block, file } of mjsBlocks) writeFileSync(join(dir, file), `${block.code}\n`);
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

  test('README.md has TypeScript blocks and a tested .mjs quick start, and the package is built', () => {
    expect(tsBlocks.filter(({ page }) => page === 'README.md').length).toBeGreaterThan(3);
    expect(mjsBlocks.filter(({ page }) => page === 'README.md').length).toBeGreaterThanOrEqual(1);
    expect(existsSync(join(root, 'dist', 'index.d.ts')), 'build first: npm run build').toBe(true);
  });

  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  // One compiler run for all blocks of all pages: diagnostics, and the JavaScript the runnable blocks run as.
  const compiled = run(process.execPath, [tsc, '-p', dir, '--pretty', 'false'], { timeout: 120_000 }).then(
    () => '',
    (err: { stdout?: string; message: string }) => err.stdout || err.message,
  );

  test('every ```ts block type-checks (strict, against the package’s own types)', async () => {
    const errors = (await compiled)
      .split('\n')
      .filter((line) => line.trim())
      .map((line) => {
        const match = /(?:^|[\\/])([\w-]+-L\d+\.ts)\((\d+),(\d+)\): (.*)$/.exec(line.trim());
        const at = match && tsBlocks.find(({ file }) => file === match[1]);
        if (!match || !at) return line;
        const codeLine = Number(match[2]) - at.block.prelude.length;
        const where = codeLine >= 1 ? `${at.page}:${at.block.line + codeLine}:${match[3]}` : 'its prelude';
        return `${where} (the \`\`\`ts block at ${at.page}:${at.block.line}): ${match[4]}`;
      });
    expect(errors, errors.join('\n')).toEqual([]);
  }, 180_000);

  /** Runs a script with node against a fresh database; a failure comes back as `failed` with its stderr. */
  const runScript = async (script: string) => {
    const url = await createTestDatabase();
    return run(process.execPath, [script], {
      cwd: dir,
      env: { ...process.env, DATABASE_URL: url },
      timeout: 60_000,
    }).catch((err: { code?: number; stdout?: string; stderr?: string; message: string }) => ({
      stdout: err.stdout ?? '',
      stderr: `exit ${err.code}: ${err.stderr || err.message}`,
      failed: true,
    }));
  };

  const runnable = tsBlocks.filter(({ block }) => block.noRun === undefined);
  test.each(runnable.map((at) => [`${at.page}:${at.block.line}`, at] as const))(
    'the ```ts block at %s runs against a test database',
    async (where, { file }) => {
      await compiled;
      const result = await runScript(join(dir, 'out', file.replace(/\.ts$/, '.js')));
      expect(
        'failed' in result ? result.stderr : '',
        `${where}: the block failed when run (if it cannot run, say why above it: <!-- readme-test no-run: WHY -->)`,
      ).toBe('');
    },
    90_000,
  );

  test.each(mjsBlocks.map((at) => [`${at.page}:${at.block.line}`, at] as const))(
    'the .mjs block at %s runs with plain node and prints the ```text block after it',
    async (where, { page, block, file }) => {
      const result = await runScript(join(dir, file));
      expect('failed' in result ? result.stderr : '', `${where}: the block failed when run with node`).toBe('');
      expect(
        normalise(result.stdout),
        `${where}: what the block printed differs from the \`\`\`text block at ${page}:${block.mjs!.expectedLine}`,
      ).toBe(normalise(block.mjs!.expected));
    },
    90_000,
  );
});
