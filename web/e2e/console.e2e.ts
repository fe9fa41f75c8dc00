// The console in a real browser (Debian's Chromium) against the real nexus-ca, nexus-cloud and
// PostgreSQL. Steps run in order and share the tenants the harness made. Every step fails on
// any console error; each page is saved as a screenshot in web/e2e-artifacts/.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { artifacts, startStack, type Stack } from "./harness";
import { openBrowser, type Browser } from "./browser";

let stack: Stack;
let b: Browser;
let page: Page;
/** Console errors a step provokes on purpose (e.g. a 404 for another tenant's object). */
let expected: RegExp[] = [];

const DOMAIN = "prod-east";
const MODEL = "coder-70b";

async function shot(name: string): Promise<void> {
  await page.waitForLoadState("networkidle");
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

async function signIn(key: string): Promise<void> {
  await page.goto(stack.base);
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor();
}

async function signOut(): Promise<void> {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API key").waitFor();
}

async function nav(label: string, heading: string): Promise<void> {
  await page.getByRole("navigation", { name: "Sections" }).getByRole("link", { name: label }).click();
  await page.getByRole("heading", { name: heading, level: 2 }).waitFor();
}

/** Waits until the element with `testId` has exactly `value` as its text (data may refetch). */
async function until(testId: string, value: string): Promise<void> {
  try {
    await page.waitForFunction(
      ([id, v]) => document.querySelector(`[data-testid="${id}"]`)?.textContent === v,
      [testId, value] as const,
      { timeout: 15_000 },
    );
  } catch {
    const now = await page.getByTestId(testId).first().textContent().catch(() => null);
    throw new Error(`${testId} shows ${JSON.stringify(now)}, expected ${JSON.stringify(value)}`);
  }
}

async function text(): Promise<string> {
  return (await page.locator("body").innerText()).replace(/\s+/g, " ");
}

beforeAll(async () => {
  stack = await startStack();
  b = await openBrowser();
  page = b.page;
  page.on("dialog", (d) => void d.accept());
});

afterAll(async () => {
  await b?.close();
  await stack?.stop();
});

afterEach(() => {
  const unexpected = b.errors.filter((e) => !expected.some((re) => re.test(e)));
  b.errors.length = 0;
  expected = [];
  expect(unexpected).toEqual([]);
});

describe("the tenant console", () => {
  it("signs in with an API key kept out of URLs and local storage", async () => {
    await page.goto(stack.base);
    await shot("sign-in");
    // Keyboard only: Tab reaches the key field, Enter submits.
    for (let i = 0; i < 10; i++) {
      const focused = await page.evaluate(() => document.activeElement?.getAttribute("placeholder"));
      if (focused === "nxk_…") break;
      await page.keyboard.press("Tab");
    }
    await page.keyboard.type(stack.acme.ownerKey);
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    expect(page.url()).not.toContain("nxk_");
    const stored = await page.evaluate(() => ({
      session: sessionStorage.getItem("nexus.console.apiKey"),
      local: localStorage.length,
    }));
    expect(stored).toEqual({ session: stack.acme.ownerKey, local: 0 });
    await until("tenant-name", "Acme AI");
    await until("role", "owner");
  });

  it("shows keyboard focus", async () => {
    await page.keyboard.press("Tab");
    const focus = await page.evaluate(() => {
      const el = document.activeElement as HTMLElement | null;
      const style = el ? getComputedStyle(el) : null;
      return { tag: el?.tagName, text: el?.textContent, outline: style?.outlineStyle, width: style?.outlineWidth };
    });
    expect(focus.tag).toBe("A");
    expect(focus.text).toBe("Skip to content");
    expect(focus.outline).not.toBe("none");
    expect(focus.width).not.toBe("0px");
  });

  it("creates and edits a routing domain, and shows endpoint admission with reasons", async () => {
    await nav("Routing domains", "Routing domains");
    await page.getByRole("button", { name: "Create domain" }).click();
    await page.getByRole("dialog").getByLabel("Name").fill(DOMAIN);
    await page.getByRole("dialog").getByLabel("Description").fill("Production inference, east");
    await page.getByRole("dialog").getByRole("button", { name: "Create" }).click();
    await page.getByRole("heading", { name: DOMAIN }).waitFor();

    for (const name of ["coder-a", "coder-b"]) {
      await page.getByRole("button", { name: "Advertise endpoint" }).click();
      const d = page.getByRole("dialog");
      await d.getByLabel("Name").fill(name);
      await d.getByLabel("Capabilities").fill("code-generation");
      await d.getByLabel("Capabilities").press("Enter");
      await d.getByRole("button", { name: "Advertise" }).click();
      await until(`admission-${name}`, "pending");
    }
    // The routing controller reports its decisions (operator token).
    const domainId = page.url().split("/").pop()!;
    const eps = await stack.api(`/v1/routing-domains/${domainId}/endpoints`, stack.acme.ownerKey);
    const id = (n: string) => eps.body.data.find((e: { name: string }) => e.name === n).id;
    const report = async (n: string, state: string, reason: string) => {
      const r = await stack.api(`/v1/routing-domains/${domainId}/endpoints/${id(n)}/admission`, stack.operator, {
        method: "PUT",
        body: { state, reason, table_version: 7 },
      });
      expect(r.status).toBe(200);
    };
    await report("coder-a", "admitted", "");
    await report("coder-b", "rejected", "MIC issuer is not in the domain's trusted issuers");
    await page.reload();
    await until("admission-coder-a", "admitted");
    await until("admission-coder-b", "rejected");
    expect(await text()).toContain("MIC issuer is not in the domain's trusted issuers");

    await page.getByRole("button", { name: "Edit" }).click();
    await page.getByRole("dialog").getByLabel("Description").fill("Production inference, us-east-1");
    await page.getByRole("dialog").getByRole("button", { name: "Save" }).click();
    await page.getByText("Production inference, us-east-1").waitFor();
    await shot("domain-detail");
    await nav("Routing domains", "Routing domains");
    await page.getByRole("link", { name: DOMAIN }).waitFor();
    await page.getByText("1 admitted").waitFor();
    await page.getByText("1 rejected").waitFor();
    await shot("domains");
  });

  it("registers a model, issues a MIC made in the browser, inspects and revokes it", async () => {
    await nav("Model identities", "Model identities");
    await page.getByRole("button", { name: "Register model" }).click();
    let d = page.getByRole("dialog");
    await d.getByLabel("Name").fill(MODEL);
    await d.getByLabel("Model digest").fill(`sha256:${"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}`);
    await d.getByRole("button", { name: "Register" }).click();
    await page.getByRole("heading", { name: MODEL }).waitFor();
    expect(await text()).toContain("No MIC issued yet.");

    await page.getByRole("button", { name: "Issue MIC" }).click();
    d = page.getByRole("dialog");
    await d.getByLabel("Publisher").fill("Acme AI Labs");
    await d.getByLabel("Capabilities").fill("code-generation");
    await d.getByLabel("Capabilities").press("Enter");
    await d.getByRole("button", { name: "Issue" }).click();
    await page.getByTestId("issued-serial").waitFor();
    const serial = await page.getByTestId("issued-serial").innerText();
    const keyDownload = page.waitForEvent("download");
    await page.getByRole("button", { name: "Download private key" }).click();
    const key = readFileSync((await (await keyDownload).path())!, "utf8");
    expect(key).toContain("-----BEGIN PRIVATE KEY-----");
    await page.getByRole("button", { name: "Done" }).click();

    // Inspect: the attestation is read back from the certificate the CA signed.
    const inspect = page.getByRole("dialog", { name: `MIC ${serial}` });
    await inspect.getByTestId("attestation").waitFor();
    const shown = (await inspect.innerText()).replace(/\s+/g, " ");
    expect(shown).toContain("Acme AI Labs");
    expect(shown).toContain("code-generation");
    expect(shown).toContain(`nexus://acme/${MODEL}@1.0.0`);
    const chainDownload = page.waitForEvent("download");
    await inspect.getByRole("button", { name: "Download certificate chain" }).click();
    const chain = readFileSync((await (await chainDownload).path())!, "utf8");
    expect(chain.match(/BEGIN CERTIFICATE/g)?.length).toBe(2);
    await shot("model-inspect");

    await inspect.getByLabel("Revocation reason").click();
    await page.getByRole("option", { name: "Key compromise" }).click();
    await inspect.getByRole("button", { name: "Revoke" }).click();
    await page.waitForFunction(
      () => document.querySelector('[data-testid="inspect-status"]')?.textContent === "revoked",
    );
    await inspect.getByRole("button").first().press("Escape");
    await page.getByTestId(`mic-status-${serial}`).waitFor();
    await page.waitForFunction(
      (s) => document.querySelector(`[data-testid="mic-status-${s}"]`)?.textContent === "revoked",
      serial,
    );
    await shot("model-detail");
    await nav("Model identities", "Model identities");
    await shot("models");
  });

  it("shows usage ingested through the API in the charts, by meter and by domain", async () => {
    const now = new Date().toISOString();
    const r = await stack.api("/v1/usage/events", stack.acme.memberKey, {
      body: {
        events: [
          { meter: "traffic_bytes", quantity: 2_500_000_000_000, timestamp: now, dimensions: { domain: DOMAIN }, idempotency_key: "e2e-1" },
          { meter: "traffic_bytes", quantity: 1_000_000_000_000, timestamp: now, dimensions: { domain: "edge" }, idempotency_key: "e2e-2" },
        ],
      },
    });
    expect(r.body.accepted).toBe(2);
    await nav("Usage", "Usage");
    await until("usage-total-traffic_bytes", "Total 3.50 TB");
    await until("usage-total-mics_issued", "Total 1");
    const bars = await page.getByTestId("usage-traffic_bytes").locator(".recharts-bar-rectangle path, .recharts-rectangle").count();
    expect(bars).toBeGreaterThan(0);
    await shot("usage");
    await page.getByText("Domain", { exact: true }).click();
    await page.waitForFunction(() =>
      (document.querySelector('[data-testid="usage-chart"]')?.getAttribute("data-series") ?? "").includes("edge"),
    );
    const series = await page.getByTestId("usage-chart").getAttribute("data-series");
    expect(series?.split(",").sort()).toEqual(["edge", DOMAIN].sort());
    expect(await text()).toContain("2,500,000,000,000");
    await shot("usage-by-domain");
  });

  it("overview shows traffic, MICs, the running bill and rollouts in progress", async () => {
    const c = await stack.api("/v1/clusters", stack.acme.ownerKey, { body: { name: "gpu-east-1", region: "us-east-1" } });
    const rr = await stack.api(`/v1/clusters/${c.body.id}/rollouts/gpu-east`, stack.acme.memberKey, {
      method: "PUT",
      body: { phase: "Progressing", target_version: "2.0.0", nodes_total: 20, nodes_updated: 7, nodes_failed: 0, message: "batch 2 of 4" },
    });
    expect(rr.status).toBe(200);
    await nav("Overview", "Overview");
    const preview = await stack.api("/v1/invoices/preview", stack.acme.ownerKey);
    expect(preview.body.total).toBe("210.000000");
    await until("running-total", `${preview.body.total} ${preview.body.currency}`);
    await until("mics-issued", "1");
    // The rollouts panel loads on its own request: wait for it, as for the panels above.
    await page.getByText("7/20 updated").first().waitFor({ timeout: 15_000 });
    expect(await text()).toContain("7/20 updated");
    await page.locator(".recharts-bar-rectangle").first().waitFor();
    await shot("overview");
  });

  it("drafts an invoice whose lines and total are the API's, and finalizes it", async () => {
    await nav("Invoices", "Invoices");
    await page.getByTestId("preview-lines").waitFor();
    await page.getByRole("button", { name: "Draft invoice" }).click();
    await page.getByTestId("invoice-lines").waitFor();
    const id = page.url().split("/").pop()!;
    const inv = await stack.api(`/v1/invoices/${id}`, stack.acme.ownerKey);
    await until("invoice-lines-total", inv.body.total);
    const amounts = await page.getByTestId("invoice-lines").locator("tbody tr td:last-child").allInnerTexts();
    expect(amounts).toEqual(inv.body.lines.map((l: { amount: string }) => l.amount));
    // 3,500 GB: 1,000 at 0.08 and 2,500 at 0.05; one MIC at 5.00: exact decimal strings.
    expect(amounts).toEqual(["80.000000", "125.000000", "5.000000"]);
    expect(inv.body.total).toBe("210.000000");
    await shot("invoice-draft");
    await page.getByRole("button", { name: "Finalize" }).click();
    await page.waitForFunction(() => document.querySelector('[data-testid="invoice-status"]')?.textContent === "finalized");
    await shot("invoice-finalized");
    await nav("Invoices", "Invoices");
    await page.getByTestId("invoices-table").waitFor();
    await shot("invoices");
  });

  it("creates an API key shown once, and revokes it", async () => {
    await nav("API keys", "API keys");
    await page.getByRole("button", { name: "Create key" }).click();
    await page.getByRole("dialog").getByLabel("Name").fill("ci-deploy");
    await page.getByRole("dialog").getByRole("button", { name: "Create" }).click();
    await page.getByTestId("new-key").waitFor();
    const key = (await page.getByTestId("new-key").innerText()).trim();
    expect(key).toMatch(/^nxk_[0-9a-f]{16}_/);
    expect((await stack.api("/v1/me", key)).status).toBe(200);
    await page.getByRole("button", { name: "Done" }).click();
    await page.getByRole("cell", { name: "ci-deploy" }).waitFor();
    expect(await text()).not.toContain(key);
    await shot("api-keys");
    const row = page.getByRole("row").filter({ hasText: "ci-deploy" });
    await row.getByRole("button", { name: "Revoke" }).click();
    await row.getByText(/revoked/).waitFor();
    expect((await stack.api("/v1/me", key)).status).toBe(401);
  });

  it("adds a member and changes roles", async () => {
    await nav("Members", "Members and roles");
    await page.getByRole("button", { name: "Add member" }).click();
    await page.getByRole("dialog").getByLabel("Email").fill("ops@acme.example");
    await page.getByRole("dialog").getByRole("button", { name: "Add" }).click();
    await page.getByRole("cell", { name: "ops@acme.example" }).waitFor();
    await page.getByRole("textbox", { name: "Role of ops@acme.example" }).click();
    await page.getByRole("option", { name: "admin" }).click();
    const users = async () => (await stack.api("/v1/users", stack.acme.ownerKey)).body.data;
    for (let i = 0; i < 50; i++) {
      const u = (await users()).find((x: { email: string }) => x.email === "ops@acme.example");
      if (u?.role === "admin") break;
      await page.waitForTimeout(100);
    }
    expect((await users()).find((x: { email: string }) => x.email === "ops@acme.example").role).toBe("admin");
    await shot("members");
  });

  it("lists every change in the audit log", async () => {
    await nav("Audit log", "Audit log");
    await page.getByTestId("audit-table").waitFor();
    const t = await text();
    for (const action of ["routing_domain.create", "routing_domain.update", "endpoint.admission", "mic.issue", "mic.revoke", "invoice.finalize", "api_key.revoke", "user.set_role"]) {
      expect(t).toContain(action);
    }
    await shot("audit");
  });

  it("gives a viewer no mutating controls and says why", async () => {
    await signOut();
    await signIn(stack.acme.viewerKey);
    await until("role", "viewer");
    await nav("Routing domains", "Routing domains");
    await page.getByRole("link", { name: DOMAIN }).waitFor();
    expect(await page.getByRole("button", { name: "Create domain" }).count()).toBe(0);
    expect(await text()).toContain("Creating domains: This needs the member role or higher; you are a viewer.");
    await shot("viewer-domains");
    await page.getByRole("link", { name: DOMAIN }).click();
    await page.getByTestId("admission-coder-a").waitFor();
    for (const label of ["Edit", "Delete", "Advertise endpoint", "Withdraw"]) {
      expect(await page.getByRole("button", { name: label }).count()).toBe(0);
    }
    await nav("Model identities", "Model identities");
    expect(await page.getByRole("button", { name: "Register model" }).count()).toBe(0);
    await page.getByRole("link", { name: MODEL }).click();
    await page.getByTestId("mics-table").waitFor();
    expect(await page.getByRole("button", { name: "Issue MIC" }).count()).toBe(0);
    await nav("Invoices", "Invoices");
    expect(await page.getByRole("button", { name: "Draft invoice" }).count()).toBe(0);
    await nav("Members", "Members and roles");
    expect(await text()).toContain("The member list: This needs the admin role or higher; you are a viewer.");
    await nav("Audit log", "Audit log");
    expect(await text()).toContain("This needs the admin role or higher");
    // The API refuses what the console does not offer.
    const r = await stack.api("/v1/routing-domains", stack.acme.viewerKey, { body: { name: "sneaky" } });
    expect(r.status).toBe(403);
    expect(r.body.code).toBe("forbidden");
  });

  it("never shows another tenant's data", async () => {
    await signOut();
    await signIn(stack.globex.ownerKey);
    await until("tenant-name", "Globex");
    const leaks = [DOMAIN, MODEL, "coder-a", "gpu-east", "ops@acme.example", "ci-deploy"];
    for (const [label, heading] of [
      ["Overview", "Overview"], ["Routing domains", "Routing domains"], ["Model identities", "Model identities"],
      ["Usage", "Usage"], ["Invoices", "Invoices"], ["API keys", "API keys"], ["Members", "Members and roles"],
      ["Audit log", "Audit log"],
    ] as const) {
      await nav(label, heading);
      await page.waitForLoadState("networkidle");
      if (label === "Usage") await until("usage-total-traffic_bytes", "Total 0 B");
      const t = await text();
      for (const leak of leaks) expect(t, `${label} shows ${leak}`).not.toContain(leak);
    }
    // Acme's domain by its id: indistinguishable from a missing one.
    const acmeDomains = await stack.api("/v1/routing-domains", stack.acme.ownerKey);
    const acmeDomain = acmeDomains.body.data[0].id;
    expected = [/status of 404/];
    await page.goto(`${stack.base}/domains/${acmeDomain}`);
    await page.getByTestId("error").first().waitFor();
    expect(await text()).toContain("It does not exist, or it belongs to another tenant.");
    await shot("other-tenant");
  });

  it("is readable at 390 px", async () => {
    await signOut();
    await page.setViewportSize({ width: 390, height: 844 });
    await signIn(stack.acme.ownerKey);
    await page.locator(".recharts-bar-rectangle").first().waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow).toBeLessThanOrEqual(0);
    await shot("overview-390");
    await page.getByRole("button", { name: "Toggle navigation" }).click();
    await nav("Invoices", "Invoices");
    await shot("invoices-390");
    await page.setViewportSize({ width: 1280, height: 860 });
  });
});
