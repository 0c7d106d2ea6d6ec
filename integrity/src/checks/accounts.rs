//! The "rooted" analogue: an account that uses the device (an enrolled
//! user, a kiosk account) holds root-equivalent power, so whoever uses it
//! can take the users' keys' daemon apart. Root-equivalent is: uid 0;
//! membership (primary or listed) of sudo, wheel, admin or root; a rule of
//! its own (or of one of its groups) in /etc/sudoers or /etc/sudoers.d; a
//! setuid-root login shell. And any setuid-root shell in /etc/shells makes
//! everyone root.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use super::{fail, ids, pass};
use crate::{Attribute, Root};

/// Groups whose members are administrators on common distributions.
pub const ADMIN_GROUPS: [&str; 4] = ["sudo", "wheel", "admin", "root"];
/// Most sudoers.d files read.
const MAX_SUDOERS_FILES: usize = 256;

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    shell: String,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn passwd(root: &Root) -> Vec<Passwd> {
    root.read_text("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(Passwd {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                shell: f.get(6).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn groups(root: &Root) -> Vec<Group> {
    root.read_text("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(Group {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The first words of the sudoers rules (user or %group), from
/// /etc/sudoers and /etc/sudoers.d/*.
fn sudoers_subjects(root: &Root) -> Vec<(String, String)> {
    let mut files = vec!["/etc/sudoers".to_string()];
    files.extend(
        root.list("/etc/sudoers.d", MAX_SUDOERS_FILES)
            .into_iter()
            // sudo skips names with a dot or ending in ~.
            .filter(|n| !n.contains('.') && !n.ends_with('~'))
            .map(|n| format!("/etc/sudoers.d/{n}")),
    );
    let mut subjects = Vec::new();
    for file in files {
        for line in root.read_text(&file).unwrap_or_default().lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
                continue;
            }
            let Some(first) = line.split_whitespace().next() else {
                continue;
            };
            if first == "Defaults" || first.starts_with("Defaults") || first.ends_with("_Alias") {
                continue;
            }
            subjects.push((first.to_string(), file.clone()));
        }
    }
    subjects
}

fn setuid_root(root: &Root, path: &str) -> bool {
    // Follow links: /bin/sh -> dash is the dash binary's mode that counts.
    std::fs::metadata(root.path(path)).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o4000 != 0)
}

pub fn admin_accounts(root: &Root, accounts: &[String]) -> Attribute {
    const HINT: &str = "Take administrator rights away from the device's users and kiosk accounts (gpasswd -d USER sudo; remove their sudoers rules), and chmod u-s any setuid shell.";
    let users = passwd(root);
    let groups = groups(root);
    let sudoers = sudoers_subjects(root);
    let mut problems = Vec::new();

    let shells: BTreeSet<String> = root
        .read_text("/etc/shells")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(str::to_string)
        .collect();
    for shell in &shells {
        if setuid_root(root, shell) {
            problems.push(format!(
                "the shell {shell} is setuid root: every user can become root"
            ));
        }
    }

    // A device may have thousands of enrolled users: one look-up each.
    let by_name: std::collections::HashMap<&str, &_> =
        users.iter().map(|u| (u.name.as_str(), u)).collect();
    let mut unknown = Vec::new();
    for account in accounts {
        let Some(user) = by_name.get(account.as_str()).copied() else {
            unknown.push(account.clone());
            continue;
        };
        let mut why = Vec::new();
        if user.uid == 0 {
            why.push("has uid 0".to_string());
        }
        let member_of: Vec<&Group> = groups
            .iter()
            .filter(|g| g.gid == user.gid || g.members.contains(&user.name))
            .collect();
        for g in &member_of {
            if ADMIN_GROUPS.contains(&g.name.as_str()) {
                why.push(format!("is in group {}", g.name));
            }
        }
        for (subject, file) in &sudoers {
            let group = subject.strip_prefix('%');
            let matches = subject == &user.name
                || group.is_some_and(|g| member_of.iter().any(|m| m.name == g));
            if matches && !why.iter().any(|w| w.contains(file.as_str())) {
                why.push(format!("has a sudo rule ({subject} in {file})"));
            }
        }
        if !user.shell.is_empty() && !shells.contains(&user.shell) && setuid_root(root, &user.shell)
        {
            why.push(format!("has the setuid-root login shell {}", user.shell));
        }
        if !why.is_empty() {
            problems.push(format!("{} {}", user.name, why.join(", ")));
        }
    }
    if problems.is_empty() {
        let mut detail = if accounts.is_empty() {
            "no enrolled users or kiosk accounts; no setuid shell".to_string()
        } else {
            format!("{} have no administrator rights", some_of(accounts))
        };
        if !unknown.is_empty() {
            detail.push_str(&format!(" ({} are not local accounts)", some_of(&unknown)));
        }
        pass(ids::ROOTED, "not-rooted", detail)
    } else {
        fail(ids::ROOTED, "rooted", problems.join("; "), HINT)
    }
}

/// The first [`NAMES_SHOWN`] names and how many more: the detail goes
/// into every report and every enrollment's evidence, and must not grow
/// with the number of users.
fn some_of(names: &[String]) -> String {
    if names.len() <= NAMES_SHOWN {
        return names.join(", ");
    }
    format!(
        "{} and {} more",
        names[..NAMES_SHOWN].join(", "),
        names.len() - NAMES_SHOWN
    )
}

/// How many account names a detail lists.
pub const NAMES_SHOWN: usize = 10;
