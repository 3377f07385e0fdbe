//! The kinds API: list every kind; declare, read and delete the kinds declared without code.

use super::{ApiError, AppState, Json, parse_json, read_body};
use crate::{
    auth::Access,
    kinds::{Declaration, KindError, Stored},
};
use app::model::{KindInfo, Problem};
use axum::{
    Extension,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
};

/// What `GET /api/v1/kinds/{name}` answers: a built-in kind, or a declaration.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum KindOrDeclaration {
    Builtin(KindInfo),
    Declared(Declaration),
}

// By hand: a declaration can have the shape of a listed kind too, which `oneOf` (what a derive
// writes for an untagged enum) would refuse.
impl utoipa::PartialSchema for KindOrDeclaration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::AnyOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("KindInfo"))
            .item(utoipa::openapi::Ref::from_schema_name("Declaration"))
            .description(Some("A built-in kind as listed, or a declared kind's declaration"))
            .into()
    }
}

impl utoipa::ToSchema for KindOrDeclaration {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        use utoipa::PartialSchema;
        schemas.push(("KindInfo".into(), KindInfo::schema()));
        schemas.push(("Declaration".into(), Declaration::schema()));
        <KindInfo as utoipa::ToSchema>::schemas(schemas);
        <Declaration as utoipa::ToSchema>::schemas(schemas);
    }
}

/// The largest declaration body: a schema is a few KiB, never megabytes.
const MAX_DECLARATION_BYTES: u64 = 1 << 20;

impl From<KindError> for ApiError {
    fn from(e: KindError) -> ApiError {
        match e {
            KindError::Invalid(invalid) => {
                let errors = invalid.errors.clone();
                ApiError::unprocessable(
                    "invalid-declaration",
                    "Invalid kind declaration",
                    invalid.to_string(),
                )
                .errors(errors)
            }
            KindError::Compiled(_) => {
                ApiError::new(StatusCode::CONFLICT, "built-in-kind", "Built-in kind").detail(e.to_string())
            }
            KindError::NotFound(_) => ApiError::not_found(e.to_string()),
            KindError::TooMany => {
                ApiError::new(StatusCode::CONFLICT, "too-many-kinds", "Too many kinds").detail(e.to_string())
            }
            KindError::Redis(e) => e.into(),
        }
    }
}

/// `GET /api/v1/kinds`: every kind, built-in and declared, with its description and schema.
#[utoipa::path(
    get,
    path = "/api/v1/kinds",
    operation_id = "list_kinds",
    tag = "kinds",
    summary = "Every kind, built-in and declared",
    responses((status = 200, description = "The kinds, with their payload schemas", body = Vec<KindInfo>)),
)]
pub async fn list(State(state): State<AppState>) -> Json<Vec<KindInfo>> {
    Json(state.tasks.kinds())
}

/// `GET /api/v1/kinds/{name}`: a declared kind's declaration (its endpoint's secret redacted),
/// or a built-in kind as the list shows it.
#[utoipa::path(
    get,
    path = "/api/v1/kinds/{name}",
    operation_id = "get_kind",
    tag = "kinds",
    summary = "A kind",
    params(("name" = String, Path, description = "The kind's name")),
    responses(
        (status = 200, description = "A built-in kind as listed, or a declared kind's declaration (its endpoint's secret redacted)", body = KindOrDeclaration),
        (status = 404, description = "No kind by this name", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<KindOrDeclaration>, ApiError> {
    if state.kinds.registry().is_compiled(&name)
        && let Some(info) = state.tasks.kinds().into_iter().find(|k| k.name == name)
    {
        return Ok(Json(KindOrDeclaration::Builtin(info)));
    }
    match state.kinds.get(&name).await? {
        Some(declaration) => Ok(Json(KindOrDeclaration::Declared(declaration.redacted()))),
        None => Err(ApiError::not_found(format!("no kind named `{name}`"))),
    }
}

/// `PUT /api/v1/kinds/{name}`: declares a kind (`201`) or replaces its declaration (`200`); the
/// body is the declaration, its `name` left out or the same as the path's.
#[utoipa::path(
    put,
    path = "/api/v1/kinds/{name}",
    operation_id = "declare_kind",
    tag = "kinds",
    summary = "Declare a kind, or replace its declaration",
    params(("name" = String, Path, description = "The kind's name")),
    request_body(content = Declaration, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced (or unchanged): the declaration, its secret redacted", body = Declaration),
        (status = 201, description = "Declared: the declaration, its secret redacted", body = Declaration),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A built-in kind, or too many kinds", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 1 MiB (or `--max-payload`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid declaration (the detail names the field)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Declaration>), ApiError> {
    let limit = state.max_payload.min(MAX_DECLARATION_BYTES);
    let body = read_body(body, &headers, limit, &state.body_budget).await?;
    let mut declaration: Declaration = parse_json(&body.bytes).map_err(|problem| {
        if problem.status() == StatusCode::UNPROCESSABLE_ENTITY {
            ApiError::unprocessable("invalid-declaration", "Invalid kind declaration", problem.detail_text())
        } else {
            problem
        }
    })?;
    if declaration.name.is_empty() {
        declaration.name = name;
    } else if declaration.name != name {
        return Err(KindError::Invalid(crate::kinds::Invalid {
            field: "name".into(),
            reason: format!("`{}` is not the name in the path, `{name}`", declaration.name),
            errors: Vec::new(),
        })
        .into());
    }
    let shown = declaration.redacted();
    let stored = state.kinds.put(declaration).await?;
    if stored != Stored::Unchanged {
        state.audit.record(access.name(), "kind.declare", &shown.name).await;
    }
    let status = if stored == Stored::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(shown)))
}

/// `DELETE /api/v1/kinds/{name}`: `204`; tasks of the kind already queued still run wherever a
/// worker knows it.
#[utoipa::path(
    delete,
    path = "/api/v1/kinds/{name}",
    operation_id = "delete_kind",
    tag = "kinds",
    summary = "Delete a declared kind",
    params(("name" = String, Path, description = "The kind's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No declared kind by this name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A built-in kind", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.kinds.delete(&name).await?;
    state.audit.record(access.name(), "kind.delete", &name).await;
    Ok(StatusCode::NO_CONTENT)
}
