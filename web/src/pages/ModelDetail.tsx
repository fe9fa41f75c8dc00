import { useState, type FormEvent } from "react";
import {
  Alert, Badge, Button, Card, Code, Group, Modal, NumberInput, Select, SimpleGrid, Stack, Table, TagsInput, Text,
  TextInput, Title,
} from "@mantine/core";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useParams } from "react-router";
import { useSession } from "../session";
import { unwrap, type S } from "../api/client";
import type { components } from "../api/schema";
import { formatTime } from "../api/format";
import { makeCsr, sha256Of } from "../api/csr";
import { download } from "../api/download";
import { ErrorAlert, NotAllowed, QueryView } from "../components/states";
import { LoadMore, usePaged } from "../components/paged";

type Mic = components["schemas"]["Mic"];
type MicDetail = components["schemas"]["MicDetail"];
type Attestation = components["schemas"]["Attestation"];
type Reason = components["schemas"]["RevocationReason"];

const STATUS_COLOR: Record<string, string> = { valid: "green", revoked: "red", expired: "gray" };

export function ModelDetail() {
  const { id = "" } = useParams();
  const { api, can } = useSession();
  const model = useQuery({
    queryKey: ["models", id],
    queryFn: () => unwrap(api.GET("/v1/model-identities/{id}", { params: { path: { id } } })),
  });
  const mics = usePaged(["models", id, "mics"], (cursor) =>
    unwrap(api.GET("/v1/model-identities/{id}/certificates", { params: { path: { id }, query: { cursor } } })),
  );
  const [issuing, setIssuing] = useState(false);
  const [inspect, setInspect] = useState<string | null>(null);
  const issue = can("issue_mic");

  return (
    <Stack>
      <QueryView query={model} label="the model identity">
        {(m) => (
          <Stack gap="xs">
            <Group justify="space-between">
              <Title order={2}>{m.name}</Title>
              {issue.allowed ? (
                <Button onClick={() => setIssuing(true)}>Issue MIC</Button>
              ) : (
                <NotAllowed reason={`Issuing MICs: ${issue.reason}`} />
              )}
            </Group>
            <Text size="sm" className="mono">
              {m.model_digest}
            </Text>
            {Object.keys(m.claims as object).length > 0 && (
              <Text size="sm" c="dimmed">
                Claims:{" "}
                {Object.entries(m.claims as Record<string, unknown>)
                  .map(([k, v]) => `${k}=${String(v)}`)
                  .join(", ")}
              </Text>
            )}
            {issuing && <IssueMic model={m} onClose={() => setIssuing(false)} onIssued={setInspect} />}
          </Stack>
        )}
      </QueryView>
      <Card withBorder>
        <Title order={3} size="h4" mb="xs">
          Model Identity Certificates
        </Title>
        <QueryView query={mics.query} label="MICs" isEmpty={() => mics.items.length === 0} empty="No MIC issued yet.">
          {() => (
            <div className="table-scroll">
              <Table data-testid="mics-table">
                <Table.Thead>
                  <Table.Tr>
                    <Table.Th>Serial</Table.Th>
                    <Table.Th>Model URI</Table.Th>
                    <Table.Th>Status</Table.Th>
                    <Table.Th>Valid until</Table.Th>
                    <Table.Th aria-label="Actions" />
                  </Table.Tr>
                </Table.Thead>
                <Table.Tbody>
                  {mics.items.map((c: Mic) => (
                    <Table.Tr key={c.id}>
                      <Table.Td className="mono">{c.serial}</Table.Td>
                      <Table.Td className="mono">{c.model_uri}</Table.Td>
                      <Table.Td>
                        <Badge color={STATUS_COLOR[c.status]} variant="light" data-testid={`mic-status-${c.serial}`}>
                          {c.status}
                        </Badge>
                      </Table.Td>
                      <Table.Td>{formatTime(c.not_after)}</Table.Td>
                      <Table.Td>
                        <Button size="xs" variant="light" onClick={() => setInspect(c.serial)}>
                          Inspect
                        </Button>
                      </Table.Td>
                    </Table.Tr>
                  ))}
                </Table.Tbody>
              </Table>
            </div>
          )}
        </QueryView>
        <LoadMore paged={mics.query} />
      </Card>
      {inspect && <InspectMic model={id} serial={inspect} onClose={() => setInspect(null)} />}
    </Stack>
  );
}

