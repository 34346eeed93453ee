//! The operator's side: the status endpoint and reloads. Both read or swap
//! the [`crate::proxy::state::Gateway`]; the data path never depends on them.

pub mod reload;
pub mod status;
