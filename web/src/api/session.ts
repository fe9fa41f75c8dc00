// The API key lives in sessionStorage: it survives a reload of the tab, is not shared with other
// tabs, disappears when the tab closes, and never appears in a URL.
const KEY = "nexus.console.apiKey";

export interface KeyStore {
  get(): string | null;
  set(key: string): void;
  clear(): void;
}

export function sessionKeyStore(storage: Storage = window.sessionStorage): KeyStore {
  return {
    get: () => storage.getItem(KEY),
    set: (key) => storage.setItem(KEY, key),
    clear: () => storage.removeItem(KEY),
  };
}

/** Whether `text` has the shape of a Nexus API key (`nxk_<16 hex>_<secret>`). */
export function looksLikeApiKey(text: string): boolean {
  return /^nxk_[0-9a-fA-F]{16}_[A-Za-z0-9_-]+$/.test(text.trim());
}
