"""What a model reference may be published as: a Hub id, never a local path."""

from __future__ import annotations

import os
import re

from ..options import is_local_path


def public_name(name) -> str | None:
    """A model reference fit to publish: a Hub id (`name` or `org/name`) stays; a snapshot in the Hub cache
    (`.../models--org--name/snapshots/<revision>`) becomes its id; any other local path (absolute,
    relative with `.`/`..`/`~`, more than one `/`, or existing here) becomes None."""
    if not isinstance(name, str) or not name:
        return None
    cached = re.search(r"(?:^|[/\\])models--([^/\\]+)[/\\]snapshots[/\\][^/\\]+[/\\]?$", name)
    if cached:  # the cache spells `org/name` as `models--org--name` (a Hub name never holds "--")
        return cached[1].replace("--", "/")
    if is_local_path(name) or os.path.exists(name):
        return None
    return name
