//! The parts of the OpenAPI document that are the same for many
//! operations: the title and security scheme, the error answers every
//! operation can give, the tenant header of tenant-scoped routes.

use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{
    ContentBuilder, KnownFormat, ObjectBuilder, OpenApi, Ref, Required, ResponseBuilder,
    SchemaFormat, Type,
};

/// What the document says beside the operations: title, security scheme,
/// the error body.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    use utoipa::OpenApi as _;

    #[derive(utoipa::OpenApi)]
    #[openapi(
        info(
            title = "tenancy",
            description = "Multi-tenant service in front of the tenancy PostgreSQL extension. \
                Tenant-scoped routes (`/api/...`) need a bearer token and a tenant, \
                resolved from the host (subdomain or custom domain), the `X-Tenant-ID` \
                header or the token's tenant claim. Every error is `{\"error\", \"code\"}`."
        ),
        components(schemas(crate::error::ErrorBody)),
        security(("bearer" = []))
    )]
    struct ApiDoc;

    let mut doc = ApiDoc::openapi();
    if let Some(components) = doc.components.as_mut() {
        let bearer = |format: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format)
                    .build(),
            )
        };
        // The access token of /auth/token; the operator's metrics token.
        components.add_security_scheme("bearer", bearer("JWT"));
        components.add_security_scheme("metrics", bearer("TENANCY_METRICS_TOKEN"));
    }
    doc
}

/// Runs `f` on every operation of `doc`.
pub(crate) fn each_operation(doc: &mut OpenApi, mut f: impl FnMut(&mut Operation)) {
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            f(operation);
        }
    }
}

/// Gives every operation an id unique in the document, made of its method
/// and path (`patch_api_tasks_id`): handlers' own names (`list`, `update`)
/// repeat from module to module.
pub(crate) fn operation_ids(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let words: Vec<&str> = path
            .split(['/', '{', '}', '-'])
            .filter(|w| !w.is_empty())
            .collect();
        for (method, operation) in [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("patch", &mut item.patch),
            ("delete", &mut item.delete),
        ] {
            if let Some(operation) = operation {
                operation.operation_id = Some(format!("{method}_{}", words.join("_")));
            }
        }
    }
}

/// The error answers any operation can give, with the one error body.
pub(crate) fn refusals(operation: &mut Operation) {
    for (status, description) in [
        (
            "4XX",
            "Refused: bad input (400, 413, 414, 422, 431), no or bad credentials (401), \
             not allowed (403), not found (404), conflict or plan limit (409), rate limited \
             (429, with Retry-After); `code` says which",
        ),
        (
            "5XX",
            "Unavailable (503, with Retry-After when busy); nothing internal is told",
        ),
    ] {
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(response.into());
    }
}

/// Tenant-scoped routes name their tenant by host, by this header or by
/// the token's claim.
pub(crate) fn tenant_scoped(operation: &mut Operation) {
    let header: Parameter = ParameterBuilder::new()
        .name("X-Tenant-ID")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "The tenant, when neither the host (subdomain or custom domain) nor the \
             token's tenant claim names it",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
        ))
        .build();
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .push(header);
}
