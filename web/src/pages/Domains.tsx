import { useState, type FormEvent } from "react";
import { Badge, Button, Group, Modal, Stack, Table, Text, TextInput, Textarea, Title } from "@mantine/core";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { Link, useNavigate } from "react-router";
import { useSession } from "../session";
import { unwrap, type S } from "../api/client";
import { formatDate } from "../api/format";
import { ErrorAlert, NotAllowed, QueryView } from "../components/states";
import { LoadMore, usePaged } from "../components/paged";

export function Domains() {
  const { api, can } = useSession();
  const { query, items } = usePaged(["domains"], (cursor) =>
    unwrap(api.GET("/v1/routing-domains", { params: { query: { cursor } } })),
  );
  const [open, setOpen] = useState(false);
  const create = can("create_domain");

  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>Routing domains</Title>
        {create.allowed ? (
          <Button onClick={() => setOpen(true)}>Create domain</Button>
        ) : (
          <NotAllowed reason={`Creating domains: ${create.reason}`} />
        )}
      </Group>
      <QueryView
        query={query}
        label="routing domains"
        isEmpty={() => items.length === 0}
        empty="No routing domains yet."
      >
        {() => (
          <div className="table-scroll">
            <Table highlightOnHover data-testid="domains-table">
              <Table.Thead>
                <Table.Tr>
                  <Table.Th>Name</Table.Th>
                  <Table.Th>Description</Table.Th>
                  <Table.Th>Endpoints</Table.Th>
                  <Table.Th>Created</Table.Th>
                </Table.Tr>
              </Table.Thead>
              <Table.Tbody>
                {items.map((d) => (
                  <Table.Tr key={d.id}>
                    <Table.Td>
                      <Link to={`/domains/${d.id}`}>{d.name}</Link>
                    </Table.Td>
                    <Table.Td>{d.description || <Text c="dimmed">—</Text>}</Table.Td>
                    <Table.Td>
                      <Group gap={4}>
                        <Badge color="green" variant="light">
                          {d.endpoints_admitted} admitted
                        </Badge>
                        {d.endpoints_rejected > 0 && (
                          <Badge color="red" variant="light">
                            {d.endpoints_rejected} rejected
                          </Badge>
                        )}
                        {d.endpoints_pending > 0 && (
                          <Badge color="gray" variant="light">
                            {d.endpoints_pending} pending
                          </Badge>
                        )}
                      </Group>
                    </Table.Td>
                    <Table.Td>{formatDate(d.created_at)}</Table.Td>
                  </Table.Tr>
                ))}
              </Table.Tbody>
            </Table>
          </div>
        )}
      </QueryView>
      <LoadMore paged={query} />
      <CreateDomain opened={open} onClose={() => setOpen(false)} />
    </Stack>
  );
}

function CreateDomain({ opened, onClose }: { opened: boolean; onClose: () => void }) {
  const { api } = useSession();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const m = useMutation({
    mutationFn: () => unwrap(api.POST("/v1/routing-domains", { body: { name, description } satisfies S<"CreateDomain"> })),
    onSuccess: (d) => {
      qc.invalidateQueries({ queryKey: ["domains"] });
      onClose();
      setName("");
      setDescription("");
      navigate(`/domains/${d.id}`);
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    m.mutate();
  };
  return (
    <Modal opened={opened} onClose={onClose} title="Create a routing domain">
      <form onSubmit={submit}>
        <Stack>
          <TextInput label="Name" value={name} onChange={(e) => setName(e.currentTarget.value)} required maxLength={100} data-autofocus />
          <Textarea
            label="Description"
            value={description}
            onChange={(e) => setDescription(e.currentTarget.value)}
            maxLength={1000}
            autosize
            minRows={2}
          />
          {m.isError && <ErrorAlert error={m.error} title="Could not create the domain" />}
          <Group justify="flex-end">
            <Button variant="default" onClick={onClose}>
              Cancel
            </Button>
            <Button type="submit" loading={m.isPending}>
              Create
            </Button>
          </Group>
        </Stack>
      </form>
    </Modal>
  );
}
