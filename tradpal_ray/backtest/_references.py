"""Strategy references: a name that any process on any node can turn back into the strategy.

Three forms, the same everywhere (CLI, ``scripts/``, the Python API, Ray tasks):

- ``sma_cross``: a registered name (the built-ins, or one a loaded module registered);
- ``mypkg.signals:golden_cross``: an importable module and an attribute of it;
- ``path/to/file.py:golden_cross``: a Python file (the path is made absolute where the
  reference is parsed, on the driver).

A reference carries the SHA-256 of the source it was parsed against (the module's file, or
for a built-in the function's source). Workers load the code shipped with the job
(:meth:`StrategyRef.runtime_env`, Ray's ``py_modules``) and refuse to run when what they
find is not that source, so a cluster never mixes two versions of a strategy in one run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tradpal_ray.backtest.strategies import Param, Strategy, registered, strategy_from_function
from tradpal_ray.errors import ConfigError


@dataclass(frozen=True)
class StrategyRef:
    """A strategy by reference (see the module docstring); build it with :meth:`parse`."""

    text: str
    """The reference as recorded: a name, ``module:attr`` or ``/abs/path.py:attr``."""
    kind: str
    """``builtin`` (a registered name), ``module`` or ``file``."""
    target: str
    """The module path (``module``), the absolute file path (``file``), or ``""``."""
    name: str
    """The attribute (function) name, or the registered name."""
    source_hash: str
    """SHA-256 of the source the reference was parsed against."""

    @classmethod
    def parse(cls, text: str) -> StrategyRef:
        """Parse (and load once, to check it and hash its source) a reference; ConfigError if it does not resolve."""
        text = text.strip()
        if not text:
            raise ConfigError("empty strategy reference")
        target, sep, name = text.rpartition(":")
        if not sep:
            strat = registered(text)
            module_name = strat.func.__module__ or ""
            module = sys.modules.get(module_name)
            origin = getattr(module, "__file__", None)
            reachable = getattr(module, strat.func.__name__, None) is strat.func
            if _builtin(strat) or module_name == "__main__" or not origin or not reachable:
                return cls(text=text, kind="builtin", target="", name=text, source_hash=_function_hash(strat.func))
            # Registered by a user's module: refer to it by that module, so workers can load it.
            if module is not None and getattr(module, "__tradpal_hash__", None):
                return cls.parse(f"{origin}:{strat.func.__name__}")
            return cls.parse(f"{module_name}:{strat.func.__name__}")
        if not name.isidentifier():
            raise ConfigError(f"bad strategy reference {text!r}: {name!r} is not a Python name")
        if target.endswith(".py") or os.sep in target or "/" in target:
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"bad strategy reference {text!r}: no such file {path}")
            module = _load_file(path)
            ref = cls(text=f"{path}:{name}", kind="file", target=str(path), name=name, source_hash=_file_hash(path))
        else:
            if not all(part.isidentifier() for part in target.split(".")):
                raise ConfigError(f"bad strategy reference {text!r}: {target!r} is not a module path")
            module = _import(target, text)
            ref = cls(text=text, kind="module", target=target, name=name, source_hash=_module_hash(module))
        ref._strategy_in(module)
        return ref

    @property
    def label(self) -> str:
        """A short display name: the function or registered name."""
        return self.name

    def load(self) -> Strategy:
        """The strategy, loaded in this process; ConfigError when its source is not the recorded one.

        In a Ray worker a file strategy is imported by module name from the ``py_modules``
        shipped with the job (the file may be gone, or another version, on this node).
        """
        if self.kind == "builtin":
            strat = registered(self.name)
            _check_hash(self, _function_hash(strat.func))
            return strat
        if self.kind == "file":
            module = _shipped_module(Path(self.target).stem, self.source_hash)
            if module is None:
                path = Path(self.target)
                if not path.is_file():
                    raise ConfigError(f"strategy file {path} is gone and was not shipped to this worker")
                module = _load_file(path)
                _check_hash(self, _file_hash(path))
        else:
            module = _import(self.target, self.text)
            _check_hash(self, _module_hash(module))
        return self._strategy_in(module)

    def current_hash(self) -> str:
        """The SHA-256 of the strategy's source as it is now on this machine (for ``--resume``)."""
        return StrategyRef.parse(self.text).source_hash

    @property
    def portable(self) -> bool:
        """False for a strategy only this process knows (registered in ``__main__``, a notebook, or inside a
        function): other processes cannot import it."""
        return self.kind != "builtin" or _builtin(registered(self.name))

    def runtime_env(self) -> dict[str, Any] | None:
        """Ray ``runtime_env`` that ships the user's code to every worker, or None when nothing needs shipping.

        A file is shipped as it is; a module that is not installed in site-packages (a
        package in the working directory, say) is shipped as its top-level package.
        """
        if self.kind == "file":
            return {"py_modules": [self.target]}
        if self.kind == "module":
            top = self.target.split(".")[0]
            spec = importlib.util.find_spec(top)
            if spec is None or spec.origin in (None, "built-in", "frozen") or _installed(spec.origin):
                return None
            locations = list(spec.submodule_search_locations or [])
            return {"py_modules": [locations[0] if locations else spec.origin]}
        return None

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form (the run manifest keeps it)."""
        return {"text": self.text, "kind": self.kind, "target": self.target, "name": self.name,
                "source_hash": self.source_hash}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> StrategyRef:
        """Inverse of :meth:`to_dict`."""
        return cls(**{key: data[key] for key in ("text", "kind", "target", "name", "source_hash")})

    def _strategy_in(self, module: ModuleType) -> Strategy:
        obj = getattr(module, self.name, None)
        if obj is None:
            raise ConfigError(f"bad strategy reference {self.text!r}: {module.__name__} has no {self.name!r}")
        if isinstance(obj, Strategy):
            return obj
        if not callable(obj):
            raise ConfigError(f"bad strategy reference {self.text!r}: {self.name} is not a function")
        found = getattr(obj, "__tradpal_strategy__", None)
        return found if isinstance(found, Strategy) else strategy_from_function(obj)


def resolve_strategy(strategy: str | StrategyRef | Strategy) -> Strategy:
    """The strategy a name, reference or Strategy stands for, loaded in this process."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str):
        strategy = StrategyRef.parse(strategy)
    return strategy.load()


