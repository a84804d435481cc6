//! Authorization with Cedar: the policies in `policies/` (the same files
//! security reviewers read), validated against the schema in strict mode at
//! start-up, and one decision per request for every tenant and workspace
//! resource.
//!
//! This module must never build a request whose principal acts in a tenant
//! other than the one the request resolved, and never treat an evaluation
//! error as an allow.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use uuid::Uuid;

pub const SCHEMA_FILE: &str = "tenancy.cedarschema";
pub const POLICY_FILE: &str = "tenancy.cedar";

/// What can be wrong with the policy files; refuses start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// The resource kinds actions apply to, as in the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Platform,
    Tenant,
    Workspace,
    Board,
    Task,
}

/// Every action of the schema (`Tenancy::Action::"<as_str>"`): a handler
/// names one of these, never a string, and a test holds this list and the
/// schema's equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    TenantView,
    TenantUpdate,
    TenantDelete,
    TenantManageUsers,
    TenantManageOwners,
    TenantManageSettings,
    TenantManageBilling,
    TenantViewAudit,
    TenantManageIntegrations,
    TenantRotateKeys,
    TenantExportData,
    WorkspaceCreate,
    WorkspaceView,
    WorkspaceUpdate,
    WorkspaceArchive,
    WorkspaceDelete,
    WorkspaceManageMembers,
    BoardCreate,
    BoardView,
    BoardUpdate,
    BoardDelete,
    TaskCreate,
    TaskView,
    TaskUpdate,
    TaskDelete,
    PlatformManageTenants,
    PlatformViewTenants,
}

impl Action {
    pub const ALL: [Action; 27] = [
        Action::TenantView,
        Action::TenantUpdate,
        Action::TenantDelete,
        Action::TenantManageUsers,
        Action::TenantManageOwners,
        Action::TenantManageSettings,
        Action::TenantManageBilling,
        Action::TenantViewAudit,
        Action::TenantManageIntegrations,
        Action::TenantRotateKeys,
        Action::TenantExportData,
        Action::WorkspaceCreate,
        Action::WorkspaceView,
        Action::WorkspaceUpdate,
        Action::WorkspaceArchive,
        Action::WorkspaceDelete,
        Action::WorkspaceManageMembers,
        Action::BoardCreate,
        Action::BoardView,
        Action::BoardUpdate,
        Action::BoardDelete,
        Action::TaskCreate,
        Action::TaskView,
        Action::TaskUpdate,
        Action::TaskDelete,
        Action::PlatformManageTenants,
        Action::PlatformViewTenants,
    ];

