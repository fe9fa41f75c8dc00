import { useState, type FormEvent } from "react";
import { Button, Center, Paper, PasswordInput, Stack, Text, Title } from "@mantine/core";
import { useSession } from "../session";
import { looksLikeApiKey } from "../api/session";
import { ErrorAlert } from "../components/states";

export function SignIn() {
  const { signIn } = useSession();
  const [key, setKey] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setError(null);
    if (!looksLikeApiKey(key)) {
      setError(new Error("That is not an API key: keys look like nxk_0123456789abcdef_… ."));
      return;
    }
    setBusy(true);
    try {
      await signIn(key);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <Center mih="100vh" p="md">
      <Paper withBorder shadow="sm" p="xl" w="100%" maw={440} component="main">
        <form onSubmit={submit}>
          <Stack>
            <Title order={1} size="h2">
              Nexus Cloud
            </Title>
            <Text c="dimmed" size="sm">
              Sign in with an API key. It is kept only in this tab's session storage and sent only to this
              server.
            </Text>
            <PasswordInput
              label="API key"
              placeholder="nxk_…"
              value={key}
              onChange={(e) => setKey(e.currentTarget.value)}
              autoComplete="off"
              required
              data-autofocus
            />
            {error !== null && <ErrorAlert error={error} title="Could not sign in" />}
            <Button type="submit" loading={busy}>
              Sign in
            </Button>
          </Stack>
        </form>
      </Paper>
    </Center>
  );
}
