import type { ReactNode } from "react";
import { Alert, Button, Center, Group, Loader, Stack, Text } from "@mantine/core";
import type { UseQueryResult } from "@tanstack/react-query";
import { describeProblem } from "../api/problem";

/** Loading, error (in words, with a retry) and empty states around a query's data. */
export function QueryView<T>({
  query,
  empty,
  isEmpty,
  children,
  label,
}: {
  query: UseQueryResult<T>;
  empty?: ReactNode;
  isEmpty?: (data: T) => boolean;
  children: (data: T) => ReactNode;
  label: string;
}) {
  if (query.isPending) {
    return (
      <Center py="lg" aria-busy="true" aria-live="polite">
        <Group gap="xs">
          <Loader size="sm" />
          <Text c="dimmed">Loading {label}…</Text>
        </Group>
      </Center>
    );
  }
  if (query.isError) {
    return <ErrorAlert error={query.error} title={`Could not load ${label}`} onRetry={() => query.refetch()} />;
  }
  if (isEmpty && isEmpty(query.data)) {
    return (
      <Center py="lg">
        <Text c="dimmed" data-testid="empty">
          {empty ?? `No ${label} yet.`}
        </Text>
      </Center>
    );
  }
  return <>{children(query.data)}</>;
}

export function ErrorAlert({
  error,
  title,
  onRetry,
}: {
  error: unknown;
  title: string;
  onRetry?: () => void;
}) {
  return (
    <Alert color="red" title={title} role="alert" data-testid="error">
      <Stack gap="xs">
        <Text size="sm">{describeProblem(error)}</Text>
        {onRetry && (
          <Group>
            <Button size="xs" variant="light" color="red" onClick={onRetry}>
              Retry
            </Button>
          </Group>
        )}
      </Stack>
    </Alert>
  );
}

/** Why the caller cannot do something, shown where the control would be. */
export function NotAllowed({ reason }: { reason: string }) {
  return (
    <Text size="sm" c="dimmed" data-testid="not-allowed">
      {reason}
    </Text>
  );
}
