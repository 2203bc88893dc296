"""The trees the crash and fault tests move, and snapshots that compare them
(content and metadata: type, mode, owner, size, mtime, link target, sha256,
xattrs, hard-link groups)."""
import hashlib
import os
import random
import stat


def make_world(root, seed):
    """Every kind of entry the agent moves."""
    rnd = random.Random(seed)
    os.makedirs(os.path.join(root, "region", "deep", "er", "still"))
    os.makedirs(os.path.join(root, "empty"))
    os.makedirs(os.path.join(root, "plugins", "conf"))
    with open(os.path.join(root, "level.dat"), "wb") as f:
        f.write(rnd.randbytes(3000))
    open(os.path.join(root, "empty.dat"), "wb").close()
    for i in range(6):
        with open(os.path.join(root, "region", "r.%d.mca" % i), "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(1, 40000)))
    with open(os.path.join(root, "region", "deep", "er", "still", "bottom.txt"), "w") as f:
        f.write("bottom\n")
    with open(os.path.join(root, "sparse.img"), "wb") as f:
        f.truncate(1 << 20)
        f.seek(600000)
        f.write(b"data in the middle of a hole")
    with open(os.path.join(root, "plugins", "conf", "a.yml"), "w") as f:
        f.write("a: 1\n")
    os.link(os.path.join(root, "plugins", "conf", "a.yml"), os.path.join(root, "plugins", "a-link.yml"))
    os.symlink("level.dat", os.path.join(root, "rel-link"))
    os.symlink("/etc/hostname", os.path.join(root, "abs-link"))
    os.symlink("does/not/exist", os.path.join(root, "plugins", "dangling"))
    os.mkfifo(os.path.join(root, "console.fifo"), 0o640)
    os.setxattr(os.path.join(root, "level.dat"), "user.checksum", b"abc123")
    os.setxattr(os.path.join(root, "plugins"), "user.owner", b"plugins-team")
    os.chmod(os.path.join(root, "level.dat"), 0o600)
    os.chmod(os.path.join(root, "region", "r.1.mca"), 0o4755)
    os.chmod(os.path.join(root, "plugins", "conf"), 0o750)
    os.chown(os.path.join(root, "region", "r.2.mca"), 1000, 1000)
    t = 1650000000_123456789
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames + ["."]:
            t += 1_000_003
            os.utime(os.path.join(dirpath, name), ns=(t - 7, t), follow_symlinks=False)
    return root


def make_small(root):
    os.makedirs(os.path.join(root, "data"))
    for i in range(3):
        with open(os.path.join(root, "data", "f%d" % i), "wb") as f:
            f.write(b"%d" % i * 1000)
    os.symlink("data/f0", os.path.join(root, "link"))
    os.utime(os.path.join(root, "data"), ns=(1, 1600000000_000000001))
    return root


def snapshot(root):
    """rel path -> everything the move must keep (atime aside), hard links
    as the first name of their group. None when root does not exist."""
    if not os.path.lexists(root):
        return None
    out, first = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["."] + dirnames + filenames if dirpath == root else dirnames + filenames:
            p = os.path.normpath(os.path.join(dirpath, name))
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            xattrs = None if stat.S_ISLNK(st.st_mode) else sorted(
                (n, os.getxattr(p, n, follow_symlinks=False)) for n in os.listxattr(p, follow_symlinks=False))
            group = None
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                group = first.setdefault(st.st_ino, rel)
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, st.st_mtime_ns, link, digest,
                        xattrs, group)
    return out


def diff(a, b):
    if a is None or b is None:
        return "one side missing"
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return "%s: %s != %s" % (k, a.get(k), b.get(k))
    return None


