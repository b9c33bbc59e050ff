"""Heads by name: ``@register_head("r3d")`` on the class, ``create_head("r3d", ...)`` to build one.

Besides the built-in names, a head can be named by where it lives (no fork of featcache needed):

- ``my_heads.py:TinyHead``: a class in a Python file (a relative path resolves against the
  current folder);
- ``my_pkg.heads:TinyHead``: a class in an importable module;
- a plain name that an installed package registers under the entry-point group
  ``featcache.heads`` (``[project.entry-points."featcache.heads"] tiny = "my_pkg.heads:TinyHead"``).

Built-in names win over an entry point of the same name. Every head takes the same leading
arguments, ``(in_dim, num_classes, num_frames, grid, num_prefix_tokens)``, then its own keyword
options. :func:`head_source` says where a head's class came from (file path + sha256, or module
+ version) so that a checkpoint can record it and be rebuilt from exactly that code.

Pure: imports nothing from featcache.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import types
import warnings

_HEADS: dict[str, type] = {}
_LOADED: dict[tuple, type] = {}  # (path or module, class, sha256) -> a user class already imported
COMMON_ARGS = ("in_dim", "num_classes", "num_frames", "grid", "num_prefix_tokens")
ENTRY_POINT_GROUP = "featcache.heads"
REQUIRED = inspect.Parameter.empty  # the "default" head_options reports for an option without one


def register_head(name: str):
    def wrap(cls):
        if name in _HEADS:
            raise ValueError(f"head {name!r} is registered twice")
        _HEADS[name] = cls
        cls.head_name = name
        return cls

    return wrap


def _entry_points() -> dict:
    """Entry points of the ``featcache.heads`` group by name (built-in names excluded)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in _HEADS}


def list_heads() -> list[str]:
    """Built-in heads and the heads installed packages register (entry points), sorted."""
    return sorted({*_HEADS, *_entry_points()})


def is_user_head(name: str) -> bool:
    """True for ``FILE.py:Class`` and ``module:Class`` (heads named by where they live)."""
    return ":" in name


def head_options(name: str) -> dict:
    """Option name -> default for one head (everything after the common arguments);
    :data:`REQUIRED` for an option without a default."""
    return _options(_get(name))


def _options(cls: type) -> dict:
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items()
            if k not in ("self", *COMMON_ARGS) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _get(name: str, source: dict | None = None) -> type:
    if name in _HEADS:
        return _HEADS[name]
    if source and source.get("kind") == "file":  # a checkpoint's head: exactly the file it was trained with
        return _from_file(name, source["path"], source["class"], expect_sha256=source["sha256"], kept=source.get("text"))
    if is_user_head(name):
        target, _, attr = name.rpartition(":")
        if not target or not attr.isidentifier():
            raise ValueError(f"head {name!r}: expected FILE.py:Class or module:Class")
        if target.endswith(".py") or os.sep in target:
            return _from_file(name, target, attr)
        return _from_module(name, target, attr, source)
    eps = _entry_points()
    if name in eps:
        return _from_module(name, *eps[name].value.split(":", 1), source)
    raise ValueError(f"unknown head {name!r}; available: {', '.join(list_heads())} "
                     "(or your own: FILE.py:Class, module:Class)")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _from_file(name: str, path: str, attr: str, expect_sha256: str | None = None, kept: str | None = None) -> type:
    """A head class from a file; with ``expect_sha256`` (a checkpoint's), exactly that version:
    the file if it still has that hash, else the copy of its source the checkpoint ``kept``."""
    path = os.path.abspath(path)
    sha = _sha256(path) if os.path.isfile(path) else None
    if expect_sha256 and sha != expect_sha256:
        if kept is not None and hashlib.sha256(kept.encode("utf-8")).hexdigest() == expect_sha256:
            now = "is gone" if sha is None else f"changed (sha256 {expect_sha256[:12]} then, {sha[:12]} now)"
            warnings.warn(f"head {name}: {path} {now} since the run was trained; using the copy of its source "
                          "the checkpoint keeps", stacklevel=2)
            return _load_source(name, path, attr, expect_sha256, kept)
        if sha is None:
            raise ValueError(f"head {name!r}: no such file {path}")
        raise ValueError(f"head {name!r}: {path} changed since the checkpoint was made (sha256 {expect_sha256[:12]} "
                         f"then, {sha[:12]} now); restore that version of the file or train again")
    if sha is None:
        raise ValueError(f"head {name!r}: no such file {path}")
    return _load_source(name, path, attr, sha)


