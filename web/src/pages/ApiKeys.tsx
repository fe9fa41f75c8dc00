import { useState, type FormEvent } from "react";
import {
  Alert, Badge, Button, Checkbox, Code, CopyButton, Group, Modal, Select, Stack, Table, Text, TextInput, Title,
} from "@mantine/core";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useSession } from "../session";
import { unwrap, type S } from "../api/client";
import type { components } from "../api/schema";
import { formatDate, formatTime } from "../api/format";
import { ErrorAlert, NotAllowed, QueryView } from "../components/states";
import { LoadMore, usePaged } from "../components/paged";

type Scope = components["schemas"]["Scope"];

export function ApiKeys() {
  const { api, can, me } = useSession();
  const qc = useQueryClient();
  const { query, items } = usePaged(["keys"], (cursor) =>
    unwrap(api.GET("/v1/api-keys", { params: { query: { cursor } } })),
  );
  const [open, setOpen] = useState(false);
  const create = can("create_key");
  const revoke = useMutation({
    mutationFn: (id: string) => unwrap(api.DELETE("/v1/api-keys/{id}", { params: { path: { id } } })),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["keys"] }),
  });
  const mayRevoke = can("revoke_key").allowed;
  const admin = me?.user.role === "admin" || me?.user.role === "owner";
  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>API keys</Title>
        {create.allowed ? (
          <Button onClick={() => setOpen(true)}>Create key</Button>
        ) : (
          <NotAllowed reason={`Creating keys: ${create.reason}`} />
        )}
      </Group>
      <Text size="sm" c="dimmed">
        {admin ? "All keys of the tenant." : "Your own keys."} A key is shown once, when it is created; here only its
        prefix.
      </Text>
      {revoke.isError && <ErrorAlert error={revoke.error} title="Could not revoke the key" />}
      <QueryView query={query} label="API keys" isEmpty={() => items.length === 0}>
        {() => (
          <div className="table-scroll">
            <Table data-testid="keys-table">
              <Table.Thead>
                <Table.Tr>
                  <Table.Th>Name</Table.Th>
                  <Table.Th>Prefix</Table.Th>
                  <Table.Th>Scopes</Table.Th>
                  <Table.Th>Expires</Table.Th>
                  <Table.Th>Status</Table.Th>
                  <Table.Th>Created</Table.Th>
                  {mayRevoke && <Table.Th aria-label="Actions" />}
                </Table.Tr>
              </Table.Thead>
              <Table.Tbody>
                {items.map((k) => {
                  const own = k.user_id === me?.user.id;
                  const current = k.id === me?.key_id;
                  return (
                    <Table.Tr key={k.id}>
                      <Table.Td>{k.name}</Table.Td>
                      <Table.Td className="mono">nxk_{k.prefix}_…</Table.Td>
                      <Table.Td>{k.scopes.join(", ")}</Table.Td>
                      <Table.Td>{formatDate(k.expires_at)}</Table.Td>
                      <Table.Td>
                        {k.revoked_at ? (
                          <Badge color="red" variant="light">
                            revoked {formatTime(k.revoked_at)}
                          </Badge>
                        ) : (
                          <Badge color="green" variant="light">
                            active{current ? " (this session)" : ""}
                          </Badge>
                        )}
                      </Table.Td>
                      <Table.Td>{formatDate(k.created_at)}</Table.Td>
                      {mayRevoke && (
                        <Table.Td>
                          {!k.revoked_at && (own || admin) && (
                            <Button
                              size="xs"
                              color="red"
                              variant="subtle"
                              onClick={() => {
                                const warn = current ? " This is the key of this session: you will be signed out." : "";
                                if (window.confirm(`Revoke ${k.name}?${warn}`)) revoke.mutate(k.id);
                              }}
                            >
                              Revoke
                            </Button>
                          )}
                        </Table.Td>
                      )}
                    </Table.Tr>
                  );
                })}
              </Table.Tbody>
            </Table>
          </div>
        )}
      </QueryView>
      <LoadMore paged={query} />
      {open && <CreateKey onClose={() => setOpen(false)} />}
    </Stack>
  );
}

function CreateKey({ onClose }: { onClose: () => void }) {
  const { api, me } = useSession();
  const qc = useQueryClient();
  const available = (me?.scopes ?? []) as Scope[];
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<Scope[]>(available.filter((s) => s === "read"));
  const [expires, setExpires] = useState<string>("never");
  const m = useMutation({
    mutationFn: () =>
      unwrap(
        api.POST("/v1/api-keys", {
          body: {
            name,
            scopes,
            expires_in_seconds: expires === "never" ? null : Number(expires) * 86_400,
          } satisfies S<"CreateKey">,
        }),
      ),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["keys"] }),
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    m.mutate();
  };
  if (m.isSuccess) {
    return (
      <Modal opened onClose={onClose} title="Key created">
        <Stack>
          <Alert color="yellow" title="Copy it now">
            This is the only time the key is shown. It is stored only as a hash.
          </Alert>
          <Code block className="mono" data-testid="new-key">
            {m.data.api_key}
          </Code>
          <Group>
            <CopyButton value={m.data.api_key}>
              {({ copied, copy }) => <Button onClick={copy}>{copied ? "Copied" : "Copy"}</Button>}
            </CopyButton>
            <Button variant="default" onClick={onClose}>
              Done
            </Button>
          </Group>
        </Stack>
      </Modal>
    );
  }
  return (
    <Modal opened onClose={onClose} title="Create an API key">
      <form onSubmit={submit}>
        <Stack>
          <TextInput label="Name" value={name} onChange={(e) => setName(e.currentTarget.value)} required data-autofocus />
          <Checkbox.Group
            label="Scopes"
            description="At most the scopes of the key you signed in with"
            value={scopes}
            onChange={(v) => setScopes(v as Scope[])}
          >
            <Group mt="xs">
              {available.map((s) => (
                <Checkbox key={s} value={s} label={s} />
              ))}
            </Group>
          </Checkbox.Group>
          <Select
            label="Expires"
            data={[
              { value: "never", label: "Never" },
              { value: "7", label: "In 7 days" },
              { value: "30", label: "In 30 days" },
              { value: "90", label: "In 90 days" },
              { value: "365", label: "In a year" },
            ]}
            value={expires}
            onChange={(v) => v && setExpires(v)}
            allowDeselect={false}
          />
          {m.isError && <ErrorAlert error={m.error} title="Could not create the key" />}
          <Group justify="flex-end">
            <Button variant="default" onClick={onClose}>
              Cancel
            </Button>
            <Button type="submit" loading={m.isPending} disabled={scopes.length === 0}>
              Create
            </Button>
          </Group>
        </Stack>
      </form>
    </Modal>
  );
}