function IssueMic({
  model,
  onClose,
  onIssued,
}: {
  model: components["schemas"]["ModelIdentity"];
  onClose: () => void;
  onIssued: (serial: string) => void;
}) {
  const { api } = useSession();
  const qc = useQueryClient();
  const [version, setVersion] = useState("1.0.0");
  const [publisher, setPublisher] = useState("");
  const [archHash, setArchHash] = useState(sha256Of(model.model_digest) ?? "");
  const [capabilities, setCapabilities] = useState<string[]>([]);
  const [modalities, setModalities] = useState<string[]>(["text"]);
  const [context, setContext] = useState<number | string>(128000);
  const [hours, setHours] = useState<number | string>(24);
  const [issued, setIssued] = useState<{ serial: string; key: string } | null>(null);
  const m = useMutation({
    mutationFn: async () => {
      const req = await makeCsr(model.name);
      const attestation: Attestation = {
        architecture_hash: archHash.trim(),
        provenance: { publisher: publisher.trim() },
        capabilities: { capabilities, context_window: Number(context), modalities },
      };
      const issued = await unwrap(
        api.POST("/v1/model-identities/{id}/certificates", {
          params: { path: { id: model.id } },
          body: {
            csr_der_base64: req.csrDerBase64,
            version: version.trim(),
            attestation,
            validity_seconds: Math.round(Number(hours) * 3600),
            request_id: `console-${crypto.randomUUID()}`,
          } satisfies S<"IssueMic">,
        }),
      );
      return { issued, key: req.privateKeyPem };
    },
    onSuccess: ({ issued, key }) => {
      qc.invalidateQueries({ queryKey: ["models"] });
      setIssued({ serial: issued.serial, key });
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    m.mutate();
  };
  if (issued) {
    const done = () => {
      onClose();
      onIssued(issued.serial);
    };
    return (
      <Modal opened onClose={done} title="MIC issued" size="lg">
        <Stack>
          <Text size="sm">
            Serial <span className="mono" data-testid="issued-serial">{issued.serial}</span>
          </Text>
          <Alert color="yellow" title="Download the private key now">
            The key pair was made in this browser. The server never saw the private key and cannot show it again.
          </Alert>
          <Group>
            <Button onClick={() => download(`${model.name}.key.pem`, issued.key)}>Download private key</Button>
            <Button variant="default" onClick={done}>
              Done
            </Button>
          </Group>
        </Stack>
      </Modal>
    );
  }
  return (
    <Modal opened onClose={onClose} title={`Issue a MIC for ${model.name}`} size="lg">
      <form onSubmit={submit}>
        <Stack>
          <Text size="sm" c="dimmed">
            A P-256 key pair and certificate request are made in this browser; the CA signs your attestation into
            the certificate.
          </Text>
          <SimpleGrid cols={{ base: 1, sm: 2 }}>
            <TextInput label="Version" value={version} onChange={(e) => setVersion(e.currentTarget.value)} required data-autofocus />
            <TextInput label="Publisher" value={publisher} onChange={(e) => setPublisher(e.currentTarget.value)} required maxLength={64} />
          </SimpleGrid>
          <TextInput
            label="Architecture hash"
            description="SHA-256 of the architecture description, 64 hex digits"
            value={archHash}
            onChange={(e) => setArchHash(e.currentTarget.value)}
            required
          />
          <TagsInput label="Capabilities" description="Press Enter after each" value={capabilities} onChange={setCapabilities} />
          <SimpleGrid cols={{ base: 1, sm: 3 }}>
            <NumberInput label="Context window" value={context} onChange={setContext} min={0} allowDecimal={false} />
            <TagsInput label="Modalities" value={modalities} onChange={setModalities} />
            <NumberInput label="Lifetime (hours)" value={hours} onChange={setHours} min={1} max={2160} allowDecimal={false} />
          </SimpleGrid>
          {m.isError && <ErrorAlert error={m.error} title="Could not issue the MIC" />}
          <Group justify="flex-end">
            <Button variant="default" onClick={onClose}>
              Cancel
            </Button>
            <Button type="submit" loading={m.isPending}>
              Issue
            </Button>
          </Group>
        </Stack>
      </form>
    </Modal>
  );
}

const REASONS: Array<{ value: Reason; label: string }> = [
  { value: "unspecified", label: "Unspecified" },
  { value: "key_compromise", label: "Key compromise" },
  { value: "superseded", label: "Superseded" },
  { value: "cessation_of_operation", label: "Cessation of operation" },
  { value: "affiliation_changed", label: "Affiliation changed" },
  { value: "privilege_withdrawn", label: "Privilege withdrawn" },
];

function InspectMic({ model, serial, onClose }: { model: string; serial: string; onClose: () => void }) {
  const { api, can } = useSession();
  const qc = useQueryClient();
  const [reason, setReason] = useState<Reason>("unspecified");
  const detail = useQuery({
    queryKey: ["models", model, "mics", serial],
    queryFn: () =>
      unwrap(api.GET("/v1/model-identities/{id}/certificates/{serial}", { params: { path: { id: model, serial } } })),
  });
  const revoke = useMutation({
    mutationFn: () =>
      unwrap(
        api.POST("/v1/model-identities/{id}/certificates/{serial}/revoke", {
          params: { path: { id: model, serial } },
          body: { reason } satisfies S<"RevokeMic">,
        }),
      ),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["models"] }),
  });
  const canRevoke = can("revoke_mic");
  return (
    <Modal opened onClose={onClose} title={`MIC ${serial}`} size="xl">
      <QueryView query={detail} label="the MIC">
        {(d: MicDetail) => (
          <Stack>
            <SimpleGrid cols={{ base: 1, sm: 2 }} spacing="xs">
              <Field label="Model URI" value={d.model_uri} mono />
              <Field label="Status" value={d.status} testId="inspect-status" />
              <Field label="Subject" value={d.subject ?? "—"} />
              <Field label="Issuer" value={d.issuer ?? "—"} />
              <Field label="Key" value={d.key_algorithm ?? "—"} />
              <Field label="Issuance log index" value={d.log_index?.toString() ?? "—"} />
              <Field label="Valid" value={`${formatTime(d.not_before)} – ${formatTime(d.not_after)}`} />
              <Field label="SHA-256 fingerprint" value={d.fingerprint_sha256} mono />
              {d.revoked_at && (
                <Field label="Revoked" value={`${formatTime(d.revoked_at)} (${d.revocation_reason ?? "unspecified"})`} />
              )}
            </SimpleGrid>
            <AttestationView a={d.attestation ?? null} />
            <Group>
              {d.chain_pem && (
                <Button variant="light" onClick={() => download(`${serial}.chain.pem`, d.chain_pem ?? "")}>
                  Download certificate chain
                </Button>
              )}
              {d.root_pem && (
                <Button variant="default" onClick={() => download("nexus-root-ca.pem", d.root_pem ?? "")}>
                  Download root CA
                </Button>
              )}
            </Group>
            {d.status === "valid" &&
              (canRevoke.allowed ? (
                <Card withBorder>
                  <Group align="flex-end">
                    <Select
                      label="Revocation reason"
                      data={REASONS}
                      value={reason}
                      onChange={(v) => v && setReason(v as Reason)}
                      allowDeselect={false}
                    />
                    <Button
                      color="red"
                      loading={revoke.isPending}
                      onClick={() => {
                        if (window.confirm(`Revoke MIC ${serial}? Peers refuse it from their next CRL.`)) revoke.mutate();
                      }}
                    >
                      Revoke
                    </Button>
                  </Group>
                </Card>
              ) : (
                <NotAllowed reason={`Revoking: ${canRevoke.reason}`} />
              ))}
            {revoke.isError && <ErrorAlert error={revoke.error} title="Could not revoke the MIC" />}
          </Stack>
        )}
      </QueryView>
    </Modal>
  );
}

