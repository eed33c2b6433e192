//! `helixflow keys new|hash`: make API keys and the config lines that admit them. The node keeps
//! only the key's SHA-256; the key itself is printed once and nowhere stored.

use helixflow_runtime::keys::{KEY_PREFIX, KeyHash};

use crate::cli::{KeysArgs, KeysCommand};

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
    }
    Ok(())
}