def _load_source(name: str, path: str, attr: str, sha: str, text: str | None = None) -> type:
    """Import a head file (or, given ``text``, that file's source as recorded) once per hash."""
    key = (path, attr, sha)
    if key not in _LOADED:
        stem = "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])
        module_name = f"featcache_user_heads.{stem}_{sha[:12]}"
        if module_name not in sys.modules:  # registered before running it: pickling and dataclasses need it
            spec = importlib.util.spec_from_file_location(module_name, path) if text is None else None
            module = importlib.util.module_from_spec(spec) if spec else types.ModuleType(module_name)
            sys.modules[module_name] = module
            try:
                if spec:
                    spec.loader.exec_module(module)
                else:
                    module.__file__ = path
                    exec(compile(text, path, "exec"), module.__dict__)  # noqa: S102 -- the user's own head, as trained
            except Exception as exc:
                del sys.modules[module_name]
                raise ValueError(f"head {name!r}: {path} failed to import{_where(exc, path)}: "
                                 f"{type(exc).__name__}: {exc}") from None
        _LOADED[key] = _check(name, getattr(sys.modules[module_name], attr, None), attr, path)
    return _LOADED[key]


def _from_module(name: str, module_name: str, attr: str, source: dict | None = None) -> type:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"head {name!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from None
    cls = _check(name, getattr(module, attr, None), attr, module_name)
    recorded = (source or {}).get("version")
    now = _module_version(module_name)
    if recorded and now and recorded != now:
        warnings.warn(f"head {name}: trained with {module_name} {recorded}, now {now} is installed", stacklevel=2)
    return cls


def _where(exc: BaseException, path: str) -> str:
    """`` (line N)`` of the user's file where an import failed, when known."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    tb = exc.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""


def _check(name: str, cls, attr: str, where: str) -> type:
    """The documented head interface, checked before anything is built."""
    if cls is None:
        raise ValueError(f"head {name!r}: {where} has no {attr!r}")
    if not inspect.isclass(cls) or not callable(getattr(cls, "forward", None)):
        raise ValueError(f"head {name!r}: {attr} is not a head class (a torch.nn.Module with forward(tokens))")
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    missing = [a for a in COMMON_ARGS if a not in params and not takes_any]
    if missing:
        raise ValueError(f"head {name!r}: {attr}.__init__ must take the common arguments {', '.join(COMMON_ARGS)} "
                         f"(missing {', '.join(missing)})")
    return cls


def _module_version(module_name: str) -> str | None:
    """The installed distribution's version of a module's top-level package (or its __version__)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    top = module_name.split(".")[0]
    for dist in packages_distributions().get(top, []):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return getattr(sys.modules.get(top), "__version__", None)


def head_source(name: str) -> dict:
    """Where a head's class comes from, for checkpoints: ``{"kind": "builtin"}``, or a file's
    absolute path and sha256, or a module (from a ``module:Class`` name or an entry point) and the
    version of the distribution that ships it."""
    cls = _get(name)
    if name in _HEADS:
        return {"kind": "builtin"}
    target, _, attr = name.rpartition(":")
    if is_user_head(name) and (target.endswith(".py") or os.sep in target):
        path = os.path.abspath(target)
        with open(path, "rb") as f:
            data = f.read()
        # the source itself travels with the run (config.yaml, checkpoints): eval rebuilds the head as
        # trained even after the file is edited or removed
        return {"kind": "file", "path": path, "class": attr, "sha256": hashlib.sha256(data).hexdigest(),
                "text": data.decode("utf-8", errors="replace")}
    module_name = cls.__module__
    out = {"kind": "module", "module": module_name, "class": cls.__qualname__, "version": _module_version(module_name)}
    if not is_user_head(name):
        out.update(kind="entry_point", entry_point=f"{ENTRY_POINT_GROUP}:{name}")
    return out


def create_head(name: str, *, in_dim: int, num_classes: int, num_frames: int, grid: tuple[int, int],
                num_prefix_tokens: int, source: dict | None = None, **options):
    """Build a head (registered, ``FILE.py:Class``, ``module:Class`` or an entry point); unknown
    options are an error naming the valid ones. ``source`` (what :func:`head_source` recorded)
    rebuilds a file head from the recorded path, refusing a file that changed since."""
    cls = _get(name, source)
    valid = _options(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"head {name!r} has no option {', '.join(unknown)}; options: {', '.join(valid) or 'none'}")
    required = sorted(k for k, v in valid.items() if v is REQUIRED and k not in options)
    if required:
        raise ValueError(f"head {name!r} needs option {', '.join(required)} (--set head.{required[0]}=...)")
    return cls(in_dim=in_dim, num_classes=num_classes, num_frames=num_frames, grid=tuple(grid),
               num_prefix_tokens=num_prefix_tokens, **options)
