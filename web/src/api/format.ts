// Display helpers. Money is never formatted here: the API's decimal strings are shown as they are.

const UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];

/** 1234567 → "1.23 MB" (decimal units, as the price plan's GB is 10^9 bytes). */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return String(n);
  let v = n;
  let i = 0;
  while (v >= 1000 && i < UNITS.length - 1) {
    v /= 1000;
    i += 1;
  }
  const digits = i === 0 || v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${UNITS[i]}`;
}

/** A quantity of `meter` in words: bytes for traffic, plain counts otherwise. */
export function formatQuantity(meter: string, n: number): string {
  if (meter === "traffic_bytes") return formatBytes(n);
  return new Intl.NumberFormat("en-US").format(n);
}

export const METER_LABELS: Record<string, string> = {
  traffic_bytes: "Traffic",
  mics_issued: "MICs issued",
  cluster_hours: "Cluster hours",
};

/** "2026-11-05T10:00:00Z" → "2026-11-05 10:00 UTC". */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

export function formatDate(iso: string | null | undefined): string {
  if (!iso) return "—";
  return iso.slice(0, 10);
}

/** The current month as `YYYY-MM` (UTC), as the API names billing periods. */
export function currentPeriod(now: Date = new Date()): string {
  return now.toISOString().slice(0, 7);
}
