//! The Cedar files reviewers read, tested as they are: they validate, every
//! ALLOW/DENY case decides as its file says, and the permission matrix in
//! policies/README.md is exactly what the policies decide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tenancy_server::domain::authz::{
    Action, Authz, AuthzError, Principal, Resource, TenantRole, WorkspaceRole, POLICY_FILE,
    SCHEMA_FILE,
};
use uuid::Uuid;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn authz() -> Authz {
    Authz::load(&dir()).unwrap_or_else(|e| panic!("policies do not load: {e}"))
}

/// Names in case files ("acme", "design") stand for ids.
#[derive(Default)]
struct Names(HashMap<String, Uuid>);

impl Names {
    fn id(&mut self, name: &str) -> Uuid {
        let next = self.0.len() as u128 + 100;
        *self
            .0
            .entry(name.to_owned())
            .or_insert_with(|| Uuid::from_u128(next))
    }
}

#[derive(Deserialize)]
struct CaseFile {
    why: String,
    principal: CasePrincipal,
    action: String,
    resource: CaseResource,
}

#[derive(Deserialize)]
struct CasePrincipal {
    tenant: String,
    tenant_role: String,
    #[serde(default)]
    super_admin: bool,
    #[serde(default)]
    workspace_roles: HashMap<String, String>,
}

#[derive(Deserialize)]
struct CaseResource {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    tenant: Option<String>,
    workspace: Option<String>,
}

fn resource(names: &mut Names, r: &CaseResource) -> Resource {
    let mut id = |n: &Option<String>| names.id(n.as_deref().expect("field missing in case file"));
    match r.kind.as_str() {
        "Platform" => Resource::Platform,
        "Tenant" => Resource::Tenant(id(&r.id)),
        "Workspace" => Resource::Workspace {
            id: id(&r.id),
            tenant: id(&r.tenant),
        },
        "Board" => Resource::Board {
            id: id(&r.id),
            tenant: id(&r.tenant),
            workspace: id(&r.workspace),
        },
        "Task" => Resource::Task {
            id: id(&r.id),
            tenant: id(&r.tenant),
            workspace: id(&r.workspace),
        },
        other => panic!("unknown resource type {other}"),
    }
}

