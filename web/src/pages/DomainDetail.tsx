import { useState, type FormEvent } from "react";
import {
  Badge, Button, Card, Group, Modal, NumberInput, Stack, Table, TagsInput, Text, TextInput, Textarea, Title, Tooltip,
} from "@mantine/core";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useNavigate, useParams } from "react-router";
import { useSession } from "../session";
import { unwrap, type S } from "../api/client";
import type { components } from "../api/schema";
import { formatTime } from "../api/format";
import { ErrorAlert, NotAllowed, QueryView } from "../components/states";
import { LoadMore, usePaged } from "../components/paged";

type Endpoint = components["schemas"]["Endpoint"];

export function DomainDetail() {
  const { id = "" } = useParams();
  const { api, can } = useSession();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const domain = useQuery({
    queryKey: ["domains", id],
    queryFn: () => unwrap(api.GET("/v1/routing-domains/{id}", { params: { path: { id } } })),
  });
  const endpoints = usePaged(["domains", id, "endpoints"], (cursor) =>
    unwrap(api.GET("/v1/routing-domains/{id}/endpoints", { params: { path: { id }, query: { cursor } } })),
  );
  const [editing, setEditing] = useState(false);
  const [adding, setAdding] = useState(false);
  const del = useMutation({
    mutationFn: () => unwrap(api.DELETE("/v1/routing-domains/{id}", { params: { path: { id } } })),
    onSuccess: () => {
      qc.invalidateQueries({ queryKey: ["domains"] });
      navigate("/domains");
    },
  });
  const write = can("update_domain");

  return (
    <Stack>
      <QueryView query={domain} label="the routing domain">
        {(d) => (
          <Stack>
            <Group justify="space-between">
              <div>
                <Title order={2}>{d.name}</Title>
                <Text c="dimmed">{d.description || "No description."}</Text>
              </div>
              {write.allowed ? (
                <Group>
                  <Button variant="default" onClick={() => setEditing(true)}>
                    Edit
                  </Button>
                  <Button
                    color="red"
                    variant="light"
                    loading={del.isPending}
                    onClick={() => {
                      if (window.confirm(`Delete ${d.name} and its endpoints?`)) del.mutate();
                    }}
                  >
                    Delete
                  </Button>
                </Group>
              ) : (
                <NotAllowed reason={`Editing: ${write.reason}`} />
              )}
            </Group>
            {del.isError && <ErrorAlert error={del.error} title="Could not delete the domain" />}
            <EditDomain
              key={`${d.name}|${d.description}`}
              opened={editing}
              onClose={() => setEditing(false)}
              id={id}
              name={d.name}
              description={d.description}
            />
          </Stack>
        )}
      </QueryView>
      <Card withBorder>
        <Group justify="space-between" mb="xs">
          <Title order={3} size="h4">
            Endpoints
          </Title>
          {can("create_endpoint").allowed && (
            <Button size="xs" onClick={() => setAdding(true)}>
              Advertise endpoint
            </Button>
          )}
        </Group>
        <Text size="sm" c="dimmed" mb="sm">
          The routing controller admits an endpoint when its MIC meets the domain's trust policy, and says why
          when it does not.
        </Text>
        <QueryView
          query={endpoints.query}
          label="endpoints"
          isEmpty={() => endpoints.items.length === 0}
          empty="No endpoints advertised in this domain."
        >
          {() => <EndpointTable domain={id} items={endpoints.items} />}
        </QueryView>
        <LoadMore paged={endpoints.query} />
      </Card>
      <AddEndpoint domain={id} opened={adding} onClose={() => setAdding(false)} />
    </Stack>
  );
}

function Admission({ e }: { e: Endpoint }) {
  const color = e.admission === "admitted" ? "green" : e.admission === "rejected" ? "red" : "gray";
  return (
    <Stack gap={2}>
      <Badge color={color} variant="light" data-testid={`admission-${e.name}`}>
        {e.admission}
      </Badge>
      {e.admission_reason && (
        <Text size="xs" c={e.admission === "rejected" ? "red" : "dimmed"}>
          {e.admission_reason}
        </Text>
      )}
    </Stack>
  );
}