def strategy_ref(strategy: str | StrategyRef) -> StrategyRef:
    """``strategy`` as a :class:`StrategyRef` (parsing a string)."""
    return strategy if isinstance(strategy, StrategyRef) else StrategyRef.parse(strategy)


def load_strategy_paths(paths: list[str]) -> list[ModuleType]:
    """Import the modules named by ``--strategy-path`` (files, directories of files, or module paths)."""
    modules = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
            modules.extend(_load_file(p.resolve()) for p in files)
        elif path.suffix == ".py" or path.exists():
            if not path.is_file():
                raise ConfigError(f"--strategy-path {item}: no such file")
            modules.append(_load_file(path.resolve()))
        else:
            modules.append(_import(item, item))
    return modules


def _builtin(strat: Strategy) -> bool:
    return (strat.func.__module__ or "").startswith("tradpal_ray.")


def _check_hash(ref: StrategyRef, found: str) -> None:
    if found != ref.source_hash:
        raise ConfigError(
            f"strategy {ref.text} changed: its source is not the one this run started with "
            f"(sha256 {found[:12]} here, {ref.source_hash[:12]} recorded)"
        )


def _import(module: str, text: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"bad strategy reference {text!r}: cannot import {module}: {exc}") from None


def _load_file(path: Path) -> ModuleType:
    """Import ``path`` as the module named by its stem (the name ``py_modules`` gives it on workers)."""
    name = path.stem
    if not name.isidentifier():
        raise ConfigError(f"strategy file {path}: {name!r} is not a valid module name")
    existing = sys.modules.get(name)
    if existing is not None:
        origin = getattr(existing, "__file__", None)
        if origin and Path(origin).resolve() == path and _file_hash(path) == getattr(existing, "__tradpal_hash__", None):
            return existing
        if origin is None or Path(origin).resolve() != path:
            raise ConfigError(f"strategy file {path}: module name {name!r} is already taken by {origin or 'a built-in module'}")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"strategy file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        sys.modules.pop(name, None)
        raise
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"strategy file {path} failed to import: {type(exc).__name__}: {exc}") from None
    module.__tradpal_hash__ = _file_hash(path)  # type: ignore[attr-defined]
    return module


def _shipped_module(name: str, source_hash: str) -> ModuleType | None:
    """The module ``name`` from the worker's ``py_modules`` if its source is ``source_hash``."""
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__tradpal_hash__", None) == source_hash:
        return loaded
    spec = importlib.util.find_spec(name) if loaded is None else None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    if _file_hash(Path(spec.origin)) != source_hash:
        return None
    module = importlib.import_module(name)
    module.__tradpal_hash__ = source_hash  # type: ignore[attr-defined]
    return module


def _installed(origin: str) -> bool:
    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return any(Path(origin).resolve().is_relative_to(Path(p).resolve()) for p in paths)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _module_hash(module: ModuleType) -> str:
    origin = getattr(module, "__file__", None)
    if origin and os.path.isfile(origin):
        return _file_hash(Path(origin))
    return hashlib.sha256(module.__name__.encode()).hexdigest()


def _function_hash(func: Any) -> str:
    try:
        source = inspect.getsource(func)
    except Exception:  # no source file (exec'd code, a REPL) or one that does not parse: hash the name
        source = f"{func.__module__}.{func.__qualname__}"
    return hashlib.sha256(source.encode()).hexdigest()


__all__ = ["Param", "StrategyRef", "load_strategy_paths", "resolve_strategy", "strategy_ref"]
