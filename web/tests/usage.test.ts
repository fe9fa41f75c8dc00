import { describe, expect, it } from "vitest";
import { bucketStarts, chartRows, dayRange, total, NO_DOMAIN, type UsageSeries } from "../src/api/usage";

const series = (over: Partial<UsageSeries>): UsageSeries => ({
  from: "2026-11-01T00:00:00Z",
  to: "2026-11-04T00:00:00Z",
  granularity: "day",
  group_by: "meter",
  buckets: [],
  ...over,
});

describe("usage charts", () => {
  it("has one row per bucket of the range, zero where the API had none", () => {
    const s = series({
      buckets: [
        { meter: "traffic_bytes", start: "2026-11-02T00:00:00Z", quantity: 500, events: 2 },
        { meter: "mics_issued", start: "2026-11-01T00:00:00Z", quantity: 3, events: 3 },
      ],
    });
    const d = chartRows(s, "traffic_bytes");
    expect(d.series).toEqual(["traffic_bytes"]);
    expect(d.rows.map((r) => r.traffic_bytes)).toEqual([0, 500, 0]);
    expect(d.rows.map((r) => r.start)).toEqual([
      "2026-11-01T00:00:00.000Z",
      "2026-11-02T00:00:00.000Z",
      "2026-11-03T00:00:00.000Z",
    ]);
    expect(total(s, "mics_issued")).toBe(3);
  });

  it("stacks one series per domain, naming usage without a domain", () => {
    const s = series({
      group_by: "domain",
      buckets: [
        { meter: "traffic_bytes", domain: "prod", start: "2026-11-01T00:00:00Z", quantity: 10, events: 1 },
        { meter: "traffic_bytes", domain: "", start: "2026-11-01T00:00:00Z", quantity: 5, events: 1 },
        { meter: "traffic_bytes", domain: "edge", start: "2026-11-03T00:00:00Z", quantity: 7, events: 1 },
      ],
    });
    const d = chartRows(s, "traffic_bytes");
    expect(d.series).toEqual([NO_DOMAIN, "edge", "prod"]);
    expect(d.rows[0]).toMatchObject({ prod: 10, [NO_DOMAIN]: 5, edge: 0 });
    expect(d.rows[2]).toMatchObject({ edge: 7 });
  });

  it("aligns hourly buckets to UTC hours and days to UTC days", () => {
    expect(bucketStarts("2026-11-01T10:30:00Z", "2026-11-01T13:00:00Z", "hour")).toEqual([
      "2026-11-01T10:00:00.000Z",
      "2026-11-01T11:00:00.000Z",
      "2026-11-01T12:00:00.000Z",
    ]);
    expect(bucketStarts("2026-11-05T00:00:00Z", "2026-11-05T00:00:00Z", "day")).toEqual([]);
  });

  it("turns a date picker's days into the API's half-open range", () => {
    expect(dayRange("2026-11-01", "2026-11-30")).toEqual({ from: "2026-11-01T00:00:00Z", to: "2026-12-01T00:00:00Z" });
  });
});
