import { Code, Stack, Table, Text, Title } from "@mantine/core";
import { useSession } from "../session";
import { unwrap } from "../api/client";
import { formatTime } from "../api/format";
import { NotAllowed, QueryView } from "../components/states";
import { LoadMore, usePaged } from "../components/paged";

export function Audit() {
  const { can } = useSession();
  const allowed = can("list_audit");
  return (
    <Stack>
      <Title order={2}>Audit log</Title>
      <Text size="sm" c="dimmed">
        Every change in the tenant, newest first. The log is append-only: the database refuses to alter it.
      </Text>
      {allowed.allowed ? <AuditList /> : <NotAllowed reason={`The audit log: ${allowed.reason}`} />}
    </Stack>
  );
}

function AuditList() {
  const { api } = useSession();
  const { query, items } = usePaged(["audit"], (cursor) =>
    unwrap(api.GET("/v1/audit-events", { params: { query: { cursor, limit: 50 } } })),
  );
  return (
    <>
      <QueryView query={query} label="audit events" isEmpty={() => items.length === 0}>
        {() => (
          <div className="table-scroll">
            <Table data-testid="audit-table">
              <Table.Thead>
                <Table.Tr>
                  <Table.Th>When</Table.Th>
                  <Table.Th>Actor</Table.Th>
                  <Table.Th>Action</Table.Th>
                  <Table.Th>Target</Table.Th>
                  <Table.Th>Details</Table.Th>
                </Table.Tr>
              </Table.Thead>
              <Table.Tbody>
                {items.map((e) => (
                  <Table.Tr key={e.id}>
                    <Table.Td>{formatTime(e.created_at)}</Table.Td>
                    <Table.Td className="mono">{e.actor}</Table.Td>
                    <Table.Td>{e.action}</Table.Td>
                    <Table.Td>
                      {e.target_type} <span className="mono">{e.target_id.slice(0, 8)}</span>
                    </Table.Td>
                    <Table.Td>
                      <Code>{JSON.stringify(e.details)}</Code>
                    </Table.Td>
                  </Table.Tr>
                ))}
              </Table.Tbody>
            </Table>
          </div>
        )}
      </QueryView>
      <LoadMore paged={query} />
    </>
  );
}
