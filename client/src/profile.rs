//! The `chat` CLI's profile: one device's identity and state, kept in a JSON file
//! (`~/.config/chat/profile.json` unless `--profile` says otherwise).
//!
//! It holds the servers to try, the device's bearer token, the last seq received per chat (so
//! `chat tail` resumes exactly where it stopped) and the handles the CLI has learned (to print
//! names rather than user ids). The file is written atomically and readable by its owner only:
//! the token is a password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    pub servers: Vec<String>,
    pub handle: String,
    pub user_id: u64,
    pub device_id: u64,
    pub token: String,
    /// chat id → last seq received.
    #[serde(default)]
    pub cursors: BTreeMap<u64, u64>,
    /// user id → handle, as learned from the chats this profile created or saw.
    #[serde(default)]
    pub contacts: BTreeMap<u64, String>,
}

impl Profile {
    /// Where profiles live by default.
    pub fn default_path() -> PathBuf {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("chat").join("profile.json")
    }

    pub fn load(path: &Path) -> anyhow::Result<Profile> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "no profile at {} (run `chat register <handle>` first)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a profile", path.display()))
    }

    /// Write the profile (to a temporary file, then renamed over the old one).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Remember the handles of a chat's members.
    pub fn learn(&mut self, members: &[u64], handles: &[String]) {
        for (&user, handle) in members.iter().zip(handles) {
            if !handle.is_empty() && user != self.user_id {
                self.contacts.insert(user, handle.clone());
            }
        }
    }

    /// A user's handle if known, else its id.
    pub fn name_of(&self, user_id: u64) -> String {
        if user_id == self.user_id {
            return self.handle.clone();
        }
        self.contacts
            .get(&user_id)
            .cloned()
            .unwrap_or_else(|| format!("user:{user_id}"))
    }
}
