"""Reading a YAML file a user wrote: errors that name the file and line, limits before parsing.

Used for policies (:meth:`routers.Policy.from_yaml`) and pipeline configs
(``engine.config.load_config``). A path that does not exist, an empty file or a file over
:data:`MAX_BYTES` is an error before any parsing; a YAML error names ``file:line:column``. The C
loader (libyaml) is used when PyYAML has it: several times faster on large files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

__all__ = ["MAX_BYTES", "MAX_NODES", "YamlFileError", "read_yaml"]

#: A policy or config larger than this is refused before parsing (10 MiB: ~100K rules).
MAX_BYTES: Final[int] = 10 << 20
#: Values a file may hold once its aliases are expanded (a 10 MiB file holds ~1M at most).
MAX_NODES: Final[int] = 2_000_000


class YamlFileError(ValueError):
    """The file cannot be used; ``str()`` names the file (and line) and what is wrong."""


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """The parsed content of the YAML file at ``path``.

    Args:
        what: what the file should be (``policy``, ``pipeline config``), for messages.

    Raises:
        YamlFileError: no such file, unreadable, empty, too large, or not valid YAML.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> bad = os.path.join(folder, "p.yaml")
        >>> _ = open(bad, "w").write("rules:\\n  - name: x\\n   route: hot\\n")
        >>> try:
        ...     read_yaml(bad, "policy")
        ... except YamlFileError as exc:
        ...     print(str(exc).replace(folder, "DIR"))  # doctest: +ELLIPSIS
        DIR/p.yaml:3:...: not valid YAML (...)
    """
    import yaml

    file = Path(path)
    if not file.exists():
        raise YamlFileError(f"{path}: no such {what} file")
    if file.is_dir():
        raise YamlFileError(f"{path}: a folder, not a {what} file")
    try:
        size = file.stat().st_size
        if size > MAX_BYTES:
            raise YamlFileError(
                f"{path}: {size / (1 << 20):.1f} MiB, more than the {MAX_BYTES >> 20} MiB a"
                f" {what} may have"
            )
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read the {what} file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # a safe loader, C or Python
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(exc.problem or exc).split())
        raise YamlFileError(f"{path}{where}: not valid YAML ({problem})") from exc
    except yaml.YAMLError as exc:
        raise YamlFileError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if data is None:
        raise YamlFileError(f"{path}: the {what} file is empty")
    if not _within(data, MAX_NODES):
        # A few lines of anchors and aliases can stand for billions of values ("billion
        # laughs"): the loader shares them, but reading the result would not end.
        raise YamlFileError(
            f"{path}: more than {MAX_NODES:,} values once its aliases (*name) are expanded"
        )
    return data


def _within(data: Any, limit: int) -> bool:
    """Whether ``data`` has at most ``limit`` values, counting shared ones each time they are
    reached (a walk that gives up at the limit, so it ends quickly on any input)."""
    count = 0
    stack = [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return False
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True
