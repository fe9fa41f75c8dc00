import { useState, type FormEvent } from "react";
import { Button, Group, Modal, Select, Stack, Table, TextInput, Title } from "@mantine/core";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useSession } from "../session";
import { unwrap, type S } from "../api/client";
import type { components } from "../api/schema";
import { formatDate } from "../api/format";
import { ErrorAlert, NotAllowed, QueryView } from "../components/states";
import { LoadMore, usePaged } from "../components/paged";

type Role = components["schemas"]["Role"];
const ROLES: Role[] = ["viewer", "member", "admin", "owner"];
const RANK: Record<Role, number> = { viewer: 0, member: 1, admin: 2, owner: 3 };

export function Members() {
  const { can } = useSession();
  const list = can("list_users");
  return (
    <Stack>
      <Title order={2}>Members and roles</Title>
      {list.allowed ? <MemberList /> : <NotAllowed reason={`The member list: ${list.reason}`} />}
    </Stack>
  );
}

function MemberList() {
  const { api, can, me } = useSession();
  const qc = useQueryClient();
  const { query, items } = usePaged(["users"], (cursor) =>
    unwrap(api.GET("/v1/users", { params: { query: { cursor } } })),
  );
  const [open, setOpen] = useState(false);
  const manage = can("set_role");
  const setRole = useMutation({
    mutationFn: ({ id, role }: { id: string; role: Role }) =>
      unwrap(api.PATCH("/v1/users/{id}", { params: { path: { id } }, body: { role } satisfies S<"SetRole"> })),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["users"] }),
  });
  const mine = me ? RANK[me.user.role] : -1;
  return (
    <Stack>
      <Group justify="space-between">
        {can("create_user").allowed ? (
          <Button onClick={() => setOpen(true)}>Add member</Button>
        ) : (
          <NotAllowed reason={`Adding members: ${can("create_user").reason}`} />
        )}
        {!manage.allowed && <NotAllowed reason={`Changing roles: ${manage.reason}`} />}
      </Group>
      {setRole.isError && <ErrorAlert error={setRole.error} title="Could not change the role" />}
      <QueryView query={query} label="members" isEmpty={() => items.length === 0}>
        {() => (
          <div className="table-scroll">
            <Table data-testid="members-table">
              <Table.Thead>
                <Table.Tr>
                  <Table.Th>Email</Table.Th>
                  <Table.Th>Role</Table.Th>
                  <Table.Th>Added</Table.Th>
                </Table.Tr>
              </Table.Thead>
              <Table.Tbody>
                {items.map((u) => (
                  <Table.Tr key={u.id}>
                    <Table.Td>{u.email}</Table.Td>
                    <Table.Td>
                      {manage.allowed && RANK[u.role] <= mine ? (
                        <Select
                          aria-label={`Role of ${u.email}`}
                          data={ROLES.filter((r) => RANK[r] <= mine)}
                          value={u.role}
                          onChange={(v) => v && v !== u.role && setRole.mutate({ id: u.id, role: v as Role })}
                          allowDeselect={false}
                          w={140}
                        />
                      ) : (
                        u.role
                      )}
                    </Table.Td>
                    <Table.Td>{formatDate(u.created_at)}</Table.Td>
                  </Table.Tr>
                ))}
              </Table.Tbody>
            </Table>
          </div>
        )}
      </QueryView>
      <LoadMore paged={query} />
      {open && <AddMember onClose={() => setOpen(false)} maxRank={mine} />}
    </Stack>
  );
}

function AddMember({ onClose, maxRank }: { onClose: () => void; maxRank: number }) {
  const { api } = useSession();
  const qc = useQueryClient();
  const [email, setEmail] = useState("");
  const [role, setRole] = useState<Role>("viewer");
  const m = useMutation({
    mutationFn: () => unwrap(api.POST("/v1/users", { body: { email: email.trim(), role } satisfies S<"CreateUser"> })),
    onSuccess: () => {
      qc.invalidateQueries({ queryKey: ["users"] });
      onClose();
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    m.mutate();
  };
  return (
    <Modal opened onClose={onClose} title="Add a member">
      <form onSubmit={submit}>
        <Stack>
          <TextInput label="Email" type="email" value={email} onChange={(e) => setEmail(e.currentTarget.value)} required data-autofocus />
          <Select
            label="Role"
            description="Nobody grants a role above their own"
            data={ROLES.filter((r) => RANK[r] <= maxRank)}
            value={role}
            onChange={(v) => v && setRole(v as Role)}
            allowDeselect={false}
          />
          {m.isError && <ErrorAlert error={m.error} title="Could not add the member" />}
          <Group justify="flex-end">
            <Button variant="default" onClick={onClose}>
              Cancel
            </Button>
            <Button type="submit" loading={m.isPending}>
              Add
            </Button>
          </Group>
        </Stack>
      </form>
    </Modal>
  );
}
