// RFC 9457 problem documents from the API, in words a person can act on.
import type { components } from "./schema";

export type Problem = components["schemas"]["Problem"];

/** An error answer of the API (or a network failure, status 0). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  readonly title: string;

  constructor(status: number, code: string, title: string, detail: string) {
    super(`${title}: ${detail}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.title = title;
    this.detail = detail;
  }

  static fromProblem(status: number, body: unknown): ApiError {
    if (isProblem(body)) {
      return new ApiError(body.status, body.code, body.title, body.detail);
    }
    const text = typeof body === "string" && body.length > 0 ? body : "no details were given";
    return new ApiError(status, status >= 500 ? "internal" : "unknown", `HTTP ${status}`, text);
  }

  static network(cause: unknown): ApiError {
    const why = cause instanceof Error ? cause.message : String(cause);
    return new ApiError(0, "network", "Network error", why);
  }
}

export function isProblem(body: unknown): body is Problem {
  if (typeof body !== "object" || body === null) return false;
  const b = body as Record<string, unknown>;
  return typeof b.status === "number" && typeof b.code === "string" && typeof b.detail === "string";
}

/** What went wrong and what to do, for each stable problem code; the server's detail follows. */
const WORDS: Record<string, string> = {
  unauthenticated: "Your API key is missing, revoked or expired. Sign in again with a valid key.",
  forbidden: "Your role or your key's scopes do not allow this.",
  not_found: "It does not exist, or it belongs to another tenant.",
  already_exists: "Something with this name already exists. Choose another name.",
  validation_failed: "Some input is not valid.",
  invalid_body: "The request did not have the expected fields.",
  malformed_json: "The request was not valid JSON.",
  invalid_query: "A filter or option is not valid.",
  invalid_cursor: "The page position is no longer valid. Reload the list.",
  invalid_limit: "The page size is not valid.",
  rate_limited: "Too many requests with this key. Wait a moment and retry.",
  invoice_finalized: "This invoice is finalized and can no longer change.",
  amount_too_large: "The usage of this month rates above what an invoice can hold.",
  last_owner: "A tenant needs at least one owner. Make someone else owner first.",
  request_id_reused: "This request id was already used for a different request.",
  ca_refused: "The certificate authority refused the request.",
  ca_unavailable: "The certificate authority is unavailable. Retry in a moment.",
  ca_not_configured: "This server has no certificate authority configured, so MICs cannot be issued here.",
  database_unavailable: "The service's database is unavailable. Retry in a moment.",
  body_too_large: "The request is too large.",
  unsupported_media_type: "The request was not sent as JSON.",
  method_not_allowed: "This action is not supported here.",
  internal: "The server failed unexpectedly. Retry; if it keeps failing, contact support.",
  network: "The server could not be reached. Check your connection and retry.",
};

/** A sentence for the user: what the code means, then the server's own detail. */
export function describeProblem(e: unknown): string {
  if (e instanceof ApiError) {
    const words = WORDS[e.code];
    const detail = e.detail.trim();
    if (!words) return detail || e.title;
    if (!detail || e.code === "internal") return words;
    return `${words} ${capitalize(detail)}${/[.!?]$/.test(detail) ? "" : "."}`;
  }
  if (e instanceof Error) return e.message;
  return String(e);
}

function capitalize(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
