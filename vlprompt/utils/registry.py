"""Name -> class registries (trainers, datasets), with an error that lists what is registered."""
import difflib


class RegistryError(KeyError):
    """An unknown name. A KeyError with a readable message."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items = {}

    def register(self, obj=None, name=None):
        """Use as ``@REGISTRY.register()`` or ``REGISTRY.register(cls)``."""

        def _add(o):
            key = name or o.__name__
            if key in self._items:
                raise KeyError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = o
            return o

        return _add if obj is None else _add(obj)

    def get(self, name: str):
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=3, cutoff=0.4)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise RegistryError(
                f"Unknown {self.kind} '{name}'.{hint} Registered: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def __contains__(self, name):
        return name in self._items

    def names(self):
        return sorted(self._items)
