"""``vchan ls``: the channel files of the socket directory."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import stat
from dataclasses import asdict, dataclass

from .. import _config, _linux
from .errors import die

_NAME = re.compile(r"vchan\.(\d+)\.(\d+)\.(\d+)\.sock")


@dataclass
class Entry:
    server_domain: int
    client_domain: int
    port: int
    owner: str
    uid: int
    state: str  # "listening", "stale" or "not-a-socket"
    path: str


def list_channels(directory: str) -> list[Entry]:
    """The channel files in ``directory``, sorted by server, client and port."""
    entries = []
    for name in os.listdir(directory):
        m = _NAME.fullmatch(name)
        if m is None:
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # went away meanwhile
        if not stat.S_ISSOCK(st.st_mode):
            state = "not-a-socket"
        elif _linux.listening_at(path) or _linux.listening_at(os.path.realpath(path)):
            state = "listening"
        else:
            state = "stale"
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        entries.append(Entry(int(m[1]), int(m[2]), int(m[3]), owner, st.st_uid, state, path))
    entries.sort(key=lambda e: (e.server_domain, e.client_domain, e.port))
    return entries


def cmd_ls(args: argparse.Namespace) -> int:
    directory = args.dir or _config.socket_dir()
    try:
        entries = list_channels(directory)
    except FileNotFoundError:
        die(f"socket directory {directory} does not exist")
    except NotADirectoryError:
        die(f"{directory} is not a directory")
    except PermissionError:
        die(f"cannot read the socket directory {directory}: permission denied")
    if args.json:
        print(
            json.dumps(
                [dict(asdict(e), listening=e.state == "listening") for e in entries], indent=2
            )
        )
        return 0
    if not entries:
        print(f"no channels in {directory}")
        return 0
    rows = [("SERVER", "CLIENT", "PORT", "OWNER", "STATE", "PATH")]
    rows += [
        (str(e.server_domain), str(e.client_domain), str(e.port), e.owner, e.state, e.path)
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return 0
