"""Optional packages. The core install runs models from the command line and Python; the
server, audio, vision, plots and SentencePiece conversion need an extra
(`pip install 'edgeformer[serve]'`, pyproject.toml lists what each installs)."""
from __future__ import annotations

import importlib
from types import ModuleType

from edgeformer.errors import UnsupportedError


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, which `edgeformer[extra]` installs. UnsupportedError with a
    one-line hint naming the extra when it is not installed; any other import failure
    (a broken install) propagates as it is."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise UnsupportedError(f"{what} needs the {extra} extra ({e.name} is not installed): "
                               f"pip install 'edgeformer[{extra}]'") from None
