//! The one function that decides "may this user do this in this domain".
//!
//! Rules: the super-admin may do anything. Otherwise the caller needs a relation to the
//! domain: viewers read, editors also write, admins also manage the domain and its members.
//! A disabled domain is closed to everyone but its admins (who may read it and enable it);
//! a frozen domain is read-only for all but the super-admin. A caller without a relation
//! gets 403 whether or not the domain exists, so ids of other tenants cannot be probed.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::Ctx;
use storage::{Domain, Relation, Status};

/// What the caller wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read entities of the domain.
    Read,
    /// Create, change or delete entities of the domain.
    Edit,
    /// Change the domain itself, its status or its members.
    Manage,
}

/// Proof that the caller passed [`authorize`] for one domain. Domain-scoped handlers take
/// the domain id from here, so a forgotten check cannot compile into a cross-tenant query.
#[derive(Debug, Clone)]
pub struct DomainAccess {
    domain: Domain,
    user_id: String,
    relation: Option<Relation>,
    super_admin: bool,
}

impl DomainAccess {
    pub fn domain_id(&self) -> &str {
        &self.domain.id
    }
    pub fn domain(&self) -> &Domain {
        &self.domain
    }
    pub fn user_id(&self) -> &str {
        &self.user_id
    }
    /// The caller's relation (`None` for a super-admin without one).
    pub fn relation(&self) -> Option<Relation> {
        self.relation
    }
    /// Whether the caller may also do `action` in this domain (the rule of [`decide`]).
    pub fn may(&self, action: Action) -> bool {
        decide(&self.domain, self.relation, self.super_admin, action).is_ok()
    }
    /// Admins and editors see client secrets; viewers do not.
    pub fn sees_secrets(&self) -> bool {
        self.super_admin || matches!(self.relation, Some(Relation::Admin | Relation::Editor))
    }
}

/// Decides whether `caller` may perform `action` in `domain_id`.
pub async fn authorize(ctx: &Ctx, caller: &Caller, domain_id: &str, action: Action) -> Result<DomainAccess, ApiError> {
    let (d, u) = (domain_id.to_string(), caller.user.id.clone());
    let relation = ctx.db(move |s| s.relation(&d, &u)).await?;
    let super_admin = caller.is_super_admin();
    if relation.is_none() && !super_admin {
        return Err(ApiError::forbidden());
    }
    let d = domain_id.to_string();
    let domain = ctx.db(move |s| s.domain(&d)).await.map_err(|e| match e {
        ApiError::NotFound(_) => ApiError::not_found("domain"),
        e => e,
    })?;
    decide(&domain, relation, super_admin, action)?;
    Ok(DomainAccess {
        domain,
        user_id: caller.user.id.clone(),
        relation,
        super_admin,
    })
}

/// The pure rule behind [`authorize`].
pub fn decide(domain: &Domain, relation: Option<Relation>, super_admin: bool, action: Action) -> Result<(), ApiError> {
    if super_admin {
        return Ok(());
    }
    let Some(rel) = relation else {
        return Err(ApiError::forbidden());
    };
    match domain.status {
        Status::Disabled if rel != Relation::Admin => return Err(ApiError::Forbidden("domain is disabled".into())),
        Status::Disabled if action == Action::Edit => return Err(ApiError::Forbidden("domain is disabled".into())),
        Status::Frozen if action != Action::Read => return Err(ApiError::Forbidden("domain is frozen".into())),
        _ => {}
    }
    let needed = match action {
        Action::Read => Relation::Viewer,
        Action::Edit => Relation::Editor,
        Action::Manage => Relation::Admin,
    };
    // Relations order strongest first: Admin < Editor < Viewer.
    if rel <= needed {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::JsonText;

    fn domain(status: Status) -> Domain {
        Domain {
            id: "d".into(),
            name: "d".into(),
            route: "d".into(),
            tags: JsonText::empty_array(),
            metadata: JsonText::empty_object(),
            status,
            created_by: "u".into(),
            created_at: 0,
            updated_at: None,
            updated_by: None,
        }
    }

    #[test]
    fn relation_matrix() {
        let d = domain(Status::Enabled);
        use Action::*;
        use Relation::*;
        for (rel, action, ok) in [
            (Viewer, Read, true),
            (Viewer, Edit, false),
            (Viewer, Manage, false),
            (Editor, Edit, true),
            (Editor, Manage, false),
            (Admin, Manage, true),
        ] {
            assert_eq!(decide(&d, Some(rel), false, action).is_ok(), ok, "{rel:?} {action:?}");
        }
        assert!(decide(&d, None, false, Read).is_err());
        assert!(decide(&d, None, true, Manage).is_ok());
    }

    #[test]
    fn disabled_and_frozen_domains() {
        let d = domain(Status::Disabled);
        assert!(decide(&d, Some(Relation::Editor), false, Action::Read).is_err());
        assert!(decide(&d, Some(Relation::Admin), false, Action::Manage).is_ok());
        assert!(decide(&d, Some(Relation::Admin), false, Action::Edit).is_err());
        let f = domain(Status::Frozen);
        assert!(decide(&f, Some(Relation::Viewer), false, Action::Read).is_ok());
        assert!(decide(&f, Some(Relation::Admin), false, Action::Manage).is_err());
    }
}