#[test]
fn every_case_file_decides_as_its_folder_says() {
    let authz = authz();
    let mut checked = 0;
    for (folder, expect_allow) in [("ALLOW", true), ("DENY", false)] {
        let mut files: Vec<_> = std::fs::read_dir(dir().join("tests").join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let case: CaseFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                !case.why.is_empty(),
                "{}: every case says why",
                path.display()
            );
            let mut names = Names::default();
            let principal = Principal {
                user: Uuid::from_u128(1),
                tenant: names.id(&case.principal.tenant),
                tenant_role: TenantRole::parse(&case.principal.tenant_role)
                    .unwrap_or_else(|| panic!("{}: unknown tenant role", path.display())),
                super_admin: case.principal.super_admin,
                workspace_roles: case
                    .principal
                    .workspace_roles
                    .iter()
                    .map(|(ws, role)| {
                        let role = WorkspaceRole::parse(role).unwrap_or_else(|| {
                            panic!("{}: unknown workspace role {role}", path.display())
                        });
                        (names.id(ws), role)
                    })
                    .collect(),
            };
            let resource = resource(&mut names, &case.resource);
            let action: Action = case
                .action
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let decision = authz.decide(&principal, action, &resource);
            assert!(
                decision.errors.is_empty(),
                "{}: {:?}",
                path.display(),
                decision.errors
            );
            assert_eq!(
                decision.allowed,
                expect_allow,
                "{}: {} (decided by {:?})",
                path.display(),
                case.why,
                decision.policies
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} cases found");
}

#[test]
fn the_readme_matrix_is_what_the_policies_decide() {
    let generated = authz().permission_matrix_markdown();
    let readme = std::fs::read_to_string(dir().join("README.md")).unwrap();
    let start = readme
        .find("<!-- matrix:start -->")
        .expect("matrix start marker")
        + "<!-- matrix:start -->".len();
    let end = readme
        .find("<!-- matrix:end -->")
        .expect("matrix end marker");
    assert_eq!(
        readme[start..end].trim(),
        generated.trim(),
        "policies/README.md matrix is stale; regenerate with `tenancy-server policy-matrix`"
    );
}

#[test]
fn the_action_list_matches_the_schema() {
    let mut ours: Vec<String> = Action::ALL.iter().map(|a| a.as_str().to_owned()).collect();
    ours.sort();
    assert_eq!(ours, authz().schema_actions());
}

#[test]
fn cross_tenant_is_denied_for_every_role_and_action() {
    let authz = authz();
    let (home, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let workspace = Uuid::from_u128(3);
    for role in [TenantRole::Owner, TenantRole::Admin, TenantRole::Member] {
        for ws_role in [
            None,
            Some(WorkspaceRole::Admin),
            Some(WorkspaceRole::Member),
            Some(WorkspaceRole::Viewer),
        ] {
            let principal = Principal {
                user: Uuid::from_u128(9),
                tenant: home,
                tenant_role: role,
                super_admin: true,
                workspace_roles: ws_role
                    .map(|r| HashMap::from([(workspace, r)]))
                    .unwrap_or_default(),
            };
            for action in Action::ALL {
                let resource = match action.kind() {
                    tenancy_server::domain::authz::Kind::Platform => continue,
                    tenancy_server::domain::authz::Kind::Tenant => Resource::Tenant(other),
                    tenancy_server::domain::authz::Kind::Workspace => Resource::Workspace {
                        id: workspace,
                        tenant: other,
                    },
                    tenancy_server::domain::authz::Kind::Board => Resource::Board {
                        id: Uuid::from_u128(4),
                        tenant: other,
                        workspace,
                    },
                    tenancy_server::domain::authz::Kind::Task => Resource::Task {
                        id: Uuid::from_u128(5),
                        tenant: other,
                        workspace,
                    },
                };
                let decision = authz.decide(&principal, action, &resource);
                assert!(
                    !decision.allowed,
                    "{role:?}/{ws_role:?} {action} across tenants"
                );
                assert!(
                    decision
                        .policies
                        .iter()
                        .any(|p| p.starts_with("forbid-cross-tenant")),
                    "{action}: decided by {:?}",
                    decision.policies
                );
            }
        }
    }
}

fn load_broken(policy: &str) -> AuthzError {
    let schema = std::fs::read_to_string(dir().join(SCHEMA_FILE)).unwrap();
    match Authz::from_sources(SCHEMA_FILE, &schema, POLICY_FILE, policy) {
        Ok(_) => panic!("a broken policy set loaded"),
        Err(e) => e,
    }
}

#[test]
fn a_broken_policy_file_is_refused_with_file_and_line() {
    let syntax = load_broken("@id(\"a\")\npermit (principal, action, resource);\n\n@id(\"b\")\npermit (principal, action resource);\n");
    assert!(
        matches!(&syntax, AuthzError::Invalid { file, line: 5, .. } if file == POLICY_FILE),
        "{syntax}"
    );

    let invalid = load_broken(
        "@id(\"ok\")\npermit (principal, action, resource);\n@id(\"typo\")\npermit (principal, action, resource is Tenancy::Task)\nwhen { resource.tennant == principal.tenant };\n",
    );
    assert!(
        matches!(&invalid, AuthzError::Invalid { line: 5, .. }),
        "strict validation names the line: {invalid}"
    );

    let missing_id = load_broken("permit (principal, action, resource);");
    assert!(
        missing_id.to_string().contains("has no @id"),
        "{missing_id}"
    );
    let twice = load_broken("@id(\"x\")\npermit (principal, action, resource);\n@id(\"x\")\nforbid (principal, action, resource);\n");
    assert!(
        matches!(&twice, AuthzError::Invalid { line: 3, .. }),
        "{twice}"
    );
}

#[test]
fn a_policy_naming_a_role_that_does_not_exist_is_refused() {
    // A typo in a role was a string comparison that never matched; the
    // enumerated TenantRole makes it a validation error at start-up.
    let typo = load_broken(
        "@id(\"ok\")\npermit (principal, action, resource);\n@id(\"typo\")\npermit (principal, action, resource)\nwhen { principal.tenant_role == Tenancy::TenantRole::\"onwer\" };\n",
    );
    assert!(
        matches!(&typo, AuthzError::Invalid { line: 5, .. }),
        "the typo's line is named: {typo}"
    );
    // And the same comparison against a string no longer validates.
    let string = load_broken(
        "@id(\"s\")\npermit (principal, action, resource)\nwhen { principal.tenant_role == \"owner\" };\n",
    );
    assert!(matches!(&string, AuthzError::Invalid { .. }), "{string}");
    // Every role the service uses is one the schema enumerates.
    for role in TenantRole::ALL {
        let policy = format!(
            "@id(\"r\")\npermit (principal, action, resource)\nwhen {{ principal.tenant_role == Tenancy::TenantRole::\"{}\" }};\n",
            role.as_str()
        );
        let schema = std::fs::read_to_string(dir().join(SCHEMA_FILE)).unwrap();
        Authz::from_sources(SCHEMA_FILE, &schema, POLICY_FILE, &policy)
            .unwrap_or_else(|e| panic!("{role:?}: {e}"));
    }
}

/// Every shape a decision can have, with fresh ids each time it is asked.
fn shapes(mut ids: impl FnMut() -> Uuid) -> Vec<(Principal, Action, Resource)> {
    use tenancy_server::domain::authz::Kind;
    let mut out = Vec::new();
    for role in TenantRole::ALL {
        for super_admin in [false, true] {
            for ws_role in [
                None,
                Some(WorkspaceRole::Admin),
                Some(WorkspaceRole::Member),
                Some(WorkspaceRole::Viewer),
            ] {
                for same_tenant in [true, false] {
                    for action in Action::ALL {
                        let (home, workspace) = (ids(), ids());
                        let tenant = if same_tenant { home } else { ids() };
                        let principal = Principal {
                            user: ids(),
                            tenant: home,
                            tenant_role: role,
                            super_admin,
                            // The caller's role in this workspace, and roles
                            // in others, which a decision must not look at.
                            workspace_roles: ws_role
                                .map(|r| {
                                    HashMap::from([(workspace, r), (ids(), WorkspaceRole::Admin)])
                                })
                                .unwrap_or_else(|| HashMap::from([(ids(), WorkspaceRole::Admin)])),
                        };
                        let resource = match action.kind() {
                            Kind::Platform => Resource::Platform,
                            Kind::Tenant => Resource::Tenant(tenant),
                            Kind::Workspace => Resource::Workspace {
                                id: workspace,
                                tenant,
                            },
                            Kind::Board => Resource::Board {
                                id: ids(),
                                tenant,
                                workspace,
                            },
                            Kind::Task => Resource::Task {
                                id: ids(),
                                tenant,
                                workspace,
                            },
                        };
                        out.push((principal, action, resource));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn decisions_kept_by_shape_are_what_evaluating_each_request_decides() {
    let authz = authz();
    assert!(authz.memoizes(), "the shipped policies name no entity ids");
    let mut next = 1_000u128;
    let mut ids = || {
        next += 1;
        Uuid::from_u128(next)
    };
    // Three rounds with new ids: the first fills the memo, the others are
    // answered from it, and every answer equals a full evaluation.
    let mut allowed = 0;
    for _ in 0..3 {
        for (principal, action, resource) in shapes(&mut ids) {
            let kept = authz.decide(&principal, action, &resource);
            let evaluated = authz.evaluate(&principal, action, &resource);
            assert_eq!(kept, evaluated, "{principal:?} {action} {resource:?}");
            allowed += usize::from(kept.allowed);
        }
    }
    assert!(allowed > 0, "some shapes are allowed");
}

#[test]
fn policies_that_name_an_entity_are_evaluated_for_every_request() {
    let schema = std::fs::read_to_string(dir().join(SCHEMA_FILE)).unwrap();
    let policies = std::fs::read_to_string(dir().join(POLICY_FILE)).unwrap();
    let banned = Uuid::from_u128(77);
    let with_literal = format!(
        "{policies}\n@id(\"ban-one-tenant\")\nforbid (principal, action, resource)\n\
         when {{ principal.tenant == Tenancy::Tenant::\"{banned}\" }};\n"
    );
    let authz = Authz::from_sources(SCHEMA_FILE, &schema, POLICY_FILE, &with_literal).unwrap();
    assert!(!authz.memoizes());
    let principal = |tenant| Principal {
        user: Uuid::from_u128(1),
        tenant,
        tenant_role: TenantRole::Owner,
        super_admin: false,
        workspace_roles: HashMap::new(),
    };
    let other = Uuid::from_u128(78);
    // Same shape, different ids, different decisions.
    assert!(
        authz
            .decide(
                &principal(other),
                Action::TenantView,
                &Resource::Tenant(other)
            )
            .allowed
    );
    let decision = authz.decide(
        &principal(banned),
        Action::TenantView,
        &Resource::Tenant(banned),
    );
    assert!(!decision.allowed);
    assert_eq!(decision.policies, ["ban-one-tenant"]);
}
