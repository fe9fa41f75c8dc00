import { Alert, Badge, Button, Card, Group, Stack, Table, Text, Title } from "@mantine/core";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useParams } from "react-router";
import { useSession } from "../session";
import { unwrap } from "../api/client";
import type { components } from "../api/schema";
import { formatTime } from "../api/format";
import { ErrorAlert, NotAllowed, QueryView } from "../components/states";

type Line = components["schemas"]["InvoiceLine"];

/** Invoice lines and total exactly as the API states them (decimal strings, never recomputed). */
export function LineTable({ lines, total, currency, testId }: { lines: Line[]; total: string; currency: string; testId: string }) {
  if (lines.length === 0) {
    return (
      <Stack gap="xs">
        <Text c="dimmed" data-testid="empty">
          No billable usage.
        </Text>
        <Text fw={700} data-testid={`${testId}-total`}>
          Total {total} {currency}
        </Text>
      </Stack>
    );
  }
  return (
    <div className="table-scroll">
      <Table data-testid={testId}>
        <Table.Thead>
          <Table.Tr>
            <Table.Th>Description</Table.Th>
            <Table.Th>Quantity</Table.Th>
            <Table.Th>Unit</Table.Th>
            <Table.Th>Unit price</Table.Th>
            <Table.Th style={{ textAlign: "right" }}>Amount</Table.Th>
          </Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {lines.map((l) => (
            <Table.Tr key={l.position}>
              <Table.Td>{l.description}</Table.Td>
              <Table.Td>{l.quantity.toLocaleString("en-US")}</Table.Td>
              <Table.Td>{l.unit}</Table.Td>
              <Table.Td>{l.unit_price}</Table.Td>
              <Table.Td style={{ textAlign: "right" }} className="mono">
                {l.amount}
              </Table.Td>
            </Table.Tr>
          ))}
        </Table.Tbody>
        <Table.Tfoot>
          <Table.Tr>
            <Table.Th colSpan={4}>Total ({currency})</Table.Th>
            <Table.Th style={{ textAlign: "right" }} className="mono" data-testid={`${testId}-total`}>
              {total}
            </Table.Th>
          </Table.Tr>
        </Table.Tfoot>
      </Table>
    </div>
  );
}

export function InvoiceDetail() {
  const { id = "" } = useParams();
  const { api, can } = useSession();
  const qc = useQueryClient();
  const invoice = useQuery({
    queryKey: ["invoices", id],
    queryFn: () => unwrap(api.GET("/v1/invoices/{id}", { params: { path: { id } } })),
  });
  const finalize = useMutation({
    mutationFn: () => unwrap(api.POST("/v1/invoices/{id}/finalize", { params: { path: { id } } })),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["invoices"] }),
  });
  const allowed = can("finalize_invoice");
  return (
    <QueryView query={invoice} label="the invoice">
      {(inv) => (
        <Stack>
          <Group justify="space-between">
            <Title order={2}>Invoice {inv.period}</Title>
            <Badge size="lg" color={inv.status === "finalized" ? "green" : "yellow"} variant="light" data-testid="invoice-status">
              {inv.status}
            </Badge>
          </Group>
          <Text size="sm" c="dimmed">
            {formatTime(inv.period_start)} – {formatTime(inv.period_end)} · drafted {formatTime(inv.created_at)}
            {inv.finalized_at ? ` · finalized ${formatTime(inv.finalized_at)}` : ""}
          </Text>
          <Card withBorder>
            <LineTable lines={inv.lines} total={inv.total} currency={inv.currency} testId="invoice-lines" />
          </Card>
          {inv.status === "draft" &&
            (allowed.allowed ? (
              <Card withBorder>
                <Stack gap="xs">
                  <Text size="sm">
                    Finalizing re-rates the month one last time and freezes it: the invoice and that month's usage
                    never change afterwards.
                  </Text>
                  <Group>
                    <Button
                      color="green"
                      loading={finalize.isPending}
                      onClick={() => {
                        if (window.confirm(`Finalize the invoice of ${inv.period}? This cannot be undone.`)) {
                          finalize.mutate();
                        }
                      }}
                    >
                      Finalize
                    </Button>
                  </Group>
                </Stack>
              </Card>
            ) : (
              <NotAllowed reason={`Finalizing: ${allowed.reason}`} />
            ))}
          {finalize.isError && <ErrorAlert error={finalize.error} title="Could not finalize" />}
          {inv.status === "finalized" && (
            <Alert color="green" title="Final">
              This invoice is final and will not change.
            </Alert>
          )}
        </Stack>
      )}
    </QueryView>
  );
}
