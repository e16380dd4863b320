"""DATA/node.json: a node's name and block size, fixed when its data directory is made, and
whether it was removed from its cluster (`cluster remove`): a removed node does not serve
again, so it can neither rejoin nor vote unseen; its blocks stay in its data directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import BlockfoldError
from ..pool import check_block_size

NODE_FILE = "node.json"
DEFAULT_BLOCK_SIZE = 4096


def create(directory: Path, name: str, block_size: int) -> None:
    """Writes the settings of a new node's data directory."""
    (directory / NODE_FILE).write_text(json.dumps({"name": name, "block_size": block_size}))


def load(directory: Path, block_size: int | None = None) -> dict:
    """{"name", "block_size"} of the node in `directory`; made on first start (named for the
    directory) if absent. Raises BlockfoldError if `block_size` is given and is not the one the
    directory holds, or for a new node is not one a pool takes (engine.options.BLOCK_SIZES)."""
    path = directory / NODE_FILE
    try:
        settings = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        raise BlockfoldError(f"{path} is not a node settings file (JSON)") from None
    if block_size and settings.get("block_size", block_size) != block_size:
        raise BlockfoldError(f"{directory} holds blocks of {settings['block_size']} bytes,"
                             f" not {block_size}")
    if "block_size" not in settings:
        if block_size:
            check_block_size(block_size)
        settings["block_size"] = block_size or DEFAULT_BLOCK_SIZE
        settings.setdefault("name", directory.name)
        path.write_text(json.dumps(settings))
    settings.setdefault("name", directory.name)
    removed = settings.get("removed")
    if removed:
        raise BlockfoldError(
            f"node {settings['name']} was removed from cluster {removed.get('cluster')} on"
            f" {removed.get('at')}: it does not serve again (its blocks are kept in"
            f" {directory}; a node rejoins only as a new one, from a new data directory)")
    return settings


def retire(directory: Path, cluster: str) -> None:
    """Marks the node in `directory` removed from `cluster`, so load() refuses it from now on.
    Written whole through a temporary file and a rename."""
    path = directory / NODE_FILE
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError):
        settings = {"name": directory.name}
    settings["removed"] = {"cluster": cluster,
                           "at": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    tmp = path.with_name(NODE_FILE + ".tmp")
    tmp.write_text(json.dumps(settings))
    os.replace(tmp, path)