    /// The action's id in the policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::TenantView => "tenant:view",
            Action::TenantUpdate => "tenant:update",
            Action::TenantDelete => "tenant:delete",
            Action::TenantManageUsers => "tenant:manageUsers",
            Action::TenantManageOwners => "tenant:manageOwners",
            Action::TenantManageSettings => "tenant:manageSettings",
            Action::TenantManageBilling => "tenant:manageBilling",
            Action::TenantViewAudit => "tenant:viewAudit",
            Action::TenantManageIntegrations => "tenant:manageIntegrations",
            Action::TenantRotateKeys => "tenant:rotateKeys",
            Action::TenantExportData => "tenant:exportData",
            Action::WorkspaceCreate => "workspace:create",
            Action::WorkspaceView => "workspace:view",
            Action::WorkspaceUpdate => "workspace:update",
            Action::WorkspaceArchive => "workspace:archive",
            Action::WorkspaceDelete => "workspace:delete",
            Action::WorkspaceManageMembers => "workspace:manageMembers",
            Action::BoardCreate => "board:create",
            Action::BoardView => "board:view",
            Action::BoardUpdate => "board:update",
            Action::BoardDelete => "board:delete",
            Action::TaskCreate => "task:create",
            Action::TaskView => "task:view",
            Action::TaskUpdate => "task:update",
            Action::TaskDelete => "task:delete",
            Action::PlatformManageTenants => "platform:manageTenants",
            Action::PlatformViewTenants => "platform:viewTenants",
        }
    }

    /// The kind of resource the action applies to.
    pub fn kind(self) -> Kind {
        match self {
            Action::TenantView => Kind::Tenant,
            Action::TenantUpdate => Kind::Tenant,
            Action::TenantDelete => Kind::Tenant,
            Action::TenantManageUsers => Kind::Tenant,
            Action::TenantManageOwners => Kind::Tenant,
            Action::TenantManageSettings => Kind::Tenant,
            Action::TenantManageBilling => Kind::Tenant,
            Action::TenantViewAudit => Kind::Tenant,
            Action::TenantManageIntegrations => Kind::Tenant,
            Action::TenantRotateKeys => Kind::Tenant,
            Action::TenantExportData => Kind::Tenant,
            Action::WorkspaceCreate => Kind::Tenant,
            Action::WorkspaceView => Kind::Workspace,
            Action::WorkspaceUpdate => Kind::Workspace,
            Action::WorkspaceArchive => Kind::Workspace,
            Action::WorkspaceDelete => Kind::Workspace,
            Action::WorkspaceManageMembers => Kind::Workspace,
            Action::BoardCreate => Kind::Workspace,
            Action::BoardView => Kind::Board,
            Action::BoardUpdate => Kind::Board,
            Action::BoardDelete => Kind::Board,
            Action::TaskCreate => Kind::Board,
            Action::TaskView => Kind::Task,
            Action::TaskUpdate => Kind::Task,
            Action::TaskDelete => Kind::Task,
            Action::PlatformManageTenants => Kind::Platform,
            Action::PlatformViewTenants => Kind::Platform,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown action {s:?}"))
    }
}

/// A member's role in a tenant (`none`: not a member, as for a super admin
/// acting on the platform). The schema's `Tenancy::TenantRole` enumerates
/// the same names, so a policy naming another fails validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantRole {
    Owner,
    Admin,
    Member,
    None,
}

impl TenantRole {
    pub const ALL: [TenantRole; 4] = [
        TenantRole::Owner,
        TenantRole::Admin,
        TenantRole::Member,
        TenantRole::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantRole::Owner => "owner",
            TenantRole::Admin => "admin",
            TenantRole::Member => "member",
            TenantRole::None => "none",
        }
    }

    /// The role named `s` (as stored in `app.tenant_memberships.role`).
    pub fn parse(s: &str) -> Option<TenantRole> {
        TenantRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A tenant member's role in one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceRole {
    Admin,
    Member,
    Viewer,
}

impl WorkspaceRole {
    pub const ALL: [WorkspaceRole; 3] = [
        WorkspaceRole::Admin,
        WorkspaceRole::Member,
        WorkspaceRole::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceRole::Admin => "admin",
            WorkspaceRole::Member => "member",
            WorkspaceRole::Viewer => "viewer",
        }
    }

    /// The role named `s` (as stored in `app.workspace_members.role`).
    pub fn parse(s: &str) -> Option<WorkspaceRole> {
        WorkspaceRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The caller, inside the tenant of the request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: Uuid,
    pub tenant: Uuid,
    pub tenant_role: TenantRole,
    pub super_admin: bool,
    pub workspace_roles: HashMap<Uuid, WorkspaceRole>,
}

/// The resource of a request, with the tenant (and workspace) it belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Resource {
    Platform,
    Tenant(Uuid),
    Workspace {
        id: Uuid,
        tenant: Uuid,
    },
    Board {
        id: Uuid,
        tenant: Uuid,
        workspace: Uuid,
    },
    Task {
        id: Uuid,
        tenant: Uuid,
        workspace: Uuid,
    },
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The @id of every policy that decided it (empty: no permit applied).
    pub policies: Vec<String>,
    pub errors: Vec<String>,
}

