// What the signed-in caller may do, from the contract's `x-nexus-access` of each operation.
import { ACCESS, type OperationId } from "./access.gen";
import type { components } from "./schema";

export type Me = components["schemas"]["Me"];
export type Role = components["schemas"]["Role"];
export type Scope = components["schemas"]["Scope"];

const RANK: Record<Role, number> = { viewer: 0, member: 1, admin: 2, owner: 3 };

export interface Permission {
  allowed: boolean;
  /** Why not, in words; empty when allowed. */
  reason: string;
}

/** Whether `me` may call `op`, and if not, why. */
export function permission(me: Pick<Me, "user" | "scopes"> | undefined, op: OperationId): Permission {
  const need = ACCESS[op] as { operator?: boolean; role?: Role; scope?: Scope };
  if (!me) return { allowed: false, reason: "Sign in first." };
  if (need.operator) {
    return { allowed: false, reason: "Only the platform operator can do this." };
  }
  const role = need.role as Role;
  const scope = need.scope as Scope;
  if (RANK[me.user.role] < RANK[role]) {
    return {
      allowed: false,
      reason: `This needs the ${role} role or higher; you are ${article(me.user.role)} ${me.user.role}.`,
    };
  }
  if (!me.scopes.includes(scope)) {
    return {
      allowed: false,
      reason: `This needs an API key with the ${scope} scope; yours has ${me.scopes.join(", ") || "none"}.`,
    };
  }
  return { allowed: true, reason: "" };
}

function article(word: string): string {
  return /^[aeiou]/.test(word) ? "an" : "a";
}
