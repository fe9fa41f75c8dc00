import { useState, type FormEvent } from "react";
import { Badge, Button, Group, Modal, Stack, Table, Text, TextInput, Title } from "@mantine/core";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { Link, useNavigate } from "react-router";
import { useSession } from "../session";
import { unwrap, type S } from "../api/client";
import { formatDate } from "../api/format";
import { ErrorAlert, NotAllowed, QueryView } from "../components/states";
import { LoadMore, usePaged } from "../components/paged";

export function Models() {
  const { api, can } = useSession();
  const { query, items } = usePaged(["models"], (cursor) =>
    unwrap(api.GET("/v1/model-identities", { params: { query: { cursor } } })),
  );
  const [open, setOpen] = useState(false);
  const create = can("create_model");
  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>Model identities</Title>
        {create.allowed ? (
          <Button onClick={() => setOpen(true)}>Register model</Button>
        ) : (
          <NotAllowed reason={`Registering models: ${create.reason}`} />
        )}
      </Group>
      <QueryView query={query} label="model identities" isEmpty={() => items.length === 0} empty="No models registered yet.">
        {() => (
          <div className="table-scroll">
            <Table highlightOnHover data-testid="models-table">
              <Table.Thead>
                <Table.Tr>
                  <Table.Th>Name</Table.Th>
                  <Table.Th>Digest</Table.Th>
                  <Table.Th>MICs</Table.Th>
                  <Table.Th>Registered</Table.Th>
                </Table.Tr>
              </Table.Thead>
              <Table.Tbody>
                {items.map((m) => (
                  <Table.Tr key={m.id}>
                    <Table.Td>
                      <Link to={`/models/${m.id}`}>{m.name}</Link>
                    </Table.Td>
                    <Table.Td className="mono">{m.model_digest}</Table.Td>
                    <Table.Td>
                      <Badge variant="light" color={m.active_mics > 0 ? "green" : "gray"}>
                        {m.active_mics} valid
                      </Badge>
                    </Table.Td>
                    <Table.Td>{formatDate(m.created_at)}</Table.Td>
                  </Table.Tr>
                ))}
              </Table.Tbody>
            </Table>
          </div>
        )}
      </QueryView>
      <LoadMore paged={query} />
      <RegisterModel opened={open} onClose={() => setOpen(false)} />
    </Stack>
  );
}

function RegisterModel({ opened, onClose }: { opened: boolean; onClose: () => void }) {
  const { api } = useSession();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const [name, setName] = useState("");
  const [digest, setDigest] = useState("");
  const m = useMutation({
    mutationFn: () => unwrap(api.POST("/v1/model-identities", { body: { name, model_digest: digest.trim() } satisfies S<"CreateModel"> })),
    onSuccess: (created) => {
      qc.invalidateQueries({ queryKey: ["models"] });
      onClose();
      navigate(`/models/${created.id}`);
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    m.mutate();
  };
  return (
    <Modal opened={opened} onClose={onClose} title="Register a model identity">
      <form onSubmit={submit}>
        <Stack>
          <TextInput
            label="Name"
            description="Letters, digits, '.', '_' and '-': the <model> of nexus://tenant/<model>@version"
            value={name}
            onChange={(e) => setName(e.currentTarget.value)}
            required
            data-autofocus
          />
          <TextInput
            label="Model digest"
            description="sha256:<hex> of the model artefact"
            value={digest}
            onChange={(e) => setDigest(e.currentTarget.value)}
            required
          />
          <Text size="xs" c="dimmed">
            Registering does not issue a certificate; issue MICs from the model's page.
          </Text>
          {m.isError && <ErrorAlert error={m.error} title="Could not register the model" />}
          <Group justify="flex-end">
            <Button variant="default" onClick={onClose}>
              Cancel
            </Button>
            <Button type="submit" loading={m.isPending}>
              Register
            </Button>
          </Group>
        </Stack>
      </form>
    </Modal>
  );
}
