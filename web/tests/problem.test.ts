import { describe, expect, it } from "vitest";
import { ApiError, describeProblem, isProblem } from "../src/api/problem";

describe("problem documents", () => {
  it("reads a problem+json body", () => {
    const e = ApiError.fromProblem(409, {
      type: "https://nexus.dev/problems/already-exists",
      title: "Conflict",
      status: 409,
      detail: "a routing domain with this name already exists",
      code: "already_exists",
    });
    expect(e.status).toBe(409);
    expect(e.code).toBe("already_exists");
    expect(describeProblem(e)).toBe(
      "Something with this name already exists. Choose another name. A routing domain with this name already exists.",
    );
  });

  it("says what a forbidden action needs, in the server's words", () => {
    const e = ApiError.fromProblem(403, {
      type: "t", title: "Forbidden", status: 403, code: "forbidden",
      detail: "this action needs role admin or higher; the key's user is viewer",
    });
    expect(describeProblem(e)).toContain("Your role or your key's scopes do not allow this.");
    expect(describeProblem(e)).toContain("needs role admin");
  });

  it("never shows internals of a 500", () => {
    const e = ApiError.fromProblem(500, { type: "t", title: "Internal Server Error", status: 500, code: "internal", detail: "internal error" });
    expect(describeProblem(e)).toBe("The server failed unexpectedly. Retry; if it keeps failing, contact support.");
  });

  it("copes with bodies that are not problems", () => {
    expect(isProblem({ status: 1 })).toBe(false);
    const e = ApiError.fromProblem(502, "Bad Gateway");
    expect(e.code).toBe("internal");
    expect(describeProblem(e)).toContain("failed unexpectedly");
    const n = ApiError.network(new TypeError("Failed to fetch"));
    expect(n.status).toBe(0);
    expect(describeProblem(n)).toContain("could not be reached");
  });

  it("keeps unknown codes readable", () => {
    const e = ApiError.fromProblem(418, { type: "t", title: "Teapot", status: 418, code: "teapot", detail: "short and stout" });
    expect(describeProblem(e)).toBe("short and stout");
  });
});