function EndpointTable({ domain, items }: { domain: string; items: Endpoint[] }) {
  const { api, can } = useSession();
  const qc = useQueryClient();
  const del = useMutation({
    mutationFn: (endpoint_id: string) =>
      unwrap(
        api.DELETE("/v1/routing-domains/{id}/endpoints/{endpoint_id}", {
          params: { path: { id: domain, endpoint_id } },
        }),
      ),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["domains"] }),
  });
  const canDelete = can("delete_endpoint").allowed;
  return (
    <Stack>
      {del.isError && <ErrorAlert error={del.error} title="Could not withdraw the endpoint" />}
      <div className="table-scroll">
        <Table data-testid="endpoints-table">
          <Table.Thead>
            <Table.Tr>
              <Table.Th>Name</Table.Th>
              <Table.Th>Admission</Table.Th>
              <Table.Th>Capabilities</Table.Th>
              <Table.Th>Context</Table.Th>
              <Table.Th>Latency SLA</Table.Th>
              <Table.Th>Cost / 1k tokens</Table.Th>
              <Table.Th>Judged</Table.Th>
              {canDelete && <Table.Th aria-label="Actions" />}
            </Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {items.map((e) => (
              <Table.Tr key={e.id}>
                <Table.Td>{e.name}</Table.Td>
                <Table.Td>
                  <Admission e={e} />
                </Table.Td>
                <Table.Td>{e.capabilities.join(", ") || "—"}</Table.Td>
                <Table.Td>{e.context_window.toLocaleString("en-US")}</Table.Td>
                <Table.Td>{e.latency_sla_ms} ms</Table.Td>
                <Table.Td>{e.cost_per_1k_tokens}</Table.Td>
                <Table.Td>
                  <Tooltip label={e.admission_table_version != null ? `table v${e.admission_table_version}` : "not yet"}>
                    <span>{formatTime(e.admission_observed_at)}</span>
                  </Tooltip>
                </Table.Td>
                {canDelete && (
                  <Table.Td>
                    <Button
                      size="xs"
                      color="red"
                      variant="subtle"
                      onClick={() => {
                        if (window.confirm(`Withdraw ${e.name}?`)) del.mutate(e.id);
                      }}
                    >
                      Withdraw
                    </Button>
                  </Table.Td>
                )}
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      </div>
    </Stack>
  );
}

function EditDomain(props: { opened: boolean; onClose: () => void; id: string; name: string; description: string }) {
  const { api } = useSession();
  const qc = useQueryClient();
  const [name, setName] = useState(props.name);
  const [description, setDescription] = useState(props.description);
  const m = useMutation({
    mutationFn: () =>
      unwrap(api.PATCH("/v1/routing-domains/{id}", { params: { path: { id: props.id } }, body: { name, description } satisfies S<"UpdateDomain"> })),
    onSuccess: () => {
      qc.invalidateQueries({ queryKey: ["domains"] });
      props.onClose();
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    m.mutate();
  };
  return (
    <Modal opened={props.opened} onClose={props.onClose} title="Edit routing domain">
      <form onSubmit={submit}>
        <Stack>
          <TextInput label="Name" value={name} onChange={(e) => setName(e.currentTarget.value)} required maxLength={100} />
          <Textarea
            label="Description"
            value={description}
            onChange={(e) => setDescription(e.currentTarget.value)}
            maxLength={1000}
            autosize
            minRows={2}
          />
          {m.isError && <ErrorAlert error={m.error} title="Could not save" />}
          <Group justify="flex-end">
            <Button variant="default" onClick={props.onClose}>
              Cancel
            </Button>
            <Button type="submit" loading={m.isPending}>
              Save
            </Button>
          </Group>
        </Stack>
      </form>
    </Modal>
  );
}

function AddEndpoint({ domain, opened, onClose }: { domain: string; opened: boolean; onClose: () => void }) {
  const { api } = useSession();
  const qc = useQueryClient();
  const [name, setName] = useState("");
  const [capabilities, setCapabilities] = useState<string[]>([]);
  const [context, setContext] = useState<number | string>(128000);
  const [latency, setLatency] = useState<number | string>(200);
  const [cost, setCost] = useState("0.0025");
  const m = useMutation({
    mutationFn: () =>
      unwrap(
        api.POST("/v1/routing-domains/{id}/endpoints", {
          params: { path: { id: domain } },
          body: {
            name,
            capabilities,
            context_window: Number(context),
            latency_sla_ms: Number(latency),
            cost_per_1k_tokens: cost.trim(),
          } satisfies S<"CreateEndpoint">,
        }),
      ),
    onSuccess: () => {
      qc.invalidateQueries({ queryKey: ["domains"] });
      setName("");
      onClose();
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    m.mutate();
  };
  return (
    <Modal opened={opened} onClose={onClose} title="Advertise an endpoint">
      <form onSubmit={submit}>
        <Stack>
          <TextInput label="Name" value={name} onChange={(e) => setName(e.currentTarget.value)} required data-autofocus />
          <TagsInput
            label="Capabilities"
            description="Press Enter after each, e.g. code-generation"
            value={capabilities}
            onChange={setCapabilities}
            maxTags={64}
          />
          <Group grow>
            <NumberInput label="Context window (tokens)" value={context} onChange={setContext} min={1} allowDecimal={false} required />
            <NumberInput label="Latency SLA (ms)" value={latency} onChange={setLatency} min={1} allowDecimal={false} required />
          </Group>
          <TextInput
            label="Cost per 1k tokens"
            description="An exact decimal, e.g. 0.0025"
            value={cost}
            onChange={(e) => setCost(e.currentTarget.value)}
            required
          />
          {m.isError && <ErrorAlert error={m.error} title="Could not advertise the endpoint" />}
          <Group justify="flex-end">
            <Button variant="default" onClick={onClose}>
              Cancel
            </Button>
            <Button type="submit" loading={m.isPending}>
              Advertise
            </Button>
          </Group>
        </Stack>
      </form>
    </Modal>
  );
}
