// The API client, generated from openapi.json (openapi-typescript + openapi-fetch): a change of
// the contract changes these types, and the build fails where the console no longer fits it.
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema";
import { ApiError } from "./problem";

export type Api = ReturnType<typeof createApi>;

/** A client for the API at `baseUrl` (the console's own origin in the browser). */
export function createApi(getKey: () => string | null, baseUrl = "", fetchImpl?: typeof fetch) {
  const client = createClient<paths>({ baseUrl, ...(fetchImpl ? { fetch: fetchImpl } : {}) });
  const auth: Middleware = {
    onRequest({ request }) {
      const key = getKey();
      if (key) request.headers.set("Authorization", `Bearer ${key}`);
      return request;
    },
  };
  client.use(auth);
  return client;
}

interface Result<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** The data of a successful answer; an ApiError (with the problem document) otherwise. */
export async function unwrap<T>(call: Promise<Result<T>>): Promise<T> {
  let r: Result<T>;
  try {
    r = await call;
  } catch (e) {
    throw ApiError.network(e);
  }
  if (!r.response.ok) throw ApiError.fromProblem(r.response.status, r.error);
  // 204 answers carry no body.
  return r.data as T;
}

/** A schema of the contract by name. Request bodies are written `{…} satisfies S<"CreateKey">`,
 * so a field the contract no longer has is a compile error too, not only a missing one. */
export type S<K extends keyof components["schemas"]> = components["schemas"][K];