function Field({ label, value, mono, testId }: { label: string; value: string; mono?: boolean; testId?: string }) {
  return (
    <div>
      <Text size="xs" c="dimmed">
        {label}
      </Text>
      <Text size="sm" className={mono ? "mono" : undefined} data-testid={testId}>
        {value}
      </Text>
    </div>
  );
}

function AttestationView({ a }: { a: Attestation | null }) {
  if (!a) return <Text c="dimmed">This MIC was issued before certificates were kept: no attestation to show.</Text>;
  const claims = [...(a.benchmarks ?? []).map((c) => ({ ...c, kind: "benchmark" })),
    ...(a.safety_evaluations ?? []).map((c) => ({ ...c, kind: "safety" }))];
  return (
    <Card withBorder data-testid="attestation">
      <Title order={4} size="h5" mb="xs">
        Attestation
      </Title>
      <SimpleGrid cols={{ base: 1, sm: 2 }} spacing="xs">
        <Field label="Architecture hash" value={a.architecture_hash} mono />
        <Field label="Publisher" value={a.provenance.publisher} />
        <Field label="Capabilities" value={(a.capabilities.capabilities ?? []).join(", ") || "—"} />
        <Field label="Context window" value={a.capabilities.context_window.toLocaleString("en-US")} />
        <Field label="Modalities" value={(a.capabilities.modalities ?? []).join(", ") || "—"} />
        <Field label="Parent model" value={a.provenance.parent_model ?? "—"} />
      </SimpleGrid>
      {claims.length > 0 && (
        <Table mt="sm">
          <Table.Thead>
            <Table.Tr>
              <Table.Th>Claim</Table.Th>
              <Table.Th>Kind</Table.Th>
              <Table.Th>Value</Table.Th>
            </Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {claims.map((c) => (
              <Table.Tr key={`${c.kind}/${c.name}`}>
                <Table.Td>{c.name}</Table.Td>
                <Table.Td>{c.kind}</Table.Td>
                <Table.Td>
                  {"plain" in c.value ? (
                    c.value.plain
                  ) : (
                    <Code>committed {c.value.commitment.slice(0, 12)}…</Code>
                  )}
                  {c.threshold && ` (proof: ${c.threshold.comparator === "at_least" ? "≥" : "≤"} ${c.threshold.bound})`}
                </Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      )}
      {(a.endorsements ?? []).length > 0 && (
        <Text size="sm" mt="xs">
          Endorsed by {(a.endorsements ?? []).map((e) => e.issuer).join(", ")}
        </Text>
      )}
    </Card>
  );
}
