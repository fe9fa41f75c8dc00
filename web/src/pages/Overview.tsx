import { Card, Group, Progress, SimpleGrid, Stack, Table, Text, Title } from "@mantine/core";
import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { useSession } from "../session";
import { unwrap } from "../api/client";
import { currentPeriod, formatBytes, formatTime } from "../api/format";
import { chartRows, total } from "../api/usage";
import { QueryView } from "../components/states";
import { UsageChart } from "../components/UsageChart";

function daysAgo(n: number): string {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  d.setUTCDate(d.getUTCDate() - n);
  return d.toISOString();
}

export function Overview() {
  const { api } = useSession();
  const from = daysAgo(13);
  const monthStart = `${currentPeriod()}-01T00:00:00Z`;
  const traffic = useQuery({
    queryKey: ["usage", "overview-traffic", from],
    queryFn: () =>
      unwrap(api.GET("/v1/usage", { params: { query: { meter: "traffic_bytes", granularity: "day", from } } })),
  });
  const mics = useQuery({
    queryKey: ["usage", "overview-mics", monthStart],
    queryFn: () =>
      unwrap(
        api.GET("/v1/usage", { params: { query: { meter: "mics_issued", granularity: "day", from: monthStart } } }),
      ),
  });
  const bill = useQuery({
    queryKey: ["invoice-preview", currentPeriod()],
    queryFn: () => unwrap(api.GET("/v1/invoices/preview", { params: { query: { period: currentPeriod() } } })),
  });
  const rollouts = useQuery({
    queryKey: ["rollouts", "in-progress"],
    queryFn: () => unwrap(api.GET("/v1/rollouts", { params: { query: { in_progress: true } } })),
  });
  const domains = useQuery({
    queryKey: ["domains", "overview"],
    queryFn: () => unwrap(api.GET("/v1/routing-domains", { params: { query: { limit: 100 } } })),
  });

  return (
    <Stack>
      <Title order={2}>Overview</Title>
      <SimpleGrid cols={{ base: 1, sm: 3 }}>
        <Card withBorder data-testid="card-bill">
          <Text size="sm" c="dimmed">
            This month's running bill
          </Text>
          <QueryView query={bill} label="the running bill">
            {(b) => (
              <Stack gap={2}>
                <Text size="xl" fw={700} data-testid="running-total">
                  {b.total} {b.currency}
                </Text>
                <Text size="xs" c="dimmed">
                  {b.period} · {b.lines.length} line{b.lines.length === 1 ? "" : "s"} ·{" "}
                  <Link to="/invoices">invoices</Link>
                </Text>
              </Stack>
            )}
          </QueryView>
        </Card>
        <Card withBorder data-testid="card-mics">
          <Text size="sm" c="dimmed">
            MICs issued this month
          </Text>
          <QueryView query={mics} label="MIC issuance">
            {(m) => (
              <Text size="xl" fw={700} data-testid="mics-issued">
                {total(m, "mics_issued")}
              </Text>
            )}
          </QueryView>
        </Card>
        <Card withBorder data-testid="card-domains">
          <Text size="sm" c="dimmed">
            Routing domains
          </Text>
          <QueryView query={domains} label="routing domains">
            {(d) => (
              <Stack gap={2}>
                <Text size="xl" fw={700}>
                  {d.data.length}
                  {d.next_cursor ? "+" : ""}
                </Text>
                <Text size="xs" c="dimmed">
                  Endpoints: {d.data.reduce((s, x) => s + x.endpoints_admitted, 0)} admitted ·{" "}
                  {d.data.reduce((s, x) => s + x.endpoints_rejected, 0)} rejected
                </Text>
              </Stack>
            )}
          </QueryView>
        </Card>
      </SimpleGrid>
      <Card withBorder>
        <Group justify="space-between">
          <Title order={3} size="h4">
            Traffic per day
          </Title>
          <Text size="sm" c="dimmed">
            last 14 days · <Link to="/usage">usage</Link>
          </Text>
        </Group>
        <QueryView query={traffic} label="traffic">
          {(t) =>
            total(t, "traffic_bytes") === 0 ? (
              <Text c="dimmed" py="lg" ta="center" data-testid="empty">
                No traffic in the last 14 days. Dataplanes report it as traffic_bytes usage.
              </Text>
            ) : (
            <Stack gap="xs">
              <Text size="sm">Total: {formatBytes(total(t, "traffic_bytes"))}</Text>
              <UsageChart
                data={chartRows(t, "traffic_bytes")}
                meter="traffic_bytes"
                granularity="day"
                label="Traffic per day, last 14 days"
              />
            </Stack>
            )
          }
        </QueryView>
      </Card>
      <Card withBorder>
        <Title order={3} size="h4" mb="xs">
          Fleet rollouts in progress
        </Title>
        <QueryView
          query={rollouts}
          label="rollouts"
          isEmpty={(r) => r.data.length === 0}
          empty="No rollout in progress on your clusters."
        >
          {(r) => (
            <div className="table-scroll">
              <Table>
                <Table.Thead>
                  <Table.Tr>
                    <Table.Th>Cluster</Table.Th>
                    <Table.Th>Fabric</Table.Th>
                    <Table.Th>Phase</Table.Th>
                    <Table.Th>Target</Table.Th>
                    <Table.Th>Progress</Table.Th>
                    <Table.Th>Reported</Table.Th>
                  </Table.Tr>
                </Table.Thead>
                <Table.Tbody>
                  {r.data.map((x) => {
                    const pct = x.nodes_total > 0 ? (100 * x.nodes_updated) / x.nodes_total : 0;
                    return (
                      <Table.Tr key={`${x.cluster_id}/${x.fabric}`}>
                        <Table.Td>{x.cluster_name}</Table.Td>
                        <Table.Td>{x.fabric}</Table.Td>
                        <Table.Td>{x.phase}</Table.Td>
                        <Table.Td>{x.target_version}</Table.Td>
                        <Table.Td miw={140}>
                          <Progress value={pct} aria-label={`${x.nodes_updated} of ${x.nodes_total} nodes updated`} />
                          <Text size="xs">
                            {x.nodes_updated}/{x.nodes_total} updated
                            {x.nodes_failed > 0 ? `, ${x.nodes_failed} failed` : ""}
                          </Text>
                        </Table.Td>
                        <Table.Td>{formatTime(x.reported_at)}</Table.Td>
                      </Table.Tr>
                    );
                  })}
                </Table.Tbody>
              </Table>
            </div>
          )}
        </QueryView>
      </Card>
    </Stack>
  );
}
