"""Named strategy components: the parameters each declares and the registries that find them.

A component is a class with a ``name``, the ``params`` it takes (each a :class:`Param`, read from the flat
keys of the topic map's ``strategy`` section) and a constructor taking those parameters by name. A registry
finds components in two places: the modules of a built-in package (the module's name is the component's,
its ``COMPONENT`` attribute the class; a module whose name starts with ``_`` is a helper) and the entry
points of a group, so an installed distribution adds one without touching fedmq (docs/extending.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Generic, List, Mapping, Optional, Tuple, Type, TypeVar, cast

from fedmq.shared.plugins import plugins


@dataclass(frozen=True)
class Param:
    """One parameter of a component: its topic-map key under ``strategy``, type, default and bounds.
    ``default=None`` with ``optional=True`` means "not set" (the component decides)."""

    name: str
    kind: type
    default: Any
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    help: str = ""
    optional: bool = False

    def coerce(self, value: Any) -> Any:
        """The value as the component receives it (an integer where a number is asked for becomes a float)."""
        if value is None:
            return None
        return float(value) if self.kind is float else value


class Component:
    """What every strategy component declares."""

    name: ClassVar[str] = ""
    params: ClassVar[Tuple[Param, ...]] = ()

    @classmethod
    def arguments(cls, values: Mapping[str, Any]) -> Dict[str, Any]:
        """This component's constructor arguments from a strategy's ``params`` (defaults where absent)."""
        return {p.name: p.coerce(values.get(p.name, p.default)) for p in cls.params}


class UnknownComponent(LookupError):
    """No component of that name is installed."""


C = TypeVar("C", bound=Component)


class Registry(Generic[C]):
    """Components of one family (``what``: the topic-map key that names one), built in or plugged in."""

    def __init__(self, what: str, package: str, group: str, base: type) -> None:
        self.what, self.package, self.group, self.base = what, package, group, base
        self._loaded: Dict[str, Type[C]] = {}

    def _builtin(self) -> List[str]:
        pkg = importlib.import_module(self.package)
        return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))

    def names(self) -> List[str]:
        """Every installed component's name, built-in ones first (a plug-in cannot take a built-in's name)."""
        builtin = self._builtin()
        return builtin + sorted({ep.name for ep in plugins(self.group)} - set(builtin))

    def get(self, name: str) -> Type[C]:
        """The component class called ``name``; UnknownComponent when none is installed or it cannot be loaded
        (a plug-in whose import fails, or that names something else)."""
        if name in self._loaded:
            return self._loaded[name]
        found: Any = None
        try:
            if name in self._builtin():
                found = getattr(importlib.import_module(f"{self.package}.{name}"), "COMPONENT", None)
            else:
                eps = [ep for ep in plugins(self.group) if ep.name == name]
                if not eps:
                    raise UnknownComponent(f"no {self.what} called {name!r} is installed ({', '.join(self.names())})")
                found = eps[0].load()
        except (ImportError, AttributeError) as exc:
            raise UnknownComponent(f"{self.what} {name!r} cannot be loaded: {exc}") from None
        if not (isinstance(found, type) and issubclass(found, self.base)) or getattr(found, "name", None) != name:
            raise UnknownComponent(f"{self.what} {name!r} does not name a {self.base.__name__} called {name!r}")
        cls = cast(Type[C], found)
        self._loaded[name] = cls
        return cls

    def all_params(self) -> Dict[str, Tuple[str, Param]]:
        """Every parameter an installed component declares: key -> (component, Param). A component that cannot
        be loaded declares none (and is reported where a topic map chooses it)."""
        out: Dict[str, Tuple[str, Param]] = {}
        for name in self.names():
            try:
                params = self.get(name).params
            except UnknownComponent:
                continue
            for p in params:
                out.setdefault(p.name, (name, p))
        return out
