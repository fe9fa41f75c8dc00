import { useState, type FormEvent } from "react";
import { Badge, Button, Card, Group, Stack, Table, Text, TextInput, Title } from "@mantine/core";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Link, useNavigate } from "react-router";
import { useSession } from "../session";
import { unwrap, type S } from "../api/client";
import { currentPeriod, formatDate } from "../api/format";
import { ErrorAlert, NotAllowed, QueryView } from "../components/states";
import { LoadMore, usePaged } from "../components/paged";
import { LineTable } from "./InvoiceDetail";

export function Invoices() {
  const { api, can } = useSession();
  const { query, items } = usePaged(["invoices"], (cursor) =>
    unwrap(api.GET("/v1/invoices", { params: { query: { cursor } } })),
  );
  const preview = useQuery({
    queryKey: ["invoice-preview", currentPeriod()],
    queryFn: () => unwrap(api.GET("/v1/invoices/preview", { params: { query: { period: currentPeriod() } } })),
  });
  const draft = can("generate_invoice");
  return (
    <Stack>
      <Title order={2}>Invoices</Title>
      <Card withBorder>
        <Group justify="space-between" mb="xs">
          <Title order={3} size="h4">
            This month so far
          </Title>
          <Text size="sm" c="dimmed">
            rated now from the usage recorded; nothing is stored
          </Text>
        </Group>
        <QueryView query={preview} label="this month's bill">
          {(p) => <LineTable lines={p.lines} total={p.total} currency={p.currency} testId="preview-lines" />}
        </QueryView>
      </Card>
      {draft.allowed ? <DraftInvoice /> : <NotAllowed reason={`Drafting invoices: ${draft.reason}`} />}
      <QueryView query={query} label="invoices" isEmpty={() => items.length === 0} empty="No invoices drafted yet.">
        {() => (
          <div className="table-scroll">
            <Table highlightOnHover data-testid="invoices-table">
              <Table.Thead>
                <Table.Tr>
                  <Table.Th>Period</Table.Th>
                  <Table.Th>Status</Table.Th>
                  <Table.Th>Total</Table.Th>
                  <Table.Th>Drafted</Table.Th>
                  <Table.Th>Finalized</Table.Th>
                </Table.Tr>
              </Table.Thead>
              <Table.Tbody>
                {items.map((i) => (
                  <Table.Tr key={i.id}>
                    <Table.Td>
                      <Link to={`/invoices/${i.id}`}>{i.period}</Link>
                    </Table.Td>
                    <Table.Td>
                      <Badge color={i.status === "finalized" ? "green" : "yellow"} variant="light">
                        {i.status}
                      </Badge>
                    </Table.Td>
                    <Table.Td>
                      {i.total} {i.currency}
                    </Table.Td>
                    <Table.Td>{formatDate(i.created_at)}</Table.Td>
                    <Table.Td>{formatDate(i.finalized_at)}</Table.Td>
                  </Table.Tr>
                ))}
              </Table.Tbody>
            </Table>
          </div>
        )}
      </QueryView>
      <LoadMore paged={query} />
    </Stack>
  );
}

function DraftInvoice() {
  const { api } = useSession();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const [period, setPeriod] = useState(currentPeriod());
  const m = useMutation({
    mutationFn: () => unwrap(api.POST("/v1/invoices/generate", { body: { period } satisfies S<"GenerateInvoice"> })),
    onSuccess: (inv) => {
      qc.invalidateQueries({ queryKey: ["invoices"] });
      navigate(`/invoices/${inv.id}`);
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    m.mutate();
  };
  return (
    <Card withBorder>
      <form onSubmit={submit}>
        <Group align="flex-end">
          <TextInput
            label="Draft the invoice of"
            description="YYYY-MM; re-drafting refreshes a draft from its usage"
            value={period}
            onChange={(e) => setPeriod(e.currentTarget.value)}
            required
          />
          <Button type="submit" loading={m.isPending}>
            Draft invoice
          </Button>
        </Group>
      </form>
      {m.isError && (
        <Stack mt="sm">
          <ErrorAlert error={m.error} title="Could not draft the invoice" />
        </Stack>
      )}
    </Card>
  );
}
