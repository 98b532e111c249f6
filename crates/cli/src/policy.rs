//! `hull policy CONTAINER LEVEL`: changes who may reach a container that
//! hulld runs, through hulld's API.

use crate::hulld_api::{escape, post};

pub fn set(container: &str, level: &str, host: Option<String>) -> anyhow::Result<bool> {
    level.parse::<runtime::network::Policy>().map_err(anyhow::Error::msg)?;
    let target = format!("/containers/{}/policy?level={}", escape(container), escape(level));
    post(host, &target)?;
    Ok(true)
}
