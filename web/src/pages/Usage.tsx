import { useState } from "react";
import { Card, Group, SegmentedControl, Select, SimpleGrid, Stack, Table, Text, TextInput, Title } from "@mantine/core";
import { useQuery } from "@tanstack/react-query";
import { useSession } from "../session";
import { unwrap } from "../api/client";
import { METER_LABELS, formatQuantity } from "../api/format";
import { chartRows, dayRange, total, NO_DOMAIN, type Granularity } from "../api/usage";
import { QueryView } from "../components/states";
import { UsageChart } from "../components/UsageChart";
import type { components } from "../api/schema";

type Meter = components["schemas"]["Meter"];
const METERS: Meter[] = ["traffic_bytes", "mics_issued", "cluster_hours"];

function isoDay(offsetDays: number): string {
  const d = new Date();
  d.setUTCDate(d.getUTCDate() + offsetDays);
  return d.toISOString().slice(0, 10);
}

export function Usage() {
  const { api } = useSession();
  const [fromDay, setFromDay] = useState(isoDay(-6));
  const [toDay, setToDay] = useState(isoDay(0));
  const [granularity, setGranularity] = useState<Granularity>("day");
  const [groupBy, setGroupBy] = useState<"meter" | "domain">("meter");
  const [meter, setMeter] = useState<Meter>("traffic_bytes");
  const validRange = /^\d{4}-\d{2}-\d{2}$/.test(fromDay) && /^\d{4}-\d{2}-\d{2}$/.test(toDay) && fromDay <= toDay;
  const range = validRange ? dayRange(fromDay, toDay) : null;
  const usage = useQuery({
    queryKey: ["usage", range, granularity, groupBy],
    enabled: range !== null,
    queryFn: () =>
      unwrap(
        api.GET("/v1/usage", {
          params: { query: { from: range?.from, to: range?.to, granularity, group_by: groupBy } },
        }),
      ),
  });

  return (
    <Stack>
      <Title order={2}>Usage</Title>
      <Card withBorder>
        <Group align="flex-end" wrap="wrap">
          <TextInput type="date" label="From" value={fromDay} onChange={(e) => setFromDay(e.currentTarget.value)} />
          <TextInput type="date" label="To (inclusive)" value={toDay} onChange={(e) => setToDay(e.currentTarget.value)} />
          <div>
            <Text size="sm" fw={500} id="granularity-label">
              Granularity
            </Text>
            <SegmentedControl
              aria-labelledby="granularity-label"
              value={granularity}
              onChange={(v) => setGranularity(v as Granularity)}
              data={[
                { value: "day", label: "Day" },
                { value: "hour", label: "Hour" },
              ]}
            />
          </div>
          <div>
            <Text size="sm" fw={500} id="groupby-label">
              Split by
            </Text>
            <SegmentedControl
              aria-labelledby="groupby-label"
              value={groupBy}
              onChange={(v) => setGroupBy(v as "meter" | "domain")}
              data={[
                { value: "meter", label: "Meter" },
                { value: "domain", label: "Domain" },
              ]}
            />
          </div>
          {groupBy === "domain" && (
            <Select
              label="Meter"
              data={METERS.map((m) => ({ value: m, label: METER_LABELS[m] ?? m }))}
              value={meter}
              onChange={(v) => v && setMeter(v as Meter)}
              allowDeselect={false}
            />
          )}
        </Group>
        {!validRange && (
          <Text c="red" size="sm" mt="xs" role="alert">
            Choose a start date on or before the end date.
          </Text>
        )}
      </Card>
      {range && (
        <QueryView query={usage} label="usage">
          {(u) => {
            const cut = u.to !== range.to;
            return (
              <Stack>
                {cut && (
                  <Text size="sm" c="orange">
                    {granularity === "hour" ? "Hourly" : "Daily"} usage is answered for at most{" "}
                    {granularity === "hour" ? "31" : "400"} days: showing until {u.to.slice(0, 10)}.
                  </Text>
                )}
                {groupBy === "meter" ? (
                  <SimpleGrid cols={{ base: 1, md: 3 }}>
                    {METERS.map((m) => (
                      <Card withBorder key={m} data-testid={`usage-${m}`}>
                        <Text fw={600}>{METER_LABELS[m]}</Text>
                        <Text size="sm" c="dimmed" data-testid={`usage-total-${m}`}>
                          Total {formatQuantity(m, total(u, m))}
                        </Text>
                        <UsageChart data={chartRows(u, m)} meter={m} granularity={u.granularity} height={200} label={`${METER_LABELS[m]} by ${u.granularity}`} />
                      </Card>
                    ))}
                  </SimpleGrid>
                ) : (
                  <Card withBorder>
                    <Text fw={600}>
                      {METER_LABELS[meter]} by routing domain
                    </Text>
                    <UsageChart data={chartRows(u, meter)} meter={meter} granularity={u.granularity} label={`${METER_LABELS[meter]} by domain`} />
                  </Card>
                )}
                <UsageTable u={u} meter={groupBy === "domain" ? meter : null} />
              </Stack>
            );
          }}
        </QueryView>
      )}
    </Stack>
  );
}

function UsageTable({ u, meter }: { u: components["schemas"]["UsageSeries"]; meter: Meter | null }) {
  const rows = u.buckets.filter((b) => meter === null || b.meter === meter);
  if (rows.length === 0) {
    return (
      <Text c="dimmed" data-testid="empty">
        No usage in this range.
      </Text>
    );
  }
  return (
    <Card withBorder>
      <Text fw={600} mb="xs">
        Buckets
      </Text>
      <div className="table-scroll">
        <Table data-testid="usage-table">
          <Table.Thead>
            <Table.Tr>
              <Table.Th>Start (UTC)</Table.Th>
              <Table.Th>Meter</Table.Th>
              {u.group_by === "domain" && <Table.Th>Domain</Table.Th>}
              <Table.Th>Quantity</Table.Th>
              <Table.Th>Events</Table.Th>
            </Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {rows.map((b) => (
              <Table.Tr key={`${b.meter}/${b.domain ?? ""}/${b.start}`}>
                <Table.Td>{b.start.slice(0, 16).replace("T", " ")}</Table.Td>
                <Table.Td>{METER_LABELS[b.meter] ?? b.meter}</Table.Td>
                {u.group_by === "domain" && <Table.Td>{b.domain || NO_DOMAIN}</Table.Td>}
                <Table.Td>
                  {b.quantity.toLocaleString("en-US")}
                  {b.meter === "traffic_bytes" ? ` (${formatQuantity(b.meter, b.quantity)})` : ""}
                </Table.Td>
                <Table.Td>{b.events}</Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      </div>
    </Card>
  );
}
