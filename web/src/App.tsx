import { lazy, Suspense } from "react";
import { AppShell, Badge, Burger, Button, Center, Group, Loader, NavLink, ScrollArea, Text, Title } from "@mantine/core";
import { useDisclosure } from "@mantine/hooks";
import { Link, Navigate, Route, Routes, useLocation } from "react-router";
import { useSession } from "./session";
import { SignIn } from "./pages/SignIn";
import { Overview } from "./pages/Overview";
import { Domains } from "./pages/Domains";
import { DomainDetail } from "./pages/DomainDetail";
import { Models } from "./pages/Models";
// The model page carries the X.509 and ASN.1 code that makes CSRs: loaded when first opened.
const ModelDetail = lazy(() => import("./pages/ModelDetail").then((m) => ({ default: m.ModelDetail })));
import { Usage } from "./pages/Usage";
import { Invoices } from "./pages/Invoices";
import { InvoiceDetail } from "./pages/InvoiceDetail";
import { ApiKeys } from "./pages/ApiKeys";
import { Members } from "./pages/Members";
import { Audit } from "./pages/Audit";

const NAV = [
  { to: "/", label: "Overview" },
  { to: "/domains", label: "Routing domains" },
  { to: "/models", label: "Model identities" },
  { to: "/usage", label: "Usage" },
  { to: "/invoices", label: "Invoices" },
  { to: "/keys", label: "API keys" },
  { to: "/members", label: "Members" },
  { to: "/audit", label: "Audit log" },
];

export function App() {
  const { me, restoring, signOut } = useSession();
  const [opened, { toggle, close }] = useDisclosure();
  const location = useLocation();

  if (restoring) {
    return (
      <Center h="100vh" aria-busy="true">
        <Loader />
      </Center>
    );
  }
  if (!me) return <SignIn />;

  const active = (to: string) =>
    to === "/" ? location.pathname === "/" : location.pathname.startsWith(to);

  return (
    <AppShell
      header={{ height: 60 }}
      navbar={{ width: 230, breakpoint: "sm", collapsed: { mobile: !opened } }}
      padding="md"
    >
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <AppShell.Header>
        <Group h="100%" px="md" justify="space-between" wrap="nowrap">
          <Group gap="sm" wrap="nowrap">
            <Burger opened={opened} onClick={toggle} hiddenFrom="sm" size="sm" aria-label="Toggle navigation" />
            <Title order={1} size="h4">
              Nexus Cloud
            </Title>
            <Text c="dimmed" visibleFrom="xs" data-testid="tenant-name">
              {me.tenant.name}
            </Text>
          </Group>
          <Group gap="xs" wrap="nowrap">
            <Text size="sm" visibleFrom="md">
              {me.user.email}
            </Text>
            <Badge variant="light" data-testid="role">
              {me.user.role}
            </Badge>
            <Button variant="subtle" size="xs" onClick={signOut}>
              Sign out
            </Button>
          </Group>
        </Group>
      </AppShell.Header>
      <AppShell.Navbar p="xs" aria-label="Sections">
        <ScrollArea>
          {NAV.map((n) => (
            <NavLink
              key={n.to}
              component={Link}
              to={n.to}
              label={n.label}
              active={active(n.to)}
              onClick={close}
            />
          ))}
        </ScrollArea>
      </AppShell.Navbar>
      <AppShell.Main id="main" tabIndex={-1}>
        <Routes>
          <Route path="/" element={<Overview />} />
          <Route path="/domains" element={<Domains />} />
          <Route path="/domains/:id" element={<DomainDetail />} />
          <Route path="/models" element={<Models />} />
          <Route
            path="/models/:id"
            element={
              <Suspense fallback={<Center py="lg" aria-busy="true"><Loader size="sm" /></Center>}>
                <ModelDetail />
              </Suspense>
            }
          />
          <Route path="/usage" element={<Usage />} />
          <Route path="/invoices" element={<Invoices />} />
          <Route path="/invoices/:id" element={<InvoiceDetail />} />
          <Route path="/keys" element={<ApiKeys />} />
          <Route path="/members" element={<Members />} />
          <Route path="/audit" element={<Audit />} />
          <Route path="*" element={<Navigate to="/" replace />} />
        </Routes>
      </AppShell.Main>
    </AppShell>
  );
}
