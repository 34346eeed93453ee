//! The operator's side: the admin endpoint (health, metrics, status), the
//! status document and reloads. Both read or swap
//! the [`crate::proxy::state::Gateway`]; the data path never depends on them.

pub mod endpoint;
pub mod page;
pub mod reload;
pub mod status;
