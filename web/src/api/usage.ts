// Turning the API's usage series into chart rows: pure, so it is unit-tested.
import type { components } from "./schema";

export type UsageSeries = components["schemas"]["UsageSeries"];
export type Granularity = components["schemas"]["Granularity"];

export const NO_DOMAIN = "(no domain)";

export interface ChartData {
  /** One row per bucket start in the range, every series present (0 when it had no usage). */
  rows: Array<Record<string, number | string>>;
  /** Series names in a stable order. */
  series: string[];
}

const STEP_MS: Record<Granularity, number> = { hour: 3_600_000, day: 86_400_000 };

/** Bucket starts of [from, to) at `granularity`, aligned to UTC hours or days. */
export function bucketStarts(from: string, to: string, granularity: Granularity): string[] {
  const step = STEP_MS[granularity];
  const start = Math.floor(Date.parse(from) / step) * step;
  const end = Date.parse(to);
  const out: string[] = [];
  for (let t = start; t < end && out.length < 10_000; t += step) {
    out.push(new Date(t).toISOString());
  }
  return out;
}

/** Rows for a chart of one meter (or all meters when grouping by meter). */
export function chartRows(series: UsageSeries, meter: string | null): ChartData {
  const byDomain = series.group_by === "domain";
  const key = (b: UsageSeries["buckets"][number]) =>
    byDomain ? b.domain || NO_DOMAIN : b.meter;
  const buckets = series.buckets.filter((b) => meter === null || b.meter === meter);
  const names = Array.from(new Set(buckets.map(key))).sort();
  const rows = new Map<string, Record<string, number | string>>();
  for (const start of bucketStarts(series.from, series.to, series.granularity)) {
    const row: Record<string, number | string> = { start };
    for (const n of names) row[n] = 0;
    rows.set(start, row);
  }
  for (const b of buckets) {
    const start = new Date(Date.parse(b.start)).toISOString();
    const row = rows.get(start) ?? { start };
    row[key(b)] = Number(row[key(b)] ?? 0) + b.quantity;
    rows.set(start, row);
  }
  return {
    rows: Array.from(rows.values()).sort((a, b) => String(a.start).localeCompare(String(b.start))),
    series: names,
  };
}

/** Sum of one meter's quantities over the series. */
export function total(series: UsageSeries, meter: string): number {
  return series.buckets.filter((b) => b.meter === meter).reduce((s, b) => s + b.quantity, 0);
}

/** `YYYY-MM-DD` dates → the RFC 3339 range the API takes: [from 00:00, to + 1 day 00:00) UTC. */
export function dayRange(fromDay: string, toDay: string): { from: string; to: string } {
  const from = `${fromDay}T00:00:00Z`;
  const end = new Date(Date.parse(`${toDay}T00:00:00Z`) + STEP_MS.day);
  return { from, to: end.toISOString().replace(".000Z", "Z") };
}
