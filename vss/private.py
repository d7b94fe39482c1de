"""
Files that hold secrets or verifiers, and the daemons' data directories, belong to the
user the daemon runs as alone: files 0600, directories 0700, whatever the umask.

- ``restrict_umask()``: the daemons (``twistd vss-node``, ``twistd vss-cms``) create every
  file with the umask 077 (twistd sets that itself when it daemonizes; run with ``-n``,
  under systemd or a shell, it would keep theirs, typically 022).
- ``private_dir(path)``: a data directory, created 0700, or tightened, and so is what is
  in it: every file 0600 and every directory 0700 (group and others lose every bit),
  except the contents of ``recordings/`` (the footage, behind its own 0700 directory,
  is not walked at each start); a directory that holds other programs' files is left.
- ``private_file(path)``: a file created empty with mode 0600 if absent (an SQLite
  database before SQLite opens it: SQLite gives its ``-wal`` and ``-shm`` the database
  file's mode, whatever the umask), else tightened, with its ``-wal``, ``-shm`` and
  ``-journal``.
- ``check_secret_files(paths)``: files an operator names (a cluster secret, a TLS or
  Redis key, a password file) are tightened too when they can be; one this user cannot
  change is left as it is, with a warning.

Every change is one log line naming the file and its mode before and after, so an
operator sees what a start fixed.
"""

import os
import stat

from twisted.logger import Logger

log = Logger()

UMASK = 0o077
OTHERS = 0o077  # the bits of the group and of everybody else
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
NOT_WALKED = frozenset(("recordings",))
# files every data directory a daemon used holds (ports.json: both, at each start)
MARKERS = frozenset(("ports.json", "node.secret", "cluster.secret"))


def restrict_umask():
    """Make every file this process creates private (umask 077); returns the old one."""
    return os.umask(UMASK)


def tighten(path, logger=log):
    """Take every permission of the group and of others from ``path`` (not following a
    symbolic link; another user's file is left, with a warning). Returns True when it
    changed something."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False
    mode = stat.S_IMODE(st.st_mode)
    if not mode & OTHERS:
        return False
    try:
        os.chmod(path, mode & ~OTHERS)
    except OSError as e:  # another user's file
        logger.warn("{path} is open to other users (mode {old:04o}) and cannot be changed "
                    "by this user ({error}): make it {new:04o}", path=path, old=mode,
                    new=mode & ~OTHERS, error=e.strerror)
        return False
    logger.warn("{path} was open to other users (mode {old:04o}): now {new:04o}",
                path=path, old=mode, new=mode & ~OTHERS)
    return True


def private_dir(path, logger=log):
    """Create ``path`` (and its missing parents) mode 0700, or tighten it and what it
    holds (see the module docstring). A directory that is not empty and holds none of
    the files a daemon leaves in its data directory (``MARKERS``) is somebody else's
    (``--data-dir /var/lib``): it is left as it is, with a warning. Returns the paths it
    tightened."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
    entries = os.listdir(path)
    if entries and not MARKERS.intersection(entries):
        logger.warn("{path} holds files that are not this daemon's: their modes are left "
                    "as they are (give the daemon a data directory of its own)", path=path)
        return []
    fixed = [path] if tighten(path, logger) else []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if tighten(full, logger):
                fixed.append(full)
        if dirpath == path:
            dirnames[:] = [d for d in dirnames if d not in NOT_WALKED]
        for name in filenames:
            full = os.path.join(dirpath, name)
            if tighten(full, logger):
                fixed.append(full)
    return fixed


def private_file(path, logger=log):
    """Create ``path`` empty with mode 0600 if it is absent, else tighten it; then
    tighten its SQLite side files (``-wal``, ``-shm``, ``-journal``) if there are
    any. Returns the paths it tightened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    fixed = []
    for p in (path, *(path + side for side in SQLITE_SIDE_FILES)):
        if tighten(p, logger):
            fixed.append(p)
    return fixed


def check_secret_files(paths, logger=log):
    """Tighten each of ``paths`` (files an operator named) that exists; one this user
    may not change is left with a warning. Returns the paths it tightened."""
    return [p for p in paths if p and tighten(p, logger)]


def endpoint_key_files(description):
    """The private key files an endpoint string names (``privateKey=``, and
    ``certKey=`` when it holds the key too, i.e. without ``privateKey=``)."""
    if not description:
        return []
    params = {}
    for part in _split_endpoint(description):
        name, eq, value = part.partition("=")
        if eq:
            params[name] = value
    if "privateKey" in params:
        return [params["privateKey"]]
    if "certKey" in params:
        return [params["certKey"]]
    return []


def _split_endpoint(description):
    """The ':'-separated parts of an endpoint string, ``\\:`` unescaped."""
    parts, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts
