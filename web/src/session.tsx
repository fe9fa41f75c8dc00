import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { useQueryClient } from "@tanstack/react-query";
import { createApi, unwrap, type Api } from "./api/client";
import { sessionKeyStore } from "./api/session";
import { ApiError } from "./api/problem";
import { permission, type Me, type Permission } from "./api/access";
import type { OperationId } from "./api/access.gen";

interface Session {
  api: Api;
  me: Me | undefined;
  /** True while a stored key is being checked on load. */
  restoring: boolean;
  signIn(key: string): Promise<void>;
  signOut(): void;
  can(op: OperationId): Permission;
}

const Ctx = createContext<Session | null>(null);

export function SessionProvider({ children }: { children: ReactNode }) {
  const store = useMemo(() => sessionKeyStore(), []);
  const [key, setKey] = useState<string | null>(() => store.get());
  const [me, setMe] = useState<Me | undefined>(undefined);
  const [restoring, setRestoring] = useState<boolean>(() => store.get() !== null);
  const queryClient = useQueryClient();
  const api = useMemo(() => createApi(() => key), [key]);

  const signOut = useCallback(() => {
    store.clear();
    setKey(null);
    setMe(undefined);
    queryClient.clear();
  }, [store, queryClient]);

  const signIn = useCallback(
    async (candidate: string) => {
      const trimmed = candidate.trim();
      const probe = createApi(() => trimmed);
      const who = await unwrap(probe.GET("/v1/me"));
      store.set(trimmed);
      queryClient.clear();
      setKey(trimmed);
      setMe(who);
    },
    [store, queryClient],
  );

  useEffect(() => {
    if (!restoring || !key) return;
    let live = true;
    unwrap(api.GET("/v1/me"))
      .then((who) => live && setMe(who))
      .catch((e) => {
        if (live && e instanceof ApiError && e.status === 401) signOut();
      })
      .finally(() => live && setRestoring(false));
    return () => {
      live = false;
    };
  }, [restoring, key, api, signOut]);

  const value = useMemo<Session>(
    () => ({ api, me, restoring, signIn, signOut, can: (op) => permission(me, op) }),
    [api, me, restoring, signIn, signOut],
  );
  return <Ctx.Provider value={value}>{children}</Ctx.Provider>;
}

export function useSession(): Session {
  const s = useContext(Ctx);
  if (!s) throw new Error("useSession outside SessionProvider");
  return s;
}
