//! The kubelet's cgroup root (`/keyway-node`), which it wants to exist: one directory in every
//! cgroup v1 hierarchy (cgroup v2: one directory). cleanup.sh removes them.

use std::path::Path;

/// Creates the root in every hierarchy under `/sys/fs/cgroup`.
pub(crate) fn create_root(name: &str) -> anyhow::Result<()> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        // cgroup v2: one tree; the kubelet enables the controllers it needs below it.
        std::fs::create_dir_all(base.join(name))?;
        return Ok(());
    }
    for entry in std::fs::read_dir(base)? {
        let hierarchy = entry?.path();
        if !hierarchy.join("cgroup.procs").exists() {
            continue; // not a mounted hierarchy (e.g. a symlink such as cpu,cpuacct)
        }
        let dir = hierarchy.join(name);
        std::fs::create_dir_all(&dir)?;
        // A new cpuset cgroup starts with no CPUs and no memory nodes: give it its parent's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                std::fs::write(dir.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}
