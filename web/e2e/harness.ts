// Starts the real stack for the browser tests: two fresh PostgreSQL databases, the `nexus-ca`
// and `nexus-cloud` binaries (built by cargo) on free loopback ports, the console build served
// by nexus-cloud, and two tenants created through the operator API.
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { existsSync, mkdirSync, createWriteStream } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const webDir = resolve(here, "..");
const repo = resolve(webDir, "..");
export const artifacts = join(webDir, "e2e-artifacts");

function binDir(): string {
  if (process.env.NEXUS_BIN_DIR) return process.env.NEXUS_BIN_DIR;
  const target = process.env.CARGO_TARGET_DIR ?? join(repo, "target");
  return join(target, "debug");
}

async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => ok(port));
    });
  });
}

const pgUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

function psql(sql: string): void {
  execFileSync("psql", [pgUrl, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], { stdio: "pipe" });
}

function withDb(db: string): string {
  const u = new URL(pgUrl);
  u.pathname = `/${db}`;
  return u.toString();
}

async function waitHttp(url: string, what: string, child: ChildProcess, ms = 240_000): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}; see ${artifacts}`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what} did not answer ${url} within ${ms} ms`);
}

export interface Tenant {
  id: string;
  slug: string;
  ownerKey: string;
  viewerKey: string;
  memberKey: string;
}

export interface Stack {
  base: string;
  operator: string;
  acme: Tenant;
  globex: Tenant;
  api(path: string, key: string, init?: { method?: string; body?: unknown }): Promise<{ status: number; body: any }>;
  stop(): Promise<void>;
}

export async function startStack(): Promise<Stack> {
  mkdirSync(artifacts, { recursive: true });
  const bins = binDir();
  for (const b of ["nexus-ca", "nexus-cloud"]) {
    if (!existsSync(join(bins, b))) {
      throw new Error(`${join(bins, b)} is missing: run \`cargo build -p nexus-ca -p nexus-cloud\` first`);
    }
  }
  const consoleDir = join(webDir, "dist");
  if (!existsSync(join(consoleDir, "index.html"))) {
    throw new Error("web/dist is missing: run `npm run build` first");
  }
  const tag = randomBytes(4).toString("hex");
  const dbs = [`nexus_e2e_ca_${tag}`, `nexus_e2e_cloud_${tag}`];
  for (const db of dbs) psql(`CREATE DATABASE ${db}`);

  const [caGrpc, caHttp, api] = [await freePort(), await freePort(), await freePort()];
  const operator = randomBytes(24).toString("hex");
  const caToken = randomBytes(24).toString("hex");
  const children: ChildProcess[] = [];
  const run = (name: string, args: string[], env: Record<string, string>) => {
    const log = createWriteStream(join(artifacts, `${name}.log`));
    const child = spawn(join(bins, name), args, {
      env: { ...process.env, RUST_LOG: "info", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    children.push(child);
    return child;
  };

  const ca = run(
    "nexus-ca",
    [
      "--database-url", withDb(dbs[0]!),
      "--grpc-listen", `127.0.0.1:${caGrpc}`,
      "--http-listen", `127.0.0.1:${caHttp}`,
      "--tenant", "acme",
      "--tenant", "globex",
    ],
    { NEXUS_CA_KEK: randomBytes(32).toString("hex"), NEXUS_CA_TOKEN: caToken },
  );
  await waitHttp(`http://127.0.0.1:${caHttp}/readyz`, "nexus-ca", ca);
  const cloud = run(
    "nexus-cloud",
    [
      "--database-url", withDb(dbs[1]!),
      "serve",
      "--listen", `127.0.0.1:${api}`,
      "--ca-endpoint", `http://127.0.0.1:${caGrpc}`,
      "--console-dir", consoleDir,
      "--rate-limit", "0",
    ],
    { NEXUS_ADMIN_TOKEN: operator, NEXUS_CA_TOKEN: caToken },
  );
  const base = `http://127.0.0.1:${api}`;
  await waitHttp(`${base}/readyz`, "nexus-cloud", cloud);

  async function call(path: string, key: string, init: { method?: string; body?: unknown } = {}) {
    const r = await fetch(`${base}${path}`, {
      method: init.method ?? (init.body === undefined ? "GET" : "POST"),
      headers: {
        authorization: `Bearer ${key}`,
        ...(init.body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  }

  async function tenant(name: string, slug: string): Promise<Tenant> {
    const t = await call("/v1/tenants", operator, { body: { name, slug, owner_email: `owner@${slug}.example` } });
    if (t.status !== 201) throw new Error(`creating ${slug}: ${JSON.stringify(t.body)}`);
    const ownerKey = t.body.api_key as string;
    const key = async (role: string) => {
      const u = await call("/v1/users", ownerKey, { body: { email: `${role}@${slug}.example`, role } });
      const k = await call("/v1/api-keys", ownerKey, {
        body: { name: `${role} key`, user_id: u.body.id, scopes: ["read", "write", "admin"] },
      });
      if (k.status !== 201) throw new Error(`key for ${role}: ${JSON.stringify(k.body)}`);
      return k.body.api_key as string;
    };
    return { id: t.body.tenant_id, slug, ownerKey, viewerKey: await key("viewer"), memberKey: await key("member") };
  }

  const acme = await tenant("Acme AI", "acme");
  const globex = await tenant("Globex", "globex");

  return {
    base,
    operator,
    acme,
    globex,
    api: call,
    async stop() {
      for (const c of children) c.kill("SIGTERM");
      await Promise.all(
        children.map(
          (c) => new Promise<void>((ok) => (c.exitCode !== null ? ok() : c.once("exit", () => ok()))),
        ),
      );
      for (const db of dbs) {
        try {
          psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
        } catch {
          // best effort
        }
      }
    },
  };
}
