import { describe, expect, it } from "vitest";
import { currentPeriod, formatBytes, formatQuantity, formatTime } from "../src/api/format";

describe("formatting", () => {
  it("uses decimal byte units, as the price plan's GB is 10^9 bytes", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(999)).toBe("999 B");
    expect(formatBytes(1_500_000)).toBe("1.50 MB");
    expect(formatBytes(5e12)).toBe("5.00 TB");
    expect(formatQuantity("mics_issued", 12345)).toBe("12,345");
  });

  it("writes times in UTC and periods as the API names them", () => {
    expect(formatTime("2026-11-05T10:07:00Z")).toBe("2026-11-05 10:07 UTC");
    expect(formatTime(null)).toBe("—");
    expect(currentPeriod(new Date("2026-12-31T23:59:59Z"))).toBe("2026-12");
  });
});
