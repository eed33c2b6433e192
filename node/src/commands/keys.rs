//! `helixflow keys new|hash`: make API keys and the config lines that admit them, offline.
//! `helixflow keys create|list|revoke`: the same on a running cluster, through its admin API.
//! Nodes keep only a key's SHA-256; the key itself is printed once and nowhere stored.

use helixflow_runtime::keys::{KEY_PREFIX, KeyHash};

use crate::cli::{KeysArgs, KeysCommand};
use crate::commands::admin;

/// A new random key: the prefix and 32 random bytes in hex.
pub fn new_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{KEY_PREFIX}{hex}"))
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::New { name, role } => {
            let key = new_key()?;
            println!("key: {key}");
            println!();
            println!("# add to the cluster config:");
            println!("[[keys]]");
            println!("name = {name:?}");
            println!("sha256 = \"{}\"", KeyHash::of(&key));
            println!("role = {role:?}");
        }
        KeysCommand::Hash { key } => println!("{}", KeyHash::of(&key)),
        KeysCommand::Create {
            admin,
            name,
            role,
            requests_per_minute,
            tokens_per_minute,
            token_budget,
        } => admin::create_key(
            &admin,
            &name,
            &role,
            requests_per_minute,
            tokens_per_minute,
            token_budget,
        )?,
        KeysCommand::List(admin) => admin::list_keys(&admin)?,
        KeysCommand::Revoke { admin, name } => admin::revoke_key(&admin, &name)?,
    }
    Ok(())
}
