//! The super-admin: created from configuration at the first start (`bootstrap_admin`), and
//! recovered on a stopped server's data directory (`fluxgate admin reset-password`).

use crate::config::Config;
use crate::{blocking, datadir, random_hex, AppError};
use mgmt::auth;
use storage::{NewUser, Role, Status, Store, StoreConfig, UserQuery};

/// The configured super-admin as a new user with this password hash.
fn admin_user(cfg: &Config, hash: String) -> NewUser {
    NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        first_name: cfg.admin.first_name.clone(),
        last_name: cfg.admin.last_name.clone(),
        email: cfg.admin.email.clone(),
        username: cfg.admin.username.clone(),
        secret: hash,
        tags: storage::JsonText::empty_array(),
        metadata: storage::JsonText::empty_object(),
        profile_picture: String::new(),
        role: Role::Admin,
        status: Status::Enabled,
    }
}

/// `fluxgate admin reset-password`: gives the configured super-admin (`admin.username`) a
/// new password, creating the super-admin if a first start never got that far. Runs on a
/// stopped server's data directory (it takes the directory's lock, so it is refused while a
/// server runs there). The password is `admin.password` (`FLUXGATE_ADMIN_PASSWORD`) when
/// set, else generated and returned to be printed once. The user's earlier tokens stop
/// working (the password epoch moves).
pub fn reset_admin_password(cfg: &Config) -> Result<Option<String>, AppError> {
    let _lock = datadir::prepare(&cfg.data_dir)?;
    let store = Store::open_url(
        &cfg.store_url()?,
        &StoreConfig {
            pool_size: 1,
            ..cfg.store_config()
        },
    )?;
    let (password, generated) = if cfg.admin.password.is_empty() {
        let p = random_hex::<12>();
        (p.clone(), Some(p))
    } else {
        (cfg.admin.password.expose().to_string(), None)
    };
    let hash = auth::Passwords::new(cfg.auth.pbkdf2_iterations).and_then(|p| p.hash(&password))?;
    match store.user_by_identity(&cfg.admin.username)? {
        Some(u) if u.role == Role::Admin => {
            store.set_user_secret(&u.id, &hash, None)?;
        }
        Some(_) => {
            return Err(AppError::NotSuperAdmin(cfg.admin.username.clone()));
        }
        None => {
            store.create_user(admin_user(cfg, hash))?;
        }
    }
    Ok(generated)
}

/// Whether the store holds a super-admin (enabled or not).
async fn any_admin(store: &Store) -> Result<bool, AppError> {
    let s = store.clone();
    Ok(blocking(move || {
        s.list_users(&UserQuery {
            filter: storage::EntityFilter {
                status: storage::StatusFilter::All,
                ..Default::default()
            },
            role: Some(Role::Admin),
            ..Default::default()
        })
        .map(|p| p.total > 0)
    })
    .await??)
}

/// Creates the super-admin from configuration when the store has none. Returns the password
/// when it was generated here (and the hasher back).
pub(crate) async fn bootstrap_admin(
    store: &Store,
    passwords: auth::Passwords,
    cfg: &Config,
) -> Result<(Option<String>, auth::Passwords), AppError> {
    if any_admin(store).await? {
        return Ok((None, passwords));
    }
    let (password, generated) = if cfg.admin.password.is_empty() {
        let p = random_hex::<12>();
        (p.clone(), Some(p))
    } else {
        (cfg.admin.password.expose().to_string(), None)
    };
    let (hash, passwords) = blocking(move || (passwords.hash(&password), passwords)).await?;
    let new = admin_user(cfg, hash?);
    let s = store.clone();
    match blocking(move || s.create_user(new)).await? {
        Ok(u) => {
            tracing::info!(user = %u.id, username = %u.username, "created the bootstrap super-admin");
            Ok((generated, passwords))
        }
        // Another node of a cluster starting at the same moment created it first.
        Err(storage::StoreError::Conflict(_)) if any_admin(store).await? => Ok((None, passwords)),
        Err(e) => Err(e.into()),
    }
}
