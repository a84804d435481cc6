//! One authorization decision with realistic entities: a tenant with 1,000
//! users and 100 workspaces, each user holding roles in up to 20
//! workspaces, random actions on random resources of the tenant (and some
//! of another tenant). Prints p50 and p99 of single decisions (timed one by
//! one) as the service makes them (`decide`, kept by request shape) and,
//! interleaved on the same requests, evaluated every time (`evaluate`),
//! then criterion's estimate of `decide`.
//!
//! Run: `cargo bench -p tenancy-server --bench authz`
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use criterion::{black_box, Criterion};
use tenancy_server::domain::authz::{
    Action, Authz, Kind, Principal, Resource, TenantRole, WorkspaceRole,
};
use uuid::Uuid;

const USERS: usize = 1_000;
const WORKSPACES: usize = 100;
const DECISIONS: usize = 200_000;

/// A small deterministic generator, so runs are comparable.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % below
    }
}

struct Setup {
    authz: Authz,
    principals: Vec<Principal>,
    requests: Vec<(usize, Action, Resource)>,
}

fn setup() -> Setup {
    let authz = Authz::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .expect("policies load");
    let tenant = Uuid::from_u128(1);
    let other = Uuid::from_u128(2);
    let workspaces: Vec<Uuid> = (0..WORKSPACES)
        .map(|i| Uuid::from_u128(1_000 + i as u128))
        .collect();
    let mut rng = Lcg(42);
    let principals = (0..USERS)
        .map(|u| {
            let tenant_role = [
                TenantRole::Owner,
                TenantRole::Admin,
                TenantRole::Member,
                TenantRole::Member,
                TenantRole::Member,
                TenantRole::Member,
            ][rng.next(6)];
            let workspace_roles: HashMap<Uuid, WorkspaceRole> = (0..rng.next(20) + 1)
                .map(|_| {
                    (
                        workspaces[rng.next(WORKSPACES)],
                        WorkspaceRole::ALL[rng.next(3)],
                    )
                })
                .collect();
            Principal {
                user: Uuid::from_u128(10_000 + u as u128),
                tenant,
                tenant_role,
                super_admin: false,
                workspace_roles,
            }
        })
        .collect();
    let requests = (0..4_096)
        .map(|i| {
            let action = Action::ALL[rng.next(Action::ALL.len())];
            let kind = action.kind();
            // One request in ten targets another tenant.
            let owner = if rng.next(10) == 0 { other } else { tenant };
            let workspace = workspaces[rng.next(WORKSPACES)];
            let resource = match kind {
                Kind::Platform => Resource::Platform,
                Kind::Tenant => Resource::Tenant(owner),
                Kind::Workspace => Resource::Workspace {
                    id: workspace,
                    tenant: owner,
                },
                Kind::Board => Resource::Board {
                    id: Uuid::from_u128(50_000 + i as u128),
                    tenant: owner,
                    workspace,
                },
                Kind::Task => Resource::Task {
                    id: Uuid::from_u128(90_000 + i as u128),
                    tenant: owner,
                    workspace,
                },
            };
            (rng.next(USERS), action, resource)
        })
        .collect();
    Setup {
        authz,
        principals,
        requests,
    }
}

/// Times `decide` (kept by shape after the first of each) and `evaluate`
/// (the policies evaluated for every request) on the same requests,
/// interleaved, and prints both and their ratio.
fn percentiles(setup: &Setup) {
    let mut kept = Vec::with_capacity(DECISIONS);
    let mut evaluated = Vec::with_capacity(DECISIONS);
    let mut allowed = 0usize;
    for i in 0..DECISIONS {
        let (user, action, resource) = &setup.requests[i % setup.requests.len()];
        let principal = &setup.principals[*user];
        let start = Instant::now();
        let decision = setup.authz.decide(principal, *action, resource);
        kept.push(start.elapsed());
        allowed += usize::from(black_box(decision).allowed);
        let start = Instant::now();
        black_box(setup.authz.evaluate(principal, *action, resource));
        evaluated.push(start.elapsed());
    }
    let at = |times: &mut Vec<std::time::Duration>, p: f64| {
        times.sort();
        times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1e6
    };
    let (kept50, kept99) = (at(&mut kept, 0.50), at(&mut kept, 0.99));
    let (eval50, eval99) = (at(&mut evaluated, 0.50), at(&mut evaluated, 0.99));
    println!(
        "authz decision ({USERS} users, {WORKSPACES} workspaces, {DECISIONS} decisions, {:.0}% allowed): p50 {kept50:.1} us, p99 {kept99:.1} us, max {:.1} us (target p50 <= 10 us, p99 <= 25 us)",
        allowed as f64 * 100.0 / DECISIONS as f64,
        kept[kept.len() - 1].as_secs_f64() * 1e6,
    );
    println!(
        "baseline, every request evaluated (Authz::evaluate), same requests interleaved: p50 {eval50:.1} us, p99 {eval99:.1} us; decide/evaluate p50 ratio {:.3}",
        kept50 / eval50
    );
}

fn main() {
    let setup = setup();
    percentiles(&setup);
    let mut criterion = Criterion::default().configure_from_args();
    let mut i = 0usize;
    criterion.bench_function("authz_decide", |b| {
        b.iter(|| {
            let (user, action, resource) = &setup.requests[i % setup.requests.len()];
            i += 1;
            black_box(
                setup
                    .authz
                    .decide(&setup.principals[*user], *action, resource),
            )
        })
    });
    criterion.final_summary();
}