struct Types {
    user: EntityTypeName,
    tenant: EntityTypeName,
    workspace: EntityTypeName,
    board: EntityTypeName,
    task: EntityTypeName,
    platform: EntityTypeName,
    action: EntityTypeName,
    tenant_role: EntityTypeName,
}

pub struct Authz {
    policies: PolicySet,
    schema: Schema,
    authorizer: Authorizer,
    types: Types,
    /// Decisions by [`Shape`], when the policies name no entity but actions
    /// and tenant roles (see [`Authz::decide`]); `None` otherwise.
    memo: Option<std::sync::RwLock<HashMap<Shape, Decision>>>,
}

/// Everything a decision depends on when the policies name no entity:
/// roles, the action, the kind of resource, and how the resource's tenant
/// and workspace relate to the caller's. Entity ids enter the policies
/// only through equality and membership (`principal.tenant ==
/// resource.tenant`, `principal.workspace_admin.contains(resource)`), so
/// two requests of one shape decide alike whatever their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    tenant_role: TenantRole,
    super_admin: bool,
    /// The caller's role in the workspace the request concerns.
    scope_role: Option<WorkspaceRole>,
    action: Action,
    kind: Kind,
    /// Whether the resource belongs to the caller's tenant.
    same_tenant: bool,
}

impl Shape {
    fn of(principal: &Principal, action: Action, resource: &Resource) -> Shape {
        let (kind, tenant, scope) = match resource {
            Resource::Platform => (Kind::Platform, None, None),
            Resource::Tenant(t) => (Kind::Tenant, Some(*t), None),
            Resource::Workspace { id, tenant } => (Kind::Workspace, Some(*tenant), Some(*id)),
            Resource::Board {
                tenant, workspace, ..
            } => (Kind::Board, Some(*tenant), Some(*workspace)),
            Resource::Task {
                tenant, workspace, ..
            } => (Kind::Task, Some(*tenant), Some(*workspace)),
        };
        Shape {
            tenant_role: principal.tenant_role,
            super_admin: principal.super_admin,
            scope_role: scope.and_then(|w| principal.workspace_roles.get(&w).copied()),
            action,
            kind,
            same_tenant: tenant == Some(principal.tenant),
        }
    }
}

