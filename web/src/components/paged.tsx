import { Button, Center } from "@mantine/core";
import { useInfiniteQuery } from "@tanstack/react-query";

interface Page<T> {
  data: T[];
  next_cursor?: string | null;
}

/** A cursor-paged list: all pages loaded so far, flattened, and a way to load the next. */
export function usePaged<T>(key: unknown[], fetchPage: (cursor: string | undefined) => Promise<Page<T>>) {
  const q = useInfiniteQuery({
    queryKey: key,
    queryFn: ({ pageParam }) => fetchPage(pageParam),
    initialPageParam: undefined as string | undefined,
    getNextPageParam: (last) => last.next_cursor ?? undefined,
  });
  const items = q.data?.pages.flatMap((p) => p.data) ?? [];
  return { query: q, items };
}

export function LoadMore({ paged }: { paged: ReturnType<typeof usePaged<unknown>>["query"] }) {
  if (!paged.hasNextPage) return null;
  return (
    <Center>
      <Button variant="light" loading={paged.isFetchingNextPage} onClick={() => paged.fetchNextPage()}>
        Load more
      </Button>
    </Center>
  );
}
