//! The resource types the fake serves and how request paths map onto them.

/// One served resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural name in paths.
    pub plural: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a `/status` subresource: status is dropped on create and ignored on main-resource
    /// writes, spec is ignored on status writes.
    pub status_subresource: bool,
    /// A Nexus CRD: every write is validated against the generated schema and its CEL rules.
    pub nexus: bool,
}

impl ResourceType {
    /// `apiVersion` of objects of this type.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `group/plural` (or `plural` for core), used as the store's type key.
    pub fn key(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}/{}", self.group, self.plural)
        }
    }
}

const fn core(
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
) -> ResourceType {
    ResourceType {
        group: "",
        version: "v1",
        plural,
        kind,
        namespaced,
        status_subresource: status,
        nexus: false,
    }
}

const fn nexus(plural: &'static str, kind: &'static str, namespaced: bool) -> ResourceType {
    ResourceType {
        group: "nexus.dev",
        version: "v1alpha1",
        plural,
        kind,
        namespaced,
        status_subresource: true,
        nexus: true,
    }
}

/// Everything the fake serves.
pub const TYPES: &[ResourceType] = &[
    core("nodes", "Node", false, true),
    core("namespaces", "Namespace", false, true),
    core("pods", "Pod", true, true),
    core("secrets", "Secret", true, false),
    core("configmaps", "ConfigMap", true, false),
    core("serviceaccounts", "ServiceAccount", true, false),
    ResourceType {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
        nexus: false,
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status_subresource: false,
        nexus: false,
    },
    ResourceType {
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        kind: "PodDisruptionBudget",
        namespaced: true,
        status_subresource: true,
        nexus: false,
    },
    nexus("fabrics", "Fabric", false),
    nexus("nexusnodes", "NexusNode", false),
    nexus("modelidentities", "ModelIdentity", true),
    nexus("routingdomains", "RoutingDomain", true),
];

/// The type of `kind` (first match).
pub fn by_kind(kind: &str) -> Option<ResourceType> {
    TYPES.iter().copied().find(|t| t.kind == kind)
}

/// A parsed request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Resource type.
    pub rt: ResourceType,
    /// Namespace in the path (`None` for cluster-scoped paths and all-namespace lists).
    pub namespace: Option<String>,
    /// Object name, for object paths.
    pub name: Option<String>,
    /// Subresource (`status`, `eviction`).
    pub sub: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/{group}/{version}/...`.
pub fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, s] => (*p, Some((*n).to_owned()), Some((*s).to_owned())),
        // `/api/v1/namespaces/{name}` itself.
        _ if namespace.is_some() && rest.is_empty() => return None,
        _ => return None,
    };
    let rt = TYPES
        .iter()
        .copied()
        .find(|t| t.group == group && t.version == version && t.plural == plural)?;
    if namespace.is_some() && !rt.namespaced {
        return None;
    }
    Some(Target {
        rt,
        namespace,
        name,
        sub,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_path("/api/v1/namespaces/a/pods/p/eviction").expect("eviction");
        assert_eq!(t.rt.kind, "Pod");
        assert_eq!(t.namespace.as_deref(), Some("a"));
        assert_eq!(t.name.as_deref(), Some("p"));
        assert_eq!(t.sub.as_deref(), Some("eviction"));
        let t = parse_path("/apis/nexus.dev/v1alpha1/nexusnodes/n1/status").expect("status");
        assert_eq!(t.rt.kind, "NexusNode");
        assert_eq!(t.sub.as_deref(), Some("status"));
        let t = parse_path("/api/v1/pods").expect("all pods");
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(parse_path("/apis/nexus.dev/v1alpha1/namespaces/x/nexusnodes").is_none());
        assert!(parse_path("/version").is_none());
    }
}
