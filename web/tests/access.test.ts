import { describe, expect, it } from "vitest";
import { permission, type Me } from "../src/api/access";
import { ACCESS } from "../src/api/access.gen";

function me(role: Me["user"]["role"], scopes: Me["scopes"]): Pick<Me, "user" | "scopes"> {
  return { user: { id: "u", email: "a@b.c", role, created_at: "2026-01-01T00:00:00Z" }, scopes };
}

describe("permissions from the contract's x-nexus-access", () => {
  it("is generated for every operation", () => {
    expect(Object.keys(ACCESS).length).toBeGreaterThanOrEqual(45);
    expect(ACCESS.finalize_invoice).toEqual({ role: "admin", scope: "admin" });
    expect(ACCESS.create_tenant_handler).toEqual({ operator: true });
  });

  it("lets a viewer read and nothing else", () => {
    const v = me("viewer", ["read", "write", "admin"]);
    expect(permission(v, "list_domains").allowed).toBe(true);
    const create = permission(v, "create_domain");
    expect(create.allowed).toBe(false);
    expect(create.reason).toBe("This needs the member role or higher; you are a viewer.");
  });

  it("limits a role by its key's scopes", () => {
    const owner = me("owner", ["read"]);
    const p = permission(owner, "create_domain");
    expect(p.allowed).toBe(false);
    expect(p.reason).toContain("write scope");
    expect(permission(me("owner", ["read", "write", "admin"]), "finalize_invoice").allowed).toBe(true);
    expect(permission(me("admin", ["read", "write"]), "finalize_invoice").allowed).toBe(false);
  });

  it("never offers operator actions to a tenant", () => {
    expect(permission(me("owner", ["read", "write", "admin"]), "set_admission").reason).toContain("operator");
    expect(permission(undefined, "list_domains").allowed).toBe(false);
  });
});