/// Whether no policy names an entity other than an action or a tenant role
/// (a policy such as `resource == Tenancy::Tenant::"..."` would make
/// decisions depend on ids). Anything that cannot be read counts as naming
/// one: the memo is then off.
fn names_only_actions_and_roles(policies: &PolicySet) -> bool {
    policies.policies().all(|policy| {
        let Ok(json) = policy.to_json() else {
            return false;
        };
        let mut stack = vec![&json];
        while let Some(value) = stack.pop() {
            match value {
                serde_json::Value::Object(map) => {
                    for (key, v) in map {
                        if key == "type" {
                            let allowed = v.as_str().is_some_and(|t| {
                                t == "Tenancy::Action" || t == "Tenancy::TenantRole"
                            });
                            if !allowed {
                                return false;
                            }
                        }
                        stack.push(v);
                    }
                }
                serde_json::Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
        true
    })
}

fn line_of(src: &str, diagnostic: &dyn miette::Diagnostic) -> usize {
    let offset = diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset())
        .or_else(|| {
            diagnostic
                .related()
                .and_then(|mut r| r.next())
                .and_then(|d| d.labels()?.next().map(|l| l.offset()))
        })
        .unwrap_or(0);
    src.get(..offset.min(src.len()))
        .map(|s| s.matches('\n').count() + 1)
        .unwrap_or(1)
}

fn invalid(file: &str, src: &str, diagnostic: &dyn miette::Diagnostic) -> AuthzError {
    AuthzError::Invalid {
        file: file.to_owned(),
        line: line_of(src, diagnostic),
        message: diagnostic.to_string(),
    }
}

fn type_name(name: &str) -> Result<EntityTypeName, AuthzError> {
    EntityTypeName::from_str(name).map_err(|e| AuthzError::File {
        file: SCHEMA_FILE.to_owned(),
        message: e.to_string(),
    })
}

/// The policies shipped with the service (`policies/`), compiled in.
const EMBEDDED_SCHEMA: &str = include_str!("../../../policies/tenancy.cedarschema");
const EMBEDDED_POLICIES: &str = include_str!("../../../policies/tenancy.cedar");

impl Authz {
    /// The policies built into the binary, or those in `dir` when an
    /// operator overrides them (`TENANCY_POLICY_DIR`).
    pub fn load_or_embedded(dir: Option<&Path>) -> Result<Self, AuthzError> {
        match dir {
            Some(dir) => Self::load(dir),
            None => Self::embedded(),
        }
    }

    /// The policies built into the binary (the files in `policies/` when
    /// it was built).
    pub fn embedded() -> Result<Self, AuthzError> {
        Self::from_sources(
            &format!("(built in) {SCHEMA_FILE}"),
            EMBEDDED_SCHEMA,
            &format!("(built in) {POLICY_FILE}"),
            EMBEDDED_POLICIES,
        )
    }

    /// Loads `tenancy.cedarschema` and `tenancy.cedar` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, AuthzError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| AuthzError::File {
                file: path.display().to_string(),
                message: e.to_string(),
            })
        };
        let schema_path = dir.join(SCHEMA_FILE).display().to_string();
        let policy_path = dir.join(POLICY_FILE).display().to_string();
        Self::from_sources(
            &schema_path,
            &read(SCHEMA_FILE)?,
            &policy_path,
            &read(POLICY_FILE)?,
        )
    }

    /// Parses and validates (strict mode); every policy needs a unique `@id`.
    pub fn from_sources(
        schema_file: &str,
        schema_src: &str,
        policy_file: &str,
        policy_src: &str,
    ) -> Result<Self, AuthzError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(schema_src)
            .map_err(|e| invalid(schema_file, schema_src, &e))?;
        let parsed =
            PolicySet::from_str(policy_src).map_err(|e| invalid(policy_file, policy_src, &e))?;
        let mut policies = PolicySet::new();
        for policy in parsed.policies() {
            let summary = || {
                policy
                    .to_string()
                    .chars()
                    .take(80)
                    .collect::<String>()
                    .replace('\n', " ")
            };
            let Some(id) = policy.annotation("id") else {
                return Err(AuthzError::File {
                    file: policy_file.to_owned(),
                    message: format!("a policy has no @id(\"...\") annotation: {}", summary()),
                });
            };
            policies
                .add(policy.new_id(PolicyId::new(id)))
                .map_err(|_| AuthzError::Invalid {
                    file: policy_file.to_owned(),
                    line: policy_src
                        .rfind(&format!("@id(\"{id}\")"))
                        .map(|o| line_of_offset(policy_src, o))
                        .unwrap_or(1),
                    message: format!("@id {id:?} is used twice"),
                })?;
        }
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if let Some(error) = validation.validation_errors().next() {
            return Err(invalid(policy_file, policy_src, error));
        }
        let types = Types {
            user: type_name("Tenancy::User")?,
            tenant: type_name("Tenancy::Tenant")?,
            workspace: type_name("Tenancy::Workspace")?,
            board: type_name("Tenancy::Board")?,
            task: type_name("Tenancy::Task")?,
            platform: type_name("Tenancy::Platform")?,
            action: type_name("Tenancy::Action")?,
            tenant_role: type_name("Tenancy::TenantRole")?,
        };
        let memo =
            names_only_actions_and_roles(&policies).then(|| std::sync::RwLock::new(HashMap::new()));
        Ok(Self {
            policies,
            schema,
            authorizer: Authorizer::new(),
            types,
            memo,
        })
    }

    fn uid(&self, kind: &EntityTypeName, id: impl AsRef<str>) -> EntityUid {
        EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
    }

    /// The caller's workspaces with `role`, limited to the workspace the
    /// request concerns (`scope`): that is all a decision can look at, and it
    /// keeps a decision's cost independent of how many workspaces a user has.
    fn workspace_set(
        &self,
        principal: &Principal,
        role: WorkspaceRole,
        scope: Option<Uuid>,
    ) -> RestrictedExpression {
        RestrictedExpression::new_set(
            principal
                .workspace_roles
                .iter()
                .filter(|(ws, r)| **r == role && scope == Some(**ws))
                .map(|(ws, _)| {
                    RestrictedExpression::new_entity_uid(
                        self.uid(&self.types.workspace, ws.to_string()),
                    )
                }),
        )
    }

    fn entities(
        &self,
        principal: &Principal,
        resource: &Resource,
    ) -> Result<(EntityUid, EntityUid, Entities), String> {
        let scope = match resource {
            Resource::Workspace { id, .. } => Some(*id),
            Resource::Board { workspace, .. } | Resource::Task { workspace, .. } => {
                Some(*workspace)
            }
            Resource::Tenant(_) | Resource::Platform => None,
        };
        let tenant_uid = |t: &Uuid| self.uid(&self.types.tenant, t.to_string());
        let principal_uid = self.uid(&self.types.user, principal.user.to_string());
        let attrs = HashMap::from([
            (
                "tenant".to_owned(),
                RestrictedExpression::new_entity_uid(tenant_uid(&principal.tenant)),
            ),
            (
                "tenant_role".to_owned(),
                RestrictedExpression::new_entity_uid(
                    self.uid(&self.types.tenant_role, principal.tenant_role.as_str()),
                ),
            ),
            (
                "super_admin".to_owned(),
                RestrictedExpression::new_bool(principal.super_admin),
            ),
            (
                "workspace_admin".to_owned(),
                self.workspace_set(principal, WorkspaceRole::Admin, scope),
            ),
            (
                "workspace_member".to_owned(),
                self.workspace_set(principal, WorkspaceRole::Member, scope),
            ),
            (
                "workspace_viewer".to_owned(),
                self.workspace_set(principal, WorkspaceRole::Viewer, scope),
            ),
        ]);
        let user =
            Entity::new(principal_uid.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
        let in_tenant = |tenant: &Uuid, workspace: Option<&Uuid>| {
            let mut attrs = HashMap::from([(
                "tenant".to_owned(),
                RestrictedExpression::new_entity_uid(tenant_uid(tenant)),
            )]);
            if let Some(ws) = workspace {
                attrs.insert(
                    "workspace".to_owned(),
                    RestrictedExpression::new_entity_uid(
                        self.uid(&self.types.workspace, ws.to_string()),
                    ),
                );
            }
            attrs
        };
        let (resource_uid, resource_entity) = match resource {
            Resource::Platform => {
                let uid = self.uid(&self.types.platform, "platform");
                (uid.clone(), Entity::new_no_attrs(uid, HashSet::new()))
            }
            Resource::Tenant(t) => {
                let uid = tenant_uid(t);
                (uid.clone(), Entity::new_no_attrs(uid, HashSet::new()))
            }
            Resource::Workspace { id, tenant } => {
                let uid = self.uid(&self.types.workspace, id.to_string());
                let entity = Entity::new(uid.clone(), in_tenant(tenant, None), HashSet::new())
                    .map_err(|e| e.to_string())?;
                (uid, entity)
            }
            Resource::Board {
                id,
                tenant,
                workspace,
            }
            | Resource::Task {
                id,
                tenant,
                workspace,
            } => {
                let kind = match resource {
                    Resource::Board { .. } => &self.types.board,
                    _ => &self.types.task,
                };
                let uid = self.uid(kind, id.to_string());
                let entity = Entity::new(
                    uid.clone(),
                    in_tenant(tenant, Some(workspace)),
                    HashSet::new(),
                )
                .map_err(|e| e.to_string())?;
                (uid, entity)
            }
        };
        // Built here from typed values, so they conform to the schema by
        // construction (server/tests/policies.rs decides with them); the
        // per-request schema check is skipped for speed (BENCHMARKS.md).
        let entities =
            Entities::from_entities([user, resource_entity], None).map_err(|e| e.to_string())?;
        Ok((principal_uid, resource_uid, entities))
    }

    /// Whether `user`, whose membership of `tenant` now has role `role`
    /// (read afresh, in the tenant's context), may still do `action` on
    /// the tenant: for work that outlives the request that was authorized
    /// (a provider checked over the network, a job run later).
    pub fn still_allowed(
        &self,
        user: Uuid,
        tenant: Uuid,
        role: Option<&str>,
        action: Action,
    ) -> bool {
        let principal = Principal {
            user,
            tenant,
            tenant_role: role.and_then(TenantRole::parse).unwrap_or(TenantRole::None),
            super_admin: false,
            workspace_roles: HashMap::new(),
        };
        self.decide(&principal, action, &Resource::Tenant(tenant))
            .allowed
    }

    /// Decides `action` by `principal` on `resource`. Anything that keeps
    /// the request from being evaluated is a deny, with the reason in `errors`.
    ///
    /// When the policies name no entity but actions and tenant roles, a
    /// decision is kept by its [`Shape`] (a few thousand at most) and the
    /// next request of that shape gets it without evaluating; a decision
    /// with errors is never kept. Policies that name other entities are
    /// evaluated every time.
    pub fn decide(&self, principal: &Principal, action: Action, resource: &Resource) -> Decision {
        let Some(memo) = &self.memo else {
            return self.evaluate(principal, action, resource);
        };
        let shape = Shape::of(principal, action, resource);
        if let Some(decision) = memo.read().ok().and_then(|m| m.get(&shape).cloned()) {
            return decision;
        }
        let decision = self.evaluate(principal, action, resource);
        if decision.errors.is_empty() {
            if let Ok(mut m) = memo.write() {
                m.insert(shape, decision.clone());
            }
        }
        decision
    }

    /// Whether decisions are kept by shape (the policies name no entity
    /// but actions and tenant roles).
    pub fn memoizes(&self) -> bool {
        self.memo.is_some()
    }

    /// Evaluates the policies for one request, every time.
    pub fn evaluate(&self, principal: &Principal, action: Action, resource: &Resource) -> Decision {
        let deny = |error: String| Decision {
            allowed: false,
            policies: Vec::new(),
            errors: vec![error],
        };
        let (principal_uid, resource_uid, entities) = match self.entities(principal, resource) {
            Ok(parts) => parts,
            Err(e) => return deny(e),
        };
        let action_uid = self.uid(&self.types.action, action.as_str());
        // No per-request schema check: principal and resource types come
        // from `Resource`, and `Action::ALL` is tested against the schema.
        let request = match Request::new(
            principal_uid,
            action_uid,
            resource_uid,
            Context::empty(),
            None,
        ) {
            Ok(r) => r,
            Err(e) => return deny(e.to_string()),
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let diagnostics = response.diagnostics();
        // Sorted: Cedar gives the deciding policies in no set order.
        let mut policies: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
        policies.sort();
        Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies,
            errors: diagnostics.errors().map(ToString::to_string).collect(),
        }
    }

    /// The action ids the schema declares.
    pub fn schema_actions(&self) -> Vec<String> {
        let mut actions: Vec<String> = self
            .schema
            .actions()
            .map(|a| a.id().unescaped().to_owned())
            .collect();
        actions.sort();
        actions
    }

    /// The role-by-action table, computed by asking the policies themselves.
    pub fn permission_matrix(&self) -> Vec<(Action, Vec<bool>)> {
        let tenant = Uuid::from_u128(1);
        let workspace = Uuid::from_u128(2);
        let resource = |kind: Kind| match kind {
            Kind::Platform => Resource::Platform,
            Kind::Tenant => Resource::Tenant(tenant),
            Kind::Workspace => Resource::Workspace {
                id: workspace,
                tenant,
            },
            Kind::Board => Resource::Board {
                id: Uuid::from_u128(3),
                tenant,
                workspace,
            },
            Kind::Task => Resource::Task {
                id: Uuid::from_u128(4),
                tenant,
                workspace,
            },
        };
        Action::ALL
            .into_iter()
            .map(|action| {
                let row = MATRIX_ROLES
                    .iter()
                    .map(|(_, tenant_role, ws_role, super_admin)| {
                        let principal = Principal {
                            user: Uuid::from_u128(10),
                            tenant,
                            tenant_role: *tenant_role,
                            super_admin: *super_admin,
                            workspace_roles: ws_role
                                .map(|r| HashMap::from([(workspace, r)]))
                                .unwrap_or_default(),
                        };
                        self.decide(&principal, action, &resource(action.kind()))
                            .allowed
                    })
                    .collect();
                (action, row)
            })
            .collect()
    }

    /// The role set as a tenant is provisioned with it: (scope, role, the
    /// actions the policies allow that role), for the tenant roles and the
    /// workspace roles (held by a tenant member).
    pub fn role_permissions(&self) -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
        let matrix = self.permission_matrix();
        MATRIX_ROLES
            .iter()
            .enumerate()
            .filter_map(|(column, (_, tenant_role, ws_role, super_admin))| {
                let (scope, role) = match (ws_role, *super_admin, *tenant_role) {
                    (_, true, _) | (None, false, TenantRole::None) => return None,
                    (Some(ws), false, _) => ("workspace", ws.as_str()),
                    (None, false, role) => ("tenant", role.as_str()),
                };
                let allowed = matrix
                    .iter()
                    .filter(|(_, row)| row.get(column).copied().unwrap_or(false))
                    .map(|(action, _)| action.as_str())
                    .collect();
                Some((scope, role, allowed))
            })
            .collect()
    }

    /// The matrix as a Markdown table (the one in policies/README.md).
    pub fn permission_matrix_markdown(&self) -> String {
        let mut out = String::from("| action |");
        for (name, ..) in MATRIX_ROLES {
            out.push_str(&format!(" {name} |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(MATRIX_ROLES.len()));
        out.push('\n');
        for (action, row) in self.permission_matrix() {
            out.push_str(&format!("| `{action}` |"));
            for allowed in row {
                out.push_str(if allowed { " allow |" } else { " - |" });
            }
            out.push('\n');
        }
        out
    }
}

fn line_of_offset(src: &str, offset: usize) -> usize {
    src.get(..offset.min(src.len()))
        .map(|s| s.matches('\n').count() + 1)
        .unwrap_or(1)
}

/// Columns of the permission matrix: (name, tenant role, workspace role on
/// the resource's workspace, super admin). Workspace roles are held by a
/// tenant member.
pub const MATRIX_ROLES: &[(&str, TenantRole, Option<WorkspaceRole>, bool)] = &[
    ("tenant owner", TenantRole::Owner, None, false),
    ("tenant admin", TenantRole::Admin, None, false),
    ("tenant member", TenantRole::Member, None, false),
    (
        "workspace admin",
        TenantRole::Member,
        Some(WorkspaceRole::Admin),
        false,
    ),
    (
        "workspace member",
        TenantRole::Member,
        Some(WorkspaceRole::Member),
        false,
    ),
    (
        "workspace viewer",
        TenantRole::Member,
        Some(WorkspaceRole::Viewer),
        false,
    ),
    ("non-member", TenantRole::None, None, false),
    ("super admin", TenantRole::None, None, true),
];
