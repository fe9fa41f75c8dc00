import { describe, expect, it } from "vitest";
import { createApi, unwrap } from "../src/api/client";
import { ApiError } from "../src/api/problem";
import { looksLikeApiKey, sessionKeyStore } from "../src/api/session";

/** Records requests and answers with `reply`. */
function recorder(reply: (req: Request) => Response) {
  const seen: Request[] = [];
  const fetchImpl = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const req = input instanceof Request ? input : new Request(input, init);
    seen.push(req);
    return reply(req);
  }) as typeof fetch;
  return { seen, fetchImpl };
}

const json = (status: number, body: unknown, type = "application/json") =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": type } });

describe("the generated client", () => {
  it("sends the key as a bearer token, never in the URL", async () => {
    const { seen, fetchImpl } = recorder(() => json(200, { data: [], next_cursor: null }));
    const api = createApi(() => "nxk_0123456789abcdef_secret", "http://api.test", fetchImpl);
    await unwrap(api.GET("/v1/routing-domains", { params: { query: { limit: 5 } } }));
    expect(seen[0]!.headers.get("authorization")).toBe("Bearer nxk_0123456789abcdef_secret");
    expect(seen[0]!.url).toBe("http://api.test/v1/routing-domains?limit=5");
    expect(seen[0]!.url).not.toContain("nxk_");
  });

  it("turns problem+json answers into ApiErrors", async () => {
    const { fetchImpl } = recorder(() =>
      json(403, { type: "t", title: "Forbidden", status: 403, detail: "needs admin", code: "forbidden" }, "application/problem+json"),
    );
    const api = createApi(() => "k", "http://api.test", fetchImpl);
    const err = await unwrap(api.GET("/v1/audit-events")).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe("forbidden");
    expect((err as ApiError).detail).toBe("needs admin");
  });

  it("reports an unreachable server as a network error", async () => {
    const fetchImpl = (async () => {
      throw new TypeError("Failed to fetch");
    }) as typeof fetch;
    const api = createApi(() => "k", "http://api.test", fetchImpl);
    const err = await unwrap(api.GET("/v1/me")).catch((e: unknown) => e);
    expect((err as ApiError).code).toBe("network");
  });

  it("accepts 204 answers without a body", async () => {
    const { seen, fetchImpl } = recorder(() => new Response(null, { status: 204 }));
    const api = createApi(() => "k", "http://api.test", fetchImpl);
    await unwrap(api.DELETE("/v1/api-keys/{id}", { params: { path: { id: "1d2c" } } }));
    expect(seen[0]!.method).toBe("DELETE");
  });
});

describe("the key store", () => {
  it("keeps the key in session storage only", () => {
    const store = sessionKeyStore(window.sessionStorage);
    store.set("nxk_0123456789abcdef_x");
    expect(window.sessionStorage.getItem("nexus.console.apiKey")).toBe("nxk_0123456789abcdef_x");
    expect(window.localStorage.length).toBe(0);
    store.clear();
    expect(store.get()).toBeNull();
  });

  it("recognises the shape of a key", () => {
    expect(looksLikeApiKey(" nxk_0123456789abcdef_AbC-_9 ")).toBe(true);
    expect(looksLikeApiKey("nxk_short_x")).toBe(false);
    expect(looksLikeApiKey("Bearer nxk_0123456789abcdef_x")).toBe(false);
  });
});
